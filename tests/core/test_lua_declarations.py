"""Each Lua script is called as it is declared once, in service/state/calls.py.

The declaration (a ScriptSpec) names the script's KEYS and ARGV in order and its reply's
fields. These tests hold it to the script's header comment (`-- KEYS[n] name ...`,
`-- ARGV[n] name ...`, `-- Returns {a, b, ...}`), to the script's body (no KEYS[n] or
ARGV[n] past the declared ones), and to every call site in service/ and tests/, which
passes keys and arguments by name (`run_script`, `run_named`, `run_checked`, `bind`).
The packed optional arguments (one cjson table) are checked by the script before its first
write, on every back end.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from service.errors import BadArgument
from service.state.calls import SPECS, ScriptSpec, bind
from service.state.keys import JobKeys
from service.state.plans import PLANS
from service.state.scripts import lua_dir
from service.state.store import Core
from tests.core.job_setup import new_user
from tests.core.redis_state import snapshot

ROOT = Path(__file__).resolve().parents[2]
CALLERS = ("run_script", "run_named", "run_checked", "bind")
# An entry starts a comment line or follows two spaces: `-- KEYS[3] name  what it is`.
ENTRY = re.compile(r"(?:^--\s*|\s{2,})(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+([A-Za-z_]\w*)")
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def header(name: str) -> list[str]:
    lines = (lua_dir() / f"{name}.lua").read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return lines[:end]


def header_names(name: str) -> dict[str, tuple[list[str], str]]:
    """{'KEYS' | 'ARGV': (names by position, the name of a `[n..]` rest or '')}."""
    found: dict[str, dict[int, str]] = {"KEYS": {}, "ARGV": {}}
    rest = {"KEYS": "", "ARGV": ""}
    for line in header(name):
        for kind, position, more, entry in ENTRY.findall(line):
            if more:
                assert not rest[kind], f"{name}: two {kind}[n..] entries"
                rest[kind] = entry
                found[kind][int(position)] = "..."
                continue
            assert int(position) not in found[kind], f"{name}: {kind}[{position}] twice"
            found[kind][int(position)] = entry
    out = {}
    for kind, entries in found.items():
        assert sorted(entries) == list(range(1, len(entries) + 1)), f"{name}: {kind} gaps"
        names = [entries[i] for i in sorted(entries)]
        out[kind] = ([n for n in names if n != "..."], rest[kind])
    return out


def mismatches(spec: ScriptSpec) -> list[str]:
    """What the declaration says differently from its script's header and body."""
    problems = []
    named = header_names(spec.name)
    for kind, declared, more in (("KEYS", spec.keys, spec.more_keys),
                                 ("ARGV", spec.args, spec.more_args)):
        names, rest = named[kind]
        if (list(declared), more) != (names, rest):
            problems.append(f"{spec.name}: {kind} declared {[*declared, more]}, "
                            f"header {[*names, rest]}")
    returns = re.search(r"Returns \{([^}]*)\}", "\n".join(header(spec.name)))
    if spec.reply:
        fields = [part.strip() for part in returns[1].split(",")] if returns else []
        if fields != list(spec.reply):
            problems.append(f"{spec.name}: reply declared {list(spec.reply)}, header {fields}")
    body = "\n".join(line for line in (lua_dir() / f"{spec.name}.lua").read_text().splitlines()
                     if not line.lstrip().startswith("--"))
    for kind, declared, more in (("KEYS", spec.keys, spec.more_keys),
                                 ("ARGV", spec.args, spec.more_args)):
        past = {int(n) for k, n in USED.findall(body) if k == kind} - set(
            range(1, len(declared) + 1))
        if past and not more:
            problems.append(f"{spec.name}: the body reads {kind}{sorted(past)}, undeclared")
    return problems


