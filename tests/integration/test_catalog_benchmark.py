"""benchmarks/catalog.py keeps working: its synthetic episodes are ones the API can read back,
and every query it times is one the API accepts (a renamed filter would be a 422 here, not a
silently unfiltered timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fastapi.testclient import TestClient

from wamfleet.platform.api.app import create_app
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.settings import Settings

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "catalog.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("catalog_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_catalog_benchmark_seeds_readable_episodes_and_every_query_is_accepted(tmp_path: Path) -> None:
    bench = load_benchmark()
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    bench.seed(catalog, 300)
    catalog.dispose()
    settings = Settings(data_dir=tmp_path / "platform", catalog_url=url, admin_token=bench.ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        rows = bench.measure(client, repeats=1)
    found = {name: rows_found for name, _, _, rows_found in rows}
    assert found["search: first page"] == 100
    assert found["search: task substring, no match"] == 0
    assert found["search: source, none recorded"] == 0
    assert found["dashboard: info"] == 1 and found["dashboard: episodes"] == 50
    assert all(p95 >= p50 > 0 for _, p50, p95, _ in rows)
