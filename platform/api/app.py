"""The platform API application: `create_app(settings)` wires catalog, store, launcher and routers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from wamfleet.platform.api import dashboard, episodes, errors, objects, retrains, robots, rollouts, uploads
from wamfleet.platform.api.state import PlatformState
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.ingest import IngestError, IngestService
from wamfleet.platform.retrains.launcher import RetrainLauncher, launcher_for
from wamfleet.platform.retrains.policy import RetrainPolicy
from wamfleet.platform.retrains.scheduler import check_and_launch
from wamfleet.platform.rollouts.controller import RolloutController, controller_for
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import ObjectStore, open_object_store
from wamfleet.platform.storage.base import InvalidKey, StorageError
from wamfleet.platform.storage.local import LocalObjectStore

log = logging.getLogger(__name__)
EXPIRY_SWEEP_S = 60.0
RETRAIN_REAP_S = 5.0  # how often finished retrain processes/KFP runs are noticed
DESCRIPTION = """Robots upload episodes; engineers search and download them.

Authentication: `Authorization: Bearer <token>`, the admin token or a robot's token. Errors are
`{"detail": "<message naming the field or resource>"}`; a 422 for a request that does not match
this schema lists the field errors instead (`loc` names the field; `input` echoes the value, with
NaN and infinity as text).

Times: ISO 8601. Query times without a UTC offset (`since`, `until`) are taken as UTC.
"""


def build_state(
    settings: Settings,
    store: ObjectStore | None = None,
    launcher: RetrainLauncher | None = None,
    rollout_controller: RolloutController | None = None,
) -> PlatformState:
    catalog = Catalog(
        settings.effective_catalog_url,
        pool_size=settings.catalog_pool_size,
        max_overflow=settings.catalog_max_overflow,
    )
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
        trust_store_checksums=settings.store_checksums == "trust",
    )
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    return PlatformState(
        settings=settings,
        catalog=catalog,
        store=store,
        ingest=ingest,
        admin_token=admin,
        launcher=launcher or launcher_for(settings, catalog),
        rollouts=rollout_controller or controller_for(settings, catalog),
    )


async def _sweep_expired(state: PlatformState) -> None:
    """Expires overdue upload sessions; an expired session's half-committed episode (published,
    never recorded) is removed with it, and logged by the ingest service."""
    while True:
        await asyncio.sleep(EXPIRY_SWEEP_S)
        try:
            expired = await anyio.to_thread.run_sync(state.ingest.expire_stale_sessions)
            if expired:
                log.info("expired %d upload sessions", expired)
        except Exception:
            log.exception("sweeping expired upload sessions failed")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine (a name other than localhost: no)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings) -> None:
    """Anonymous reading is meant for the embedded one-machine default (127.0.0.1); on an
    address others reach, anyone gets every robot's episodes, with signed video URLs."""
    if settings.dashboard_anonymous_read and not is_loopback(settings.api_host):
        log.warning(
            "WAMFLEET_DASHBOARD_ANONYMOUS_READ is on and the API binds %s: anyone who reaches it can read "
            "the dashboard, every robot's episodes and their signed video URLs, without a token. "
            "Set WAMFLEET_DASHBOARD_ANONYMOUS_READ=false unless that is intended.",
            settings.api_host,
        )


async def _retrain_loop(state: PlatformState) -> None:
    """Reaps the launcher every few seconds; evaluates the policy every retrain_check_interval_s.

    Reaping runs even with the policy off, so a manual run whose process died is marked failed.
    """
    settings = state.settings
    policy = RetrainPolicy.from_settings(settings)
    interval = settings.retrain_check_interval_s
    loop = asyncio.get_running_loop()
    next_check = loop.time() + interval
    log.info("%s (checked every %g s)", policy.describe(), interval)
    while True:
        await asyncio.sleep(min(interval, RETRAIN_REAP_S))
        try:
            if policy.enabled and loop.time() >= next_check:
                next_check = loop.time() + interval
                check = functools.partial(check_and_launch, state.catalog, settings, state.launcher)
                await anyio.to_thread.run_sync(check)
            else:
                await anyio.to_thread.run_sync(state.launcher.poll)
        except Exception:
            log.exception("checking retrains failed")


async def _rollout_loop(state: PlatformState) -> None:
    """Evaluates the active rollout's gates (and keeps the champion served) on a fixed period."""
    while True:
        await asyncio.sleep(state.settings.rollout_check_interval_s)
        try:
            if await anyio.to_thread.run_sync(state.rollouts.has_work):
                await anyio.to_thread.run_sync(state.rollouts.tick)
        except Exception:
            log.exception("evaluating rollouts failed")


def create_app(
    settings: Settings,
    store: ObjectStore | None = None,
    launcher: RetrainLauncher | None = None,
    rollout_controller: RolloutController | None = None,
) -> FastAPI:
    """`launcher` replaces the one the settings choose (tests use a LocalLauncher with their own command)."""
    state = build_state(settings, store, launcher, rollout_controller)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        warn_if_exposed(settings)
        loops = (_sweep_expired(state), _retrain_loop(state), _rollout_loop(state))
        tasks = [asyncio.create_task(loop) for loop in loops]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        state.launcher.close()
        state.rollouts.close()
        state.catalog.dispose()

    app = FastAPI(
        title="wamfleet platform",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.platform = state
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(IngestError, errors.ingest_error)
    app.add_exception_handler(InvalidKey, errors.invalid_key)
    app.add_exception_handler(StorageError, errors.storage_error)
    app.add_exception_handler(OperationalError, errors.catalog_unavailable)
    app.add_exception_handler(PoolTimeout, errors.catalog_unavailable)
    for router in (
        robots.router,
        uploads.router,
        episodes.router,
        objects.router,
        retrains.router,
        rollouts.router,
        dashboard.router,
        dashboard.page,
    ):
        app.include_router(router)
    app.mount("/dashboard/assets", StaticFiles(directory=dashboard.STATIC_DIR), name="dashboard-assets")
    app.mount("/metrics", make_asgi_app())  # Prometheus: counters only, open like /healthz

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
