"""The MLflow aliases a rollout moves: `candidate`, `champion`, `previous`.

Promotion is `previous <- champion, champion <- candidate`; a rollback before promotion drops
`candidate`; a rollback after it is one move, `champion <- previous`. A client with an explicit
URI, so no global MLflow state is touched inside the platform process.
"""

from __future__ import annotations

import contextlib
from typing import Any


class AliasRegistry:
    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        """Created on first use: importing MLflow costs seconds the API start should not pay."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def get(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def resolve(self, ref: str) -> str:
        """A version number or an alias, as a version number; ValueError naming what is missing."""
        from mlflow.exceptions import MlflowException

        if ref.isdigit():
            try:
                self.client.get_model_version(self.model_name, ref)
            except MlflowException:
                raise ValueError(f"candidate: {self.model_name} has no version {ref}") from None
            return ref
        version = self.get(ref)
        if version is None:
            raise ValueError(f"candidate: {self.model_name} has no alias {ref!r}")
        return version

    def set(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def delete(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already gone: the move is idempotent
            self.client.delete_registered_model_alias(self.model_name, alias)
