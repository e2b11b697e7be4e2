"""The platform API application: `create_app(settings)` wires catalog, store and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
from fastapi import FastAPI

from wamfleet.platform.api import episodes, errors, objects, robots, uploads
from wamfleet.platform.api.state import PlatformState
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.ingest import IngestError, IngestService
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import ObjectStore, open_object_store
from wamfleet.platform.storage.base import InvalidKey, StorageError
from wamfleet.platform.storage.local import LocalObjectStore

log = logging.getLogger(__name__)
EXPIRY_SWEEP_S = 60.0


def build_state(settings: Settings, store: ObjectStore | None = None) -> PlatformState:
    catalog = Catalog(settings.effective_catalog_url)
    if store is None:
        store = open_object_store(settings, url_base=objects.OBJECTS_PATH)
    elif isinstance(store, LocalObjectStore) and store.url_base is None:
        store.url_base = objects.OBJECTS_PATH
    ingest = IngestService(
        catalog=catalog,
        store=store,
        url_expiry=timedelta(seconds=settings.presign_expiry_s),
        session_ttl=timedelta(seconds=settings.upload_session_ttl_s),
        max_file_bytes=settings.max_file_bytes,
    )
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    return PlatformState(settings=settings, catalog=catalog, store=store, ingest=ingest, admin_token=admin)


async def _sweep_expired(state: PlatformState) -> None:
    while True:
        await asyncio.sleep(EXPIRY_SWEEP_S)
        try:
            expired = await anyio.to_thread.run_sync(state.ingest.expire_stale_sessions)
            if expired:
                log.info("expired %d upload sessions", expired)
        except Exception:
            log.exception("sweeping expired upload sessions failed")


def create_app(settings: Settings, store: ObjectStore | None = None) -> FastAPI:
    state = build_state(settings, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep_expired(state))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        state.catalog.dispose()

    app = FastAPI(
        title="wamfleet platform",
        version="1",
        description="Robots upload episodes; engineers search and download them.",
        lifespan=lifespan,
    )
    app.state.platform = state
    app.add_exception_handler(IngestError, errors.ingest_error)
    app.add_exception_handler(InvalidKey, errors.invalid_key)
    app.add_exception_handler(StorageError, errors.storage_error)
    for router in (robots.router, uploads.router, episodes.router, objects.router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
