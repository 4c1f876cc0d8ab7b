"""Every setting tollgate reads, from `TOLLGATE_*` environment variables.

The variables are flat (their names are part of the contract); each field says its group
(GROUPS: redis, sql, storage, api, auth, jobs, workers, flusher, webhooks, limits) and its
meaning once, in `setting(...)`, and docs/configuration.md's table is generated from them,
group by group. Durations are typed once: `Seconds` (whole seconds) and `Interval`
(fractions allowed) take a number of seconds or a string with a unit: `250ms`, `30s`, `5m`,
`2h`, `7d`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GROUPS = ("redis", "sql", "storage", "api", "auth", "jobs", "workers", "flusher", "webhooks",
          "limits")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """`90`, `"90"`, `"90s"`, `"1.5m"`, `"250ms"`, `"2h"`, `"7d"` -> seconds (a number); any
    other value goes on to the field's own validation (and its error)."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ValueError(f"{value!r} is not a duration: a number of seconds, or one with "
                             f"a unit ({', '.join(_UNITS)})")
        seconds = float(found[1]) * _UNITS[found[2] or "s"]
        return int(seconds) if seconds.is_integer() else seconds
    return value


def _whole(value: Any) -> Any:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value} s: this duration is in whole seconds")
    return int(value) if isinstance(value, float) else value


# A duration in whole seconds (Redis TTLs, URL lifetimes) and one that may be a fraction.
Seconds = Annotated[int, BeforeValidator(_whole), BeforeValidator(parse_duration)]
Interval = Annotated[float, BeforeValidator(parse_duration)]


