"""The kserve backend is built from WAMFLEET_KSERVE_TEMPLATE_FILE (what the Helm chart mounts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.rollouts.backends.kserve import KServeBackend
from wamfleet.platform.rollouts.controller import controller_for
from wamfleet.platform.settings import Settings


def test_template_file_reaches_the_rendered_inference_service(tmp_path: Path) -> None:
    template = tmp_path / "kserve.json"
    template.write_text(
        json.dumps(
            {
                "gpus": 2,
                "node_selector": {"nvidia.com/gpu.product": "H100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "service_account": "wamfleet-serving",
            }
        )
    )
    settings = Settings(
        data_dir=tmp_path, rollout_backend="kserve", kserve_namespace="robots", kserve_template_file=template
    )
    controller = controller_for(settings, Catalog(f"sqlite:///{tmp_path / 'c.db'}"))
    assert isinstance(controller.backend, KServeBackend)
    obj = controller.backend.render("3")
    predictor = obj["spec"]["predictor"]
    assert obj["metadata"]["namespace"] == "robots"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert predictor["tolerations"][0]["key"] == "gpu"
    assert predictor["serviceAccountName"] == "wamfleet-serving"
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (2, "2")


def test_unknown_template_fields_are_refused(tmp_path: Path) -> None:
    template = tmp_path / "kserve.json"
    template.write_text(json.dumps({"gpu": 1}))
    settings = Settings(data_dir=tmp_path, rollout_backend="kserve", kserve_template_file=template)
    with pytest.raises(ValidationError, match="gpu"):
        controller_for(settings, Catalog(f"sqlite:///{tmp_path / 'c.db'}"))
