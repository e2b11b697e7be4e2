"""Patterns that gate what reaches the store, Kubernetes and MLflow: no trailing newline slips
through (`re.match` with `$` allows one), and a signature of any text is refused, not a crash."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from wamfleet.platform.rollouts.backends.base import check_version
from wamfleet.platform.rollouts.backends.kserve_manifests import label_value
from wamfleet.platform.storage.base import InvalidKey, validate_key
from wamfleet.platform.storage.local import LocalObjectStore


def test_object_keys_with_a_trailing_newline_are_refused() -> None:
    assert validate_key("episodes/robot-1/a.mp4") == "episodes/robot-1/a.mp4"
    with pytest.raises(InvalidKey):
        validate_key("episodes/robot-1\n/a.mp4")
    with pytest.raises(InvalidKey):
        validate_key("episodes/robot-1/a.mp4\n")


def test_model_versions_and_label_values_with_a_trailing_newline_are_refused() -> None:
    assert check_version("12") == "12"
    with pytest.raises(ValueError, match="version"):
        check_version("12\n")
    assert label_value("v12") == "v12"
    assert "\n" not in label_value("v12\n")


@pytest.mark.parametrize("signature", ["é" * 64, "\u2603", "", "0" * 64])
def test_a_presigned_url_with_any_signature_text_is_refused(tmp_path: Path, signature: str) -> None:
    store = LocalObjectStore(tmp_path, url_base="http://127.0.0.1:1/objects")
    url = store.presigned_get_url("uploads/s/data.parquet", timedelta(minutes=5))
    expires = int(url.split("expires=")[1].split("&")[0])
    with pytest.raises(PermissionError):  # before: TypeError from compare_digest on non-ASCII text
        store.verify_presigned("GET", "uploads/s/data.parquet", expires, signature)
