"""Every setting tollgate reads, from `TOLLGATE_*` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", extra="ignore")

    redis_url: str | None = None
    queue_redis_url: str | None = None
    database_url: str = "sqlite:///./tollgate.db"
    public_url: str = "http://127.0.0.1:8000"
    # The API as workers reach it (callback URLs, local-folder file URLs); unset: public_url.
    internal_url: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    signup_credits: int = Field(default=10, ge=0)
    storage_dir: str = "./tollgate-data"
    s3_endpoint: str | None = None
    # S3 as clients reach it: the URLs handed to clients are signed for it; unset: s3_endpoint.
    s3_public_endpoint: str | None = None
    s3_bucket: str = "tollgate"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    processor: str = "workers.processors.thumbnail:make_thumbnails"
    # Path of a TOML file of [models.<name>] tables; unset: one model from the settings here.
    models: str | None = None
    hold_ttl: int = Field(default=3600, ge=1)
    max_items: int = Field(default=1000, ge=1)
    # The inputs of a job's failed items are kept this long after it finished, for
    # POST /jobs/{id}/retry (every other input goes at the flush).
    retry_window: int = Field(default=86400, ge=0)

    key_prefix: str = "tg"
    # Hash-slot buckets: fixed for the life of the data (`tollgate rebucket` moves it). 1,024
    # spreads over a Cluster of hundreds of shards; reads that still walk every bucket
    # (webhook outbox pass, queue position, audit) cost 16x more at the 16,384 maximum.
    buckets: int = Field(default=1024, ge=1, le=16384)
    price_per_item: int = Field(default=1, ge=0)
    lease_ttl: int = Field(default=60, ge=2)
    flush_delay: int = Field(default=5, ge=0)
    queue_name: str = "gpu"
    batch_size: int = Field(default=8, ge=1)
    requeue_after: int = Field(default=300, ge=1)
    # Scheduling (docs/scheduling.md): each plan's share of a queue's workers, and how many
    # batches per live worker the dispatcher keeps in each RQ queue.
    plan_weights: str = Field(default="free=1,pro=4",
                              pattern=r"^[A-Za-z0-9_-]+=[0-9]+(\.[0-9]+)?(,[A-Za-z0-9_-]+=[0-9]+(\.[0-9]+)?)*$")
    dispatch_batches_per_worker: int = Field(default=2, ge=1, le=100)
    upload_url_ttl: int = Field(default=3600, ge=60)
    result_url_ttl: int = Field(default=86400, ge=60)
    # Outputs are deleted this long after their job finished (inputs as soon as it ends).
    result_ttl: int = Field(default=7 * 86400, ge=1)
    idempotency_ttl: int = Field(default=86400, ge=60)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Connections: a request body must have arrived body_read_timeout seconds after the
    # request began; an idle keep-alive connection is closed after keepalive_timeout.
    body_read_timeout: float = Field(default=30.0, gt=0, le=3600)
    keepalive_timeout: int = Field(default=5, ge=1, le=600)
    # The largest item (bytes) a job may declare: a model's max_item_bytes, unless it sets one.
    max_item_size: int = Field(default=100 * 1024**2, ge=1)
    # A worker holds at most this many bytes of declared inputs at once: it downloads and runs
    # a batch in groups that fit, and an item larger than this alone.
    worker_max_batch_bytes: int = Field(default=256 * 1024**2, ge=1)
    flush_batch: int = Field(default=200, ge=1, le=5000)
    flusher_interval: float = Field(default=1.0, gt=0)
    # A record SQL refuses is tried this many times in all, waiting flush_retry_delay
    # seconds (doubling) between tries, then set aside in the flush_failures table.
    flush_attempts: int = Field(default=5, ge=1, le=100)
    flush_retry_delay: float = Field(default=2.0, ge=0)
    redis_max_connections: int = Field(default=64, ge=1)
    redis_autopipeline: bool = True
    # Webhooks: private, loopback and link-local targets only when this is true (tests, dev).
    webhook_allow_private: bool = False
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    webhook_log_ttl: int = Field(default=7 * 86400, ge=60)
    # Live progress (SSE): how often one process polls the change counters of its streams.
    events_poll_interval: float = Field(default=0.25, ge=0.01, le=5)
    # A stream on a job that has not changed for this many seconds ends (with a retry hint).
    stream_idle: float = Field(default=300.0, gt=0)
    # Rate limits (docs/reference.md): per-plan request rates from a TOML file of [<plan>] tables
    # (write = N, read = N per minute); unset: the defaults in service/api/ratelimit.py.
    rate_limits: str | None = None
    rate_limits_enabled: bool = True
    # JWT `aud` that user and admin tokens must carry; unset: aud is not required.
    jwt_audience: str | None = None
    # GET /metrics wants `Authorization: Bearer <metrics_token>`; unset: loopback clients only.
    metrics_token: str | None = None

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
