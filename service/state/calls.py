"""How each Lua script of `lua/` is called: its KEYS and ARGV by name, and its reply's fields.

One `ScriptSpec` a script. Callers pass keys and arguments by name (`bind`); the spec puts
them in the order the script reads them. Each script's header comment names the same KEYS
and ARGV in the same order, and its `Returns {...}` line the same reply fields:
tests/core/test_lua_declarations.py holds the two, and every call site, to each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Arg = str | int | float
# A named argument: one ARGV, the packed table (`ScriptSpec.packed`: a dict sent as one
# cjson-encoded ARGV) or the list that fills `ScriptSpec.more_args`.
ArgValue = Arg | Mapping[str, str | int | float | bool] | Sequence[Arg]
KeyValue = str | Sequence[str]


@dataclass(frozen=True, slots=True)
class ScriptSpec:
    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...] = ()
    # The reply's fields by position, as `named` gives them; () for a bare value or list.
    reply: tuple[str, ...] = ()
    packed: str = ""  # the argument that carries the optional ones as one JSON table
    optional_keys: tuple[str, ...] = ()  # trailing keys a call may leave out
    more_keys: str = ""  # a list of further keys after the named ones
    more_args: str = ""  # a list of further arguments after the named ones

    def bind(self, keys: Mapping[str, KeyValue],
             args: Mapping[str, ArgValue]) -> tuple[list[str], list[Arg]]:
        """KEYS and ARGV in the script's order; TypeError unless the names are the spec's."""
        key_names = self.keys + ((self.more_keys,) if self.more_keys else ())
        given = tuple(name for name in key_names if name in keys)
        missing = set(key_names) - set(given)
        if set(keys) - set(key_names) or missing - set(self.optional_keys) or (
                given != key_names[:len(given)]):
            raise TypeError(f"{self.name}: keys {sorted(keys)}, declared {list(key_names)}")
        arg_names = self.args + ((self.more_args,) if self.more_args else ())
        if set(args) != set(arg_names):
            raise TypeError(f"{self.name}: args {sorted(args)}, declared {list(arg_names)}")
        key_list = [keys[name] for name in self.keys if name in keys]
        if self.more_keys:
            more_keys = keys[self.more_keys]
            if isinstance(more_keys, str):
                raise TypeError(f"{self.name}: {self.more_keys} takes a list of keys")
            key_list += list(more_keys)
        if not all(isinstance(key, str) for key in key_list):
            raise TypeError(f"{self.name}: each key is one string")
        argv: list[Arg] = []
        for name in self.args:
            argv.append(self._one(name, args[name]))
        if self.more_args:
            more = args[self.more_args]
            if not isinstance(more, list | tuple):
                raise TypeError(f"{self.name}: {self.more_args} takes a list")
            argv += [self._one(self.more_args, value) for value in more]
        return list(map(str, key_list)), argv

    def _one(self, name: str, value: Any) -> Arg:
        if name == self.packed:
            if not isinstance(value, Mapping):
                raise TypeError(f"{self.name}: {name} takes a table of optional fields")
            return json.dumps(dict(value), separators=(",", ":"))
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError(f"{self.name}: {name} takes a string or a number, not {value!r}")
        return value

    def named(self, reply: Sequence[Any]) -> dict[str, Any]:
        """The reply's fields by name; a shorter reply (an error's) gives the first ones."""
        return dict(zip(self.reply, reply, strict=False))


PROGRESS = ("code", "state", "done", "failed", "total")
FINISH_KEYS = ("job", "user", "active", "holds", "leases", "queued", "flush", "ledger",
               "webhook_log", "webhooks", "counters", "key_spend", "grants", "grant_expiry")
REPORT_KEYS = ("user", "active", "holds", "leases", "queued", "flush", "ledger", "webhook_log",
               "webhooks")

SPECS: dict[str, ScriptSpec] = {spec.name: spec for spec in (
    ScriptSpec("ping", keys=("key",)),
    ScriptSpec("ensure_user", keys=("user", "ledger", "counters", "grants", "grant_expiry",
                                    "grant_warn"),
               args=("user_id", "plan", "available", "max_active", "max_rules", "now",
                     "opts"),
               reply=("code",), packed="opts"),
    ScriptSpec("reserve",
               keys=("user", "active", "jobs", "job", "meta", "holds", "idempotency",
                     "ledger", "grants", "grant_expiry", "key_spend", "alert_log",
                     "webhooks"),
               args=("job_id", "owner", "total", "price", "now", "hold_until", "meta_json",
                     "opts"),
               reply=("code", "job_id"), packed="opts",
               optional_keys=("key_spend", "alert_log", "webhooks")),
    ScriptSpec("transition",
               keys=("job", "holds", "leases", "queued", "webhook_log", "webhooks"),
               args=("job_id", "owner", "from_state", "to_state", "now", "lease_until"),
               reply=PROGRESS),
    ScriptSpec("item_result",
               keys=("job", "items", "callbacks", *REPORT_KEYS, "callback_set", "counters",
                     "key_spend", "grants", "grant_expiry"),
               args=("job_id", "owner", "callback_key", "index", "outcome", "detail", "now",
                     "lease_until", "flush_due"),
               reply=PROGRESS),
    ScriptSpec("items_result",
               keys=("job", "items", "callbacks", "callback_set", *REPORT_KEYS, "counters",
                     "key_spend", "grants", "grant_expiry"),
               args=("job_id", "owner", "now", "lease_until", "flush_due", "count"),
               reply=(*PROGRESS, "counted", "duplicates"), more_args="entries"),
    ScriptSpec("settle", keys=FINISH_KEYS,
               args=("job_id", "owner", "to_state", "from_states", "reason", "now",
                     "flush_due"),
               reply=(*PROGRESS, "charged", "refunded")),
    ScriptSpec("cancel", keys=FINISH_KEYS,
               args=("job_id", "owner", "reason", "now", "flush_due", "from_states"),
               reply=(*PROGRESS, "charged", "refunded")),
    ScriptSpec("renew_lease", keys=("job", "leases"), args=("job_id", "owner", "lease_until"),
               reply=("code", "state")),
    ScriptSpec("rule_slot_take", keys=("user", "rules"), args=("rule_id",),
               reply=("code", "used", "limit")),
    ScriptSpec("rule_slot_release", keys=("rules",), args=("rule_id",),
               reply=("code", "used")),
    ScriptSpec("grant", keys=("user", "ops", "ledger", "counters", "grants", "grant_expiry",
                              "alert_log", "webhooks", "grant_warn"),
               args=("user_id", "op_id", "amount", "reason", "now", "opts"),
               reply=("code", "available", "reserved", "spent", "granted"), packed="opts",
               optional_keys=("alert_log", "webhooks", "grant_warn")),
    ScriptSpec("grants_warn",
               keys=("user", "grants", "grant_warn", "alert_log", "webhooks"),
               args=("user_id", "now"), reply=("code", "warned")),
    ScriptSpec("alert_set", keys=("user",),
               args=("low_balance", "hook_url", "hook_events", "floor"), reply=("code",)),
    ScriptSpec("grants_expire",
               keys=("user", "grants", "grant_expiry", "ledger", "counters", "alert_log",
                     "webhooks"),
               args=("user_id", "now"), reply=("code", "expired"),
               optional_keys=("alert_log", "webhooks")),
    ScriptSpec("set_plan", keys=("user", "ops"),
               args=("op_id", "plan", "max_active", "max_rules"), reply=("code", "plan")),
    ScriptSpec("claim_due", keys=("holds", "leases", "queued", "flush"),
               args=("now", "limit", "claim_ms", "requeue_before"),
               reply=("expired_holds", "expired_leases", "stale_queued", "due_flushes")),
    ScriptSpec("flush_done",
               keys=("job", "items", "callbacks", "meta", "flush", "jobs", "callback_set",
                     "webhook_log"),
               args=("job_id", "flushed_deliveries"), reply=("code",)),
    ScriptSpec("ledger_ack", keys=("ledger",), args=("count", "first_entry"),
               reply=("code",)),
    ScriptSpec("sched_lock", keys=("lock",), args=("token", "ms")),
    ScriptSpec("mark_in_sql", keys=(), more_keys="jobs", args=("at",)),
    ScriptSpec("flush_read", keys=("ledger", "ledger_retry"), more_keys="jobs",
               args=("ledger_limit", "now"), reply=("ledger_head", "retries_due", "jobs")),
    ScriptSpec("flush_retry_later", keys=("flush_attempts", "flush", "ledger_retry"),
               args=("kind", "record_id", "entry", "now", "attempts_allowed", "delay_ms"),
               reply=("code", "attempts", "first_failed_ms")),
    ScriptSpec("flush_retry_end", keys=("flush_attempts", "ledger_retry", "counters"),
               args=("kind", "record_id", "entry", "set_aside"), reply=("code",)),
    ScriptSpec("bucket_next_due",
               keys=("holds", "leases", "queued", "flush", "ledger", "ledger_retry",
                     "grant_expiry", "grant_warn"),
               args=("requeue_after_ms", "now")),
    ScriptSpec("due_take", keys=("due_index",), args=("now", "limit", "placeholder")),
    ScriptSpec("due_settle", keys=("due_index",),
               args=("bucket", "placeholder", "next_due", "placeholder_floor"),
               reply=("code", "outcome")),
    ScriptSpec("webhook_claim", keys=("webhooks",), args=("now", "limit", "claim_ms")),
    ScriptSpec("webhook_result", keys=("webhook_log", "webhooks", "webhook_outcomes"),
               args=("delivery_id", "outcome", "attempts_seen", "status", "now",
                     "next_attempt", "body", "log_ttl_ms"),
               reply=("code",)),
    ScriptSpec("stats_read", keys=(), more_keys="buckets",
               reply=("counters", "outcomes", "held", "queued", "running", "first_due")),
    ScriptSpec("stream_take", keys=("streams",), args=("stream_id", "lease_ms", "most"),
               reply=("code", "open")),
    ScriptSpec("key_create", keys=("user", "apikeys", "record", "key_spend"),
               args=("key_id", "owner", "secret_hash", "scopes", "cap", "period",
                     "expires_at", "restore", "spent_period", "spent"),
               more_args="plan_limits", reply=("code", "used", "limit")),
    ScriptSpec("key_revoke", keys=("apikeys", "record", "key_spend"), args=("key_id",),
               reply=("code",)),
    ScriptSpec("admit",
               keys=("job", "holds", "queued", "waiting", "user", "webhook_log", "webhooks"),
               args=("job_id", "owner", "now", "queue", "vtime", "batch_size", "weights"),
               reply=("code", "state", "score", "batches", "deadline")),
    ScriptSpec("dispatch_take", keys=("job", "waiting"),
               args=("job_id", "now", "claim_ms", "most", "before"),
               reply=("code", "first", "last", "priority")),
    ScriptSpec("dispatch_done", keys=("job", "waiting", "leases"),
               args=("job_id", "first", "last", "now", "lease_until"),
               reply=("code", "score", "items", "first_dispatch", "queued_at", "vtag",
                      "priority")),
    ScriptSpec("sched_order", keys=("order", "items", "info", "deadlines", "claims", "waits"),
               args=("job_id", "score", "items", "deadline", "priority", "vtag", "opts"),
               reply=("code",), packed="opts", optional_keys=("claims", "waits")),
    ScriptSpec("rate_limit", keys=("user", "rate", "key_rate"), optional_keys=("key_rate",),
               args=("window_ms", "key_limit"), more_args="plan_limits",
               reply=("allowed", "limit", "remaining", "wait_ms")),
)}


def bind(name: str, *, keys: Mapping[str, KeyValue],
         args: Mapping[str, ArgValue] | None = None) -> tuple[list[str], list[Arg]]:
    """The KEYS and ARGV lists of script `name`, from keys and arguments by name."""
    return SPECS[name].bind(keys, args or {})
