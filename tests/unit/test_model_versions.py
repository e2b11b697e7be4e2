"""The dashboard's model view: a registry that cannot be read is an error on the view, never a 500."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from wamfleet.platform.api.model_versions import describe_versions


class FailingRegistry:
    """An MLflow client whose registry search fails the way a store can fail."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def search_model_versions(self, *args: object, **kwargs: object) -> list[object]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (MlflowException("API request failed"), "MLflow: API request failed"),
        (sqlite3.OperationalError("database is locked"), "MLflow: the registry could not be read"),
    ],
)
def test_a_registry_that_cannot_be_read_is_an_error_on_the_view(error: Exception, shown: str) -> None:
    view = describe_versions(FailingRegistry(error), "wamfleet-policy", None)
    assert view.versions == [] and view.error is not None and view.error.startswith(shown)


def test_a_model_not_registered_yet_is_an_empty_view() -> None:
    missing = MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)
    view = describe_versions(FailingRegistry(missing), "wamfleet-policy", None)
    assert view.versions == [] and view.error is None
