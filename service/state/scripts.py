"""Loads the Lua scripts of `lua/` and runs them by EVALSHA, falling back to EVAL.

EVAL after NOSCRIPT also re-fills the script cache of whichever node answered, so the same
path works on a Redis that restarted, on every Redis Cluster node, and on fakeredis.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from service.contract import LUA_CONSTANTS
from service.state.calls import Arg

_INCLUDE = re.compile(r"^-- @include (\w+)\s*$", re.MULTILINE)
_CONST = re.compile(r"^-- @const (\w+)\s*$", re.MULTILINE)


def lua_dir() -> Path:
    here = Path(__file__).resolve().parent
    # The wheel ships lua/ as service/lua; a checkout has it at the top level.
    for candidate in (here.parent / "lua", here.parent.parent / "lua"):
        if (candidate / "reserve.lua").is_file():
            return candidate
    raise FileNotFoundError("tollgate's lua/ scripts are missing from the installation")


def _constant(match: re.Match[str]) -> str:
    """`-- @const NAME` -> `local NAME = <value>`: a limit of the wire contract (LUA_CONSTANTS),
    stated once in Python and read by the script."""
    if match[1] not in LUA_CONSTANTS:
        raise KeyError(f"lua: no contract constant {match[1]!r}")
    return f"local {match[1]} = {int(LUA_CONSTANTS[match[1]])}"


def _expand(source: str, folder: Path, seen: set[str] | None = None) -> str:
    """Inlines `-- @include name` lines; an include may include others, each at most once.
    `-- @const NAME` lines become the contract's value (LUA_CONSTANTS)."""
    seen = set() if seen is None else seen

    def include(match: re.Match[str]) -> str:
        if match[1] in seen:
            return ""
        seen.add(match[1])
        return _expand((folder / "includes" / f"{match[1]}.lua").read_text(), folder, seen)

    return _CONST.sub(_constant, _INCLUDE.sub(include, source))


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def load_scripts(folder: Path | None = None) -> dict[str, Script]:
    folder = folder or lua_dir()
    scripts = {}
    for path in sorted(folder.glob("*.lua")):
        source = _expand(path.read_text(), folder)
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[path.stem] = Script(path.stem, source, sha)
    return scripts