def test_every_script_has_one_declaration() -> None:
    assert sorted(path.stem for path in lua_dir().glob("*.lua")) == sorted(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_declaration_is_the_header_of_its_script(name: str) -> None:
    assert mismatches(SPECS[name]) == []


def test_a_key_list_out_of_order_is_seen() -> None:
    """The check above is not vacuous: two keys swapped, or a key left out, is a mismatch."""
    spec = SPECS["item_result"]
    keys = list(spec.keys)
    keys[3], keys[12] = keys[12], keys[3]
    assert mismatches(dataclasses.replace(spec, keys=tuple(keys)))
    assert mismatches(dataclasses.replace(spec, keys=spec.keys[:-1]))
    assert mismatches(dataclasses.replace(spec, args=spec.args[::-1]))
    assert mismatches(dataclasses.replace(spec, reply=spec.reply[1:]))


# --- call sites -----------------------------------------------------------------------


def _dict_names(node: ast.expr, scope: ast.AST, module: ast.Module) -> tuple[set[str], set[str]]:
    """(names always passed, names passed only sometimes) of a keys= or args= expression:
    a dict literal, a `**` spread or `|=` of one, a local name, or a module function that
    returns one."""
    if isinstance(node, ast.Dict):
        always: set[str] = set()
        sometimes: set[str] = set()
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:  # **spread
                inner = _dict_names(value, scope, module)
                sometimes |= inner[0] | inner[1]
            else:
                assert isinstance(key, ast.Constant) and isinstance(key.value, str)
                always.add(key.value)
        return always, sometimes
    if isinstance(node, ast.IfExp):
        a, b = _dict_names(node.body, scope, module), _dict_names(node.orelse, scope, module)
        return a[0] & b[0], (a[0] | a[1] | b[0] | b[1]) - (a[0] & b[0])
    if isinstance(node, ast.Name):
        always, sometimes = set(), set()
        for stmt in ast.walk(scope):
            if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets):
                always |= _dict_names(stmt.value, scope, module)[0]
            elif (isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name)
                  and stmt.target.id == node.id):
                sometimes |= set().union(*_dict_names(stmt.value, scope, module))
        assert always or sometimes, f"line {node.lineno}: {node.id} is no dict of names"
        return always, sometimes
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = next(f for f in module.body
                        if isinstance(f, ast.FunctionDef) and f.name == node.func.id)
        returned = next(r for r in ast.walk(function) if isinstance(r, ast.Return))
        assert returned.value is not None
        return _dict_names(returned.value, function, module)
    raise AssertionError(f"line {node.lineno}: keys and args go by name, as a dict")