def setting(group: str, default: Any, meaning: str, **bounds: Any) -> Any:
    """A field of `group` (GROUPS) with its meaning, as docs/configuration.md shows it."""
    if group not in GROUPS:
        raise ValueError(f"setting group {group!r} is not one of {GROUPS}")
    return Field(default=default, description=meaning, json_schema_extra={"group": group},
                 **bounds)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", extra="ignore")

    # --- redis ---------------------------------------------------------------------------
    redis_url: str | None = setting(
        "redis", None, "state Redis; `redis+cluster://host:port` for Redis Cluster (unset: an "
        "embedded fakeredis in the process, `tollgate dev` only)")
    queue_redis_url: str | None = setting(
        "redis", None, "RQ's Redis (standalone; unset: the state Redis)")
    key_prefix: str = setting("redis", "tg", "Redis key prefix")
    buckets: int = setting(
        "redis", 1024, "hash-slot buckets, fixed for the life of the data (`tollgate rebucket` "
        "moves it: [Operations](operations.md#changing-tollgate_buckets)); 1,024 spreads over a "
        "Cluster of hundreds of shards, while reads that walk every bucket (webhook outbox "
        "pass, queue position, audit) cost 16x more at the 16,384 maximum", ge=1, le=16384)
    redis_max_connections: int = setting(
        "redis", 64, "state Redis connection pool size per process (the calls one process has "
        "in flight on fakeredis and Cluster)", ge=1)
    redis_autopipeline: bool = setting(
        "redis", True, "send the scripts concurrent requests issue in one event-loop turn as "
        "one pipeline (standalone Redis only)")

    # --- sql -----------------------------------------------------------------------------
    database_url: str = setting("sql", "sqlite:///./tollgate.db",
                                "SQL history, users, rules, ledger")

    # --- storage -------------------------------------------------------------------------
    storage_dir: str = setting("storage", "./tollgate-data", "local-folder storage")
    s3_endpoint: str | None = setting(
        "storage", None, "S3 storage instead of the local folder: the endpoint as the API and "
        "the workers reach it")
    s3_public_endpoint: str | None = setting(
        "storage", None, "S3 as clients reach it: upload and result URLs handed to clients are "
        "signed for it; unset: `TOLLGATE_S3_ENDPOINT`")
    s3_bucket: str = setting("storage", "tollgate", "S3 bucket")
    s3_region: str = setting("storage", "us-east-1", "S3 region")
    s3_access_key: str | None = setting("storage", None, "S3 access key")
    s3_secret_key: str | None = setting("storage", None, "S3 secret key")
    upload_url_ttl: Seconds = setting("storage", 3600, "how long an upload URL stays valid",
                                      ge=60)
    result_url_ttl: Seconds = setting("storage", 86400,
                                      "how long a result download URL stays valid", ge=60)

    # --- api -----------------------------------------------------------------------------
    public_url: str = setting(
        "api", "http://127.0.0.1:8000", "base URL clients reach the API on (job links, "
        "local-folder URLs handed to clients); `tollgate api` and `tollgate dev` default it to "
        "their `--host`/`--port`")
    internal_url: str | None = setting(
        "api", None, "base URL workers reach the API on (callback URLs, local-folder URLs "
        "handed to workers); unset: `TOLLGATE_PUBLIC_URL`")
    max_body_bytes: int = setting("api", 1_048_576, "largest API request body", ge=1024)
    body_read_timeout: Interval = setting(
        "api", 30.0, "how long a request body may take to arrive, else 408 `request_timeout`",
        gt=0, le=3600)
    keepalive_timeout: Seconds = setting(
        "api", 5, "how long an idle keep-alive connection stays open (granian, uvicorn)",
        ge=1, le=600)
    max_connections: int = setting(
        "api", 16384, "connections one API process holds at once: granian's slots, one per "
        "connection from accept to close, idle or not (the open-file limit is raised to hold "
        "them, or fewer)", ge=16)
    client_max_in_flight: int = setting(
        "api", 128, "requests one client (an IP address, an IPv6 /64) may have in flight in "
        "one API process; past it 429 `too_many_in_flight` after a 1 s pause; 0: no cap",
        ge=0)
    events_poll_interval: Interval = setting(
        "api", 0.25, "time between two reads of the change counters of open event streams "
        "(one read a process)", ge=0.01, le=5)
    stream_idle: Interval = setting(
        "api", 300.0, "an event stream on a job that has not changed for this long ends, with "
        "a `retry:` hint", gt=0)

    # --- auth ----------------------------------------------------------------------------
    jwt_secret: str | None = setting(
        "auth", None, "HS256 secret for user/admin tokens (also keys callback tokens and local "
        "URLs); `tollgate dev` makes one and prints it")
    jwt_public_key: str | None = setting(
        "auth", None, "RS256 public key (PEM) to verify user tokens instead")
    jwt_audience: str | None = setting(
        "auth", None, "JWT `aud` that user and admin tokens must carry; unset: aud is not "
        "required")
    metrics_token: str | None = setting(
        "auth", None, "GET /metrics wants `Authorization: Bearer <token>`; unset: loopback "
        "clients only")

    # --- jobs ----------------------------------------------------------------------------
    signup_credits: int = setting("jobs", 10, "credits of a newly provisioned user", ge=0)
    models: str | None = setting(
        "jobs", None, "path of a TOML file of models ([Models and processors](models.md)); "
        "unset: one model, `thumbnail`, from `TOLLGATE_PROCESSOR`, `_PRICE_PER_ITEM`, "
        "`_QUEUE_NAME`, `_BATCH_SIZE`, `_MAX_ITEMS`")
    processor: str = setting(
        "jobs", "workers.processors.thumbnail:make_thumbnails", "`module:function` run by "
        "workers on each batch (the one model without `TOLLGATE_MODELS`)")
    price_per_item: int = setting(
        "jobs", 1, "credits per item (the one model without `TOLLGATE_MODELS`)", ge=0)
    queue_name: str = setting("jobs", "gpu",
                              "RQ queue (the one model without `TOLLGATE_MODELS`)")
    batch_size: int = setting("jobs", 8, "items per RQ job", ge=1)
    max_items: int = setting("jobs", 1000, "items per job", ge=1)
    max_item_size: int = setting(
        "jobs", 100 * 1024**2, "largest item (bytes) a job may declare, for a model that sets "
        "no `max_item_bytes`", ge=1)
    hold_ttl: Seconds = setting(
        "jobs", 3600, "how long a created/uploaded job may wait before its hold expires", ge=1)
    lease_ttl: Seconds = setting(
        "jobs", 60, "how long a running job's lease lasts without a heartbeat", ge=2)
    requeue_after: Seconds = setting(
        "jobs", 300, "time before a queued job nobody started is enqueued again", ge=1)
    plan_weights: str = setting(
        "jobs", "free=1,pro=4", "each plan's share of a queue's workers, `plan=weight,...` "
        "(docs/scheduling.md)",
        pattern=r"^[A-Za-z0-9_-]+=[0-9]+(\.[0-9]+)?(,[A-Za-z0-9_-]+=[0-9]+(\.[0-9]+)?)*$")
    dispatch_batches_per_worker: int = setting(
        "jobs", 2, "batches per live worker the dispatcher keeps in each RQ queue", ge=1,
        le=100)
    idempotency_ttl: Seconds = setting(
        "jobs", 86400, "how long an `Idempotency-Key` of POST /jobs is remembered", ge=60)
    result_ttl: Seconds = setting(
        "jobs", 7 * 86400, "how long a finished job's outputs are kept; then the flusher "
        "deletes its files and the job view shows `result_expired: true` (inputs go when the "
        "job is flushed)", ge=1)
    retry_window: Seconds = setting(
        "jobs", 86400, "how long the inputs of a job's failed items are kept after it "
        "finished, for POST /jobs/{id}/retry (every other input goes at the flush)", ge=0)

    # --- workers -------------------------------------------------------------------------
    worker_max_batch_bytes: int = setting(
        "workers", 256 * 1024**2, "bytes of declared inputs a worker holds at once: it "
        "downloads and runs a batch in groups that fit, and an item larger than this alone",
        ge=1)

    # --- flusher -------------------------------------------------------------------------
    flusher_interval: Interval = setting("flusher", 1.0, "time between flusher passes", gt=0)
    flush_delay: Seconds = setting(
        "flusher", 5, "how long a finished job stays in Redis before the flush", ge=0)
    flush_batch: int = setting(
        "flusher", 200, "jobs per bucket per flusher round (a bucket that fills a round is "
        "taken again at once, up to 25 rounds a pass)", ge=1, le=5000)
    flush_attempts: int = setting(
        "flusher", 5, "tries of a record SQL refuses before it is set aside in "
        "`flush_failures` (`tollgate inspect failures`)", ge=1, le=100)
    flush_retry_delay: Interval = setting(
        "flusher", 2.0, "time before the first retry of a refused record (doubling, at most "
        "1 h)", ge=0)

    # --- webhooks ------------------------------------------------------------------------
    webhook_allow_private: bool = setting(
        "webhooks", False, "allow webhook URLs that resolve to private, loopback or link-local "
        "addresses (local testing, a private network)")
    webhook_timeout: Interval = setting(
        "webhooks", 5.0, "time a receiver has to answer a delivery before it counts as failed",
        gt=0, le=60)
    webhook_log_ttl: Seconds = setting(
        "webhooks", 7 * 86400, "how long a job's delivery log is kept after its last delivery "
        "ended", ge=60)

    # --- limits --------------------------------------------------------------------------
    rate_limits: str | None = setting(
        "limits", None, "per-plan request rates from a TOML file of [<plan>] tables (write = "
        "N, read = N per minute; [Reference](reference.md)); unset: the defaults in "
        "service/api/ratelimit.py")
    rate_limits_enabled: bool = setting("limits", True, "enforce the rate limits")

    @property
    def worker_url(self) -> str:
        """The API's base URL for workers (callbacks, local-folder files)."""
        return (self.internal_url or self.public_url).rstrip("/")

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_storage(self) -> bool:
        return self.s3_endpoint is None and self.s3_access_key is None


def group_of(name: str) -> str:
    """The group of a setting (`Settings.model_fields[name]`)."""
    extra = Settings.model_fields[name].json_schema_extra
    if not isinstance(extra, dict) or not isinstance(extra.get("group"), str):
        raise KeyError(f"setting {name!r} has no group: declare it with setting(...)")
    return str(extra["group"])


def grouped(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings by group (`tollgate inspect config`, the docs): group -> name -> value."""
    out: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for name in Settings.model_fields:
        out[group_of(name)][name] = getattr(settings, name)
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
