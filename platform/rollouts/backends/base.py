"""The interface a rollout uses to serve model versions, whatever runs them.

Each version of the registered model (`models:/<registered_model>/<version>`) gets its own
endpoint. A backend records what it runs in the catalog's `policy_endpoints` table (KServe: on
the cluster itself as well), so a restarted platform adopts the endpoints that still answer
instead of starting them twice.

Lifecycles: `ensure` starts (or adopts) an endpoint and `stop` ends it; the rollout controller
stops the endpoints of finished rollouts. `close()` only releases what the backend object holds
(HTTP clients, process handles): endpoints keep serving robots across platform restarts.
"""

from __future__ import annotations

import abc
import re
from typing import ClassVar, Literal

from wamfleet.platform.contracts.rollout import Endpoint

BackendName = Literal["local", "kserve"]
_VERSION = re.compile(r"^[1-9][0-9]{0,15}$")


class ServingError(RuntimeError):
    """An endpoint could not be started or reached (the message says why, with a log tail if any)."""


def check_version(version: str) -> str:
    """MLflow model versions are positive integers; an alias would change meaning under a running endpoint."""
    if not _VERSION.fullmatch(version):  # `match` would accept "1\n"
        raise ValueError(f"version: expected an MLflow model version number, got {version!r}")
    return version


def model_uri(model_name: str, version: str) -> str:
    """The registry URI `wamfleet serve --policy` loads."""
    return f"models:/{model_name}/{check_version(version)}"


def version_label(model_name: str, version: str) -> str:
    """What the server reports to robots as `policy_version` (and episodes record)."""
    return f"{model_name}/{version}"


class ServingBackend(abc.ABC):
    """One endpoint per model version, started on demand and recorded so a restart can adopt it."""

    backend: ClassVar[BackendName]

    @abc.abstractmethod
    def ensure(self, version: str) -> Endpoint:
        """Idempotent: the healthy recorded endpoint of `version`, else a new one, once it is ready.

        Raises ServingError when the endpoint does not become ready (nothing is left running then).
        """

    @abc.abstractmethod
    def stop(self, version: str) -> None:
        """Ends the endpoint of `version` and forgets its record; a no-op when there is none."""

    @abc.abstractmethod
    def endpoints(self) -> dict[str, Endpoint]:
        """Version -> recorded endpoint, healthy or not (but never one still starting: no answer yet)."""

    @abc.abstractmethod
    def healthy(self, version: str) -> bool:
        """True when the recorded endpoint of `version` answers ready now."""

    def stop_all(self) -> None:
        """Stops every recorded endpoint (the demo's and tests' cleanup; rollouts stop one at a time)."""
        for version in list(self.endpoints()):
            self.stop(version)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases what this object holds; running endpoints are left serving (see the module doc)."""
