"""What every request handler shares: settings, catalog, object store, ingest, retrain launcher."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.ingest import IngestService
from wamfleet.platform.retrains.launcher import RetrainLauncher
from wamfleet.platform.rollouts.controller import RolloutController
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.base import ObjectStore


@dataclass
class PlatformState:
    settings: Settings
    catalog: Catalog
    store: ObjectStore
    ingest: IngestService
    admin_token: str | None
    launcher: RetrainLauncher
    rollouts: RolloutController


def get_state(request: Request) -> PlatformState:
    state: PlatformState = request.app.state.platform
    return state
