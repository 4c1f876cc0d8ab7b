"""Everything one API process holds open: Redis clients, the SQL engine, storage, the queue."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rq import Queue
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.contract import make_queue
from service.history.engine import make_engine
from service.models import ModelTable, load_models
from service.settings import Settings
from service.state.clients import (
    QueueConnection,
    is_standalone,
    queue_redis,
    queue_redis_async,
    state_redis,
    warn_if_evicting,
)
from service.state.keys import KeySpace
from service.state.queue import LiveWorkers
from service.state.store import Core
from service.storage import Storage, make_storage

log = logging.getLogger(__name__)


def derived_secret(secret: str, purpose: str) -> bytes:
    """One configured secret, a key per use: a leaked URL signature says nothing of JWTs."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


@dataclass
class Runtime:
    settings: Settings
    secret: str
    core: Core
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    queue_connection: QueueConnection
    queue: Queue

    @cached_property  # read on every worker callback: derive it once
    def callback_secret(self) -> str:
        return derived_secret(self.secret, "callback").hex()

    @cached_property
    def models(self) -> ModelTable:
        return load_models(self.settings)

    @cached_property
    def live_workers(self) -> LiveWorkers:
        return LiveWorkers(self.queue_connection)

    @cached_property
    def queue_reads(self) -> Any:
        """An asyncio client on RQ's Redis for the dispatcher's polling (opened on first use)."""
        return queue_redis_async(self.settings)

    async def close(self) -> None:
        if "queue_reads" in self.__dict__:
            await self.queue_reads.aclose()
        await self.core.close()
        await self.engine.dispose()
        self.storage.close()
        self.queue_connection.close()


def make_core(client: Any, settings: Settings) -> Core:
    """The Core of an API process or the flusher: auto-pipelined on a standalone Redis."""
    return Core(client, KeySpace(settings.key_prefix, settings.buckets),
                autopipeline=settings.redis_autopipeline and is_standalone(client))


def storage_secret(secret: str) -> bytes:
    return derived_secret(secret, "storage")


async def open_runtime(settings: Settings, secret: str, storage: Storage | None = None
                       ) -> Runtime:
    """`storage`: one the caller built already (the app's local folder serves its routes)."""
    client: Any = state_redis(settings)
    await warn_if_evicting(client)
    engine = make_engine(settings.database_url)
    connection = queue_redis(settings)
    return Runtime(
        settings=settings,
        secret=secret,
        core=make_core(client, settings),
        engine=engine,
        sessions=async_sessionmaker(engine, expire_on_commit=False),
        storage=storage or make_storage(settings, storage_secret(secret)),
        queue_connection=connection,
        queue=make_queue(connection, settings.queue_name),
    )
