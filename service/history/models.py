"""SQLAlchemy 2 models for the SQL side; the same schema runs on SQLite and PostgreSQL.

Redis holds the live truth (credits, slots, running jobs); these tables hold what outlives
it: users and their rules, the history of finished jobs and every credit movement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
PortableJSON = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Always timezone-aware UTC in Python; SQLite stores naive text, so attach UTC on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: PortableJSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    plan: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rule(Base):
    __tablename__ = "rules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    # A processing preset: the model (NULL: the default one when a job uses the rule) and
    # the webhook {url, events} (NULL: none) a job made from it takes, unless it names its own.
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, default=None)
    # The priority a job made from it takes unless it names its own (NULL: normal).
    priority: Mapped[str | None] = mapped_column(String(8), default=None)
    # 'pending' until its Redis slot is taken, 'deleting' until the slot is released: a
    # crash between the SQL step and the Redis step leaves a row a repair pass can finish.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobLog(Base):
    """A finished job, moved here from Redis by the flusher; never changes afterwards."""

    __tablename__ = "jobs_log"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Indexed by ix_jobs_log_user_created below (user_id is its leading column).
    user_id: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    total_items: Mapped[int] = mapped_column(Integer)
    done_items: Mapped[int] = mapped_column(Integer)
    failed_items: Mapped[int] = mapped_column(Integer)
    price: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    charged: Mapped[int] = mapped_column(BigInteger)
    refunded: Mapped[int] = mapped_column(BigInteger)
    rule_id: Mapped[str | None] = mapped_column(String(64))
    # The model the job ran on (its price is `price`); NULL for jobs of version 1.
    model: Mapped[str | None] = mapped_column(String(64))
    # The params the job ran with, copied at creation (from its rule or its own body); NULL
    # for jobs from before params.
    params: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, default=None)
    # [{index, name, content_type, size, status, output_key?, error?}]
    items: Mapped[list[dict[str, Any]]] = mapped_column(PortableJSON)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Set when the flusher deleted the job's files, TOLLGATE_RESULT_TTL after finished_at.
    results_deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # The job's own result TTL (POST /jobs `result_ttl_s`) and when it runs out; NULL: the
    # setting's TOLLGATE_RESULT_TTL after finished_at.
    result_ttl_s: Mapped[int | None] = mapped_column(Integer, default=None)
    results_expire_at: Mapped[datetime | None] = mapped_column(default=None)
    # The job whose failed items this one runs again (POST /jobs/{id}/retry).
    retry_of: Mapped[str | None] = mapped_column(String(64), default=None)
    # Set when the flusher deleted the inputs of its failed items, kept for a retry
    # TOLLGATE_RETRY_WINDOW after finished_at (every other input goes at the flush).
    inputs_deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # The API key the job was made through (NULL: a JWT).
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)


# GET /jobs pages newest first by (created_at, id): one index range scan per page.
Index("ix_jobs_log_user_created", JobLog.user_id, JobLog.created_at.desc(), JobLog.id.desc())
# The same pages with ?status=: without it, a status filter read every row of the user.
Index("ix_jobs_log_user_state_created", JobLog.user_id, JobLog.state, JobLog.created_at.desc(),
      JobLog.id.desc())
# The flusher's "whose results are due for deletion": only rows not yet deleted are indexed.
Index("ix_jobs_log_results_due", JobLog.finished_at,
      postgresql_where=JobLog.results_deleted_at.is_(None),
      sqlite_where=JobLog.results_deleted_at.is_(None))
# The same for jobs with a TTL of their own.
Index("ix_jobs_log_results_expire", JobLog.results_expire_at,
      postgresql_where=JobLog.results_deleted_at.is_(None),
      sqlite_where=JobLog.results_deleted_at.is_(None))
# Jobs whose failed items' inputs are kept for a retry and not yet deleted.
_KEPT_INPUTS = (JobLog.failed_items > 0) & JobLog.inputs_deleted_at.is_(None) \
    & JobLog.results_deleted_at.is_(None)
Index("ix_jobs_log_kept_inputs", JobLog.finished_at, postgresql_where=_KEPT_INPUTS,
      sqlite_where=_KEPT_INPUTS)
# The usage statement (service.history.usage): a user's jobs by the day they finished, one
# range per statement; on PostgreSQL it carries the summed columns (an index-only scan).
Index("ix_jobs_log_user_finished", JobLog.user_id, JobLog.finished_at,
      postgresql_include=["model", "total_items", "charged", "refunded"])
# The same across users (GET /admin/usage without user_id).
Index("ix_jobs_log_finished", JobLog.finished_at,
      postgresql_include=["model", "total_items", "charged", "refunded"])


# A key's period spend, rebuilt after a Redis loss: its jobs since the period began.
Index("ix_jobs_log_key_created", JobLog.key_id, JobLog.created_at,
      postgresql_where=JobLog.key_id.is_not(None), sqlite_where=JobLog.key_id.is_not(None))


class ApiKey(Base):
    """A user's API key (POST /me/keys). Only sha256 of its secret is kept; Redis holds the
    same record for authentication and rebuilds it from here after a loss."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(64))  # `tg_<id>_`: what a log may show
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))  # comma separated
    cap_credits: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cap_period: Mapped[str | None] = mapped_column(String(8), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDeliveryLog(Base):
    """One delivery of a job's webhook event, moved here from Redis with its job by the
    flusher (and updated by later attempts); GET /jobs/{id}/webhooks reads it for 30 days."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the webhook-id
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(index=True)  # kept 30 days from here
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    gave_up_at: Mapped[datetime | None] = mapped_column(default=None)
    # The body sent (the event as it was): a redelivery sends it again, newly signed.
    body: Mapped[str | None] = mapped_column(Text, default=None)
    # The delivery a redelivery repeats.
    redelivery_of: Mapped[str | None] = mapped_column(String(200), default=None)


class LedgerEntry(Base):
    """One credit movement; the id comes from the Lua script (e.g. '<job>:charge')."""

    __tablename__ = "credit_ledger"

    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class CreditGrant(Base):
    """A credit grant (POST /admin/users/{id}/credits, or a user's signup credits), written
    with its `grant` ledger row (the row `ledger_id` names). What is left in it is Redis's
    (lua/includes/grants.lua); a rebuild after a Redis loss places the balance SQL holds
    back into the grants (service.jobs.provisioning). Its `expire:<id>...` ledger rows say
    what expired."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # paid | promotional
    amount: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    ledger_id: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlushFailure(Base):
    """A record SQL kept refusing (too long, a NUL, a constraint), set aside by the flusher
    so that it stops holding up the rest of its bucket; `tollgate inspect failures --retry`
    writes it again after a fix."""

    __tablename__ = "flush_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # job | ledger
    # sha256 of kind and record id: one row per record, however often it is set aside.
    record_hash: Mapped[str] = mapped_column(String(64), unique=True)
    record_id: Mapped[str] = mapped_column(Text)  # as JSON text: it may hold a NUL itself
    # What Redis held, as JSON text (NUL escaped), rebuilt into a row on retry.
    record: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime]
    last_failed_at: Mapped[datetime]


class AdminOp(Base):
    """An admin write applied under an Idempotency-Key (today: plan changes). Written in the
    same SQL transaction as the change, before Redis: a retry with the same key finds its row
    and changes nothing, even after Redis lost its own record of the op."""

    __tablename__ = "admin_ops"

    # '<kind>:<user id>:<sha256 of the key, 32 hex>': fits for the longest user id.
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AccountAlerts(Base):
    """The account's webhook (PUT /me/webhook) and low-balance alert (PUT /me/alerts). Redis
    holds the same in the user hash (lua/alert_set.lua) and gets it back from here after a
    loss; whether an alert has fired is recomputed from the balance then."""

    __tablename__ = "account_alerts"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_events: Mapped[str] = mapped_column(String(100), default="")  # comma separated
    low_balance: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