def call_sites() -> list[tuple[str, str, str, tuple[set[str], set[str]]]]:
    """(where, script, 'keys' | 'args', names) of every call by name in service/ and tests/."""
    sites = []
    for folder in ("service", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # its calls are wrong on purpose
            module = ast.parse(path.read_text(encoding="utf-8"))
            scopes = [f for f in ast.walk(module)
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
            for scope in scopes:
                for call in ast.walk(scope):
                    if not (isinstance(call, ast.Call) and call.args
                            and getattr(call.func, "attr", getattr(call.func, "id", ""))
                            in CALLERS):
                        continue
                    script = call.args[0]
                    if not (isinstance(script, ast.Constant) and script.value in SPECS):
                        continue  # the definitions themselves, or another `bind`
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    given = {k.arg: k.value for k in call.keywords}
                    for part in ("keys", "args"):
                        names = (_dict_names(given[part], scope, module) if part in given
                                 else (set(), set()))
                        sites.append((where, script.value, part, names))
    return sites


def test_every_call_passes_exactly_the_declared_names() -> None:
    sites = call_sites()
    assert {script for _, script, _, _ in sites} == set(SPECS)  # every script is called
    wrong = []
    for where, script, part, (always, sometimes) in sites:
        spec = SPECS[script]
        if part == "keys":
            declared = {*spec.keys, *([spec.more_keys] if spec.more_keys else [])}
            required = declared - set(spec.optional_keys)
        else:
            declared = required = {*spec.args, *([spec.more_args] if spec.more_args else [])}
        if not (required <= always and always | sometimes <= declared):
            wrong.append(f"{where} {script} {part}: {sorted(always | sometimes)}, "
                         f"declared {sorted(declared)}")
    assert wrong == []


def test_no_script_is_called_by_position() -> None:
    """Core.scripts[name](client, keys, args) is Core's own business (service.state.base)."""
    by_position = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                    and getattr(node.func.value, "attr", "") == "scripts"):
                by_position.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert by_position == ["service/state/base.py:" + str(_base_call_line())]


def _base_call_line() -> int:
    source = (ROOT / "service/state/base.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if "self.scripts[name](" in line)


# --- binding ---------------------------------------------------------------------------


def test_bind_orders_by_the_declaration_and_refuses_other_names() -> None:
    keys, argv = bind("renew_lease", keys={"leases": "L", "job": "J"},
                      args={"lease_until": 9, "owner": "ann", "job_id": "j1"})
    assert (keys, argv) == (["J", "L"], ["j1", "ann", 9])
    with pytest.raises(TypeError, match="keys"):
        bind("renew_lease", keys={"job": "J"}, args={"job_id": "j", "owner": "", "lease_until": 1})
    with pytest.raises(TypeError, match="args"):
        bind("renew_lease", keys={"job": "J", "leases": "L"},
             args={"job_id": "j", "owner": "", "lease_until": 1, "extra": 2})
    with pytest.raises(TypeError, match="keys"):
        bind("rate_limit", keys={"user": "U", "key_rate": "K"},
             args={"window_ms": 1, "key_limit": 0, "plan_limits": []})


def test_bind_packs_the_optional_arguments_and_spreads_the_rest() -> None:
    _, argv = bind("ensure_user", keys={"user": "U", "ledger": "L", "counters": "C",
                                        "grants": "G", "grant_expiry": "E",
                                        "grant_warn": "W"},
                   args={"user_id": "ann", "plan": "free", "available": 5, "max_active": 1,
                         "max_rules": 1, "now": 7, "opts": {"restored": True, "spent": 2}})
    assert json.loads(str(argv[-1])) == {"restored": True, "spent": 2}
    keys, argv = bind("rate_limit", keys={"user": "U", "rate": "R"},
                      args={"window_ms": 1000, "key_limit": 0, "plan_limits": ["free", 5]})
    assert (keys, argv) == (["U", "R"], [1000, 0, "free", 5])


# --- packed options, checked before any write -------------------------------------------


def _reserve_call(core: Core, user: str, opts: str) -> tuple[list[str], list[str | int]]:
    keys = core.keys.user(user)
    job = JobKeys(keys.bucket, core.keys.new_job_id(user))
    return ([keys.base, keys.active, keys.jobs, job.base, job.meta, keys.bucket.holds,
             keys.idempotency("k"), keys.bucket.ledger],
            [job.job_id, user, 2, 1, 1000, 2000, "[]", opts])


@pytest.mark.parametrize(("opts", "field"), [
    ("not json", "opts"), ("[1]", "opts"), ('{"rule_id": 5}', "rule_id"),
    ('{"uploaded": "yes"}', "uploaded"), ('{"result_ttl_s": 1.5}', "result_ttl_s"),
    ('{"idempotent": true}', "idempotency_ttl"), ('{"colour": "red"}', "opts"),
    ('{"params": null}', "params"),
])
async def test_reserve_refuses_bad_options_before_any_write(
        core: Core, key_prefix: str, opts: str, field: str) -> None:
    user = await new_user(core, "opts1")
    before = await snapshot(core.client, key_prefix)
    keys, argv = _reserve_call(core, user, opts)
    reply = await core.scripts["reserve"](core.runner, keys, argv)
    assert reply == ["bad_argument", field]
    assert await snapshot(core.client, key_prefix) == before


async def test_reserve_takes_its_options_from_the_table(core: Core) -> None:
    user = await new_user(core, "opts2")
    job_id = core.keys.new_job_id(user)
    await core.reserve(job_id=job_id, user_id=user, total=2, price=1, hold_ttl_ms=60_000,
                       meta_json="[]", rule_id="r1", model="m", webhook_url="http://x/h",
                       webhook_events=("started", "completed"), params_json='{"a":1}',
                       bill_input_errors=True, result_ttl_s=3600, retry_of="j0",
                       uploaded=True, idempotency_key="k1", body_hash="h1")
    job = await core.job_record(job_id)
    assert {name: job.get(name) for name in (
        "rule_id", "model", "webhook_url", "webhook_events", "params", "bill_input_errors",
        "result_ttl", "retry_of", "state")} == {
        "rule_id": "r1", "model": "m", "webhook_url": "http://x/h",
        "webhook_events": "started,completed", "params": '{"a":1}', "bill_input_errors": "1",
        "result_ttl": "3600", "retry_of": "j0", "state": "uploaded"}
    assert await core.idempotent_job(user, "k1") == (job_id, "h1")


@pytest.mark.parametrize(("opts", "field"), [
    ("{", "opts"), ('{"spent": -1, "granted": 4}', "balance"),
    ('{"spent": 1, "granted": 3}', "balance"), ('{"restored": 1}', "restored"),
    ('{"signup_credits": "2"}', "signup_credits"),
])
async def test_ensure_user_refuses_bad_options_before_any_write(
        core: Core, key_prefix: str, opts: str, field: str) -> None:
    user = core.keys.user("opts3")
    before = await snapshot(core.client, key_prefix)
    reply = await core.scripts["ensure_user"](
        core.runner, [user.base, user.bucket.ledger, user.bucket.counters, user.grants,
                      user.bucket.grant_expiry, user.bucket.grant_warn],
        ["opts3", "free", 3, 1, 1, 1000, opts])
    assert reply == ["bad_argument", field]
    assert await snapshot(core.client, key_prefix) == before
    with pytest.raises(BadArgument):
        await core.restore_user("opts3", PLANS["free"], available=3, spent=1, granted=1)
