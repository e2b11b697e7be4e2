"""Policy versions served as KServe InferenceServices on Kubernetes: the cluster client.

The backend creates, patches, watches and deletes what `kserve_manifests` renders and decides;
the calls to the Kubernetes API stay thin. The kubernetes package is imported only when a
backend first talks to a cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import select

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import audit, now
from wamfleet.platform.catalog.tables import PolicyEndpoint
from wamfleet.platform.contracts.rollout import Endpoint
from wamfleet.platform.rollouts.backends.base import (
    BackendName,
    ServingBackend,
    ServingError,
    check_version,
    version_label,
)
from wamfleet.platform.rollouts.backends.kserve_manifests import (
    ANNOTATION_VERSION,
    API_VERSION,
    DEFAULT_IMAGE,
    GROUP,
    LABEL_MODEL,
    PART_OF,
    PLURAL,
    KServeTemplate,
    ServiceStatus,
    ServingResources,
    endpoint_url,
    inference_service_name,
    inference_service_status,
    label_value,
    plan_apply,
    render_inference_service,
)

log = logging.getLogger(__name__)

ACTOR = "backend:kserve"


class KServeBackend(ServingBackend):
    """Creates, patches, watches and deletes one InferenceService per version in `namespace`.

    `api_client` is a `kubernetes.client.ApiClient` (default: in-cluster config, else kubeconfig).
    `websocket_urls` hands robots `ws(s)://` URLs (the openpi websocket) instead of the
    InferenceService's http(s) URL (KServe v2 REST). With a `catalog`, endpoints are also
    recorded in `policy_endpoints` (handle: the InferenceService name) for the dashboard; the
    cluster stays the authority on what runs.
    """

    backend: ClassVar[BackendName] = "kserve"

    def __init__(
        self,
        namespace: str,
        *,
        model_name: str = "wamfleet-policy",
        storage_uri_template: str = "models:/{model_name}/{version}",
        image: str = DEFAULT_IMAGE,
        resources: ServingResources | None = None,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] | None = None,
        service_account: str | None = None,
        mlflow_secret: str = "wamfleet-serving",
        mlflow_secret_key: str = "MLFLOW_TRACKING_URI",
        env_from_secrets: Sequence[str] = (),
        min_replicas: int = 1,
        max_replicas: int | None = None,
        serve_args: Sequence[str] = (),
        websocket_urls: bool = False,
        catalog: Catalog | None = None,
        api_client: Any = None,
        custom_objects_api: Any = None,
        ready_timeout_s: float = 900.0,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.template = KServeTemplate(
            namespace=namespace,
            model_name=model_name,
            storage_uri_template=storage_uri_template,
            image=image,
            resources=resources or ServingResources(),
            node_selector=dict(node_selector or {}),
            tolerations=None if tolerations is None else [dict(t) for t in tolerations],
            service_account=service_account,
            mlflow_secret=mlflow_secret,
            mlflow_secret_key=mlflow_secret_key,
            env_from_secrets=tuple(env_from_secrets),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            serve_args=tuple(serve_args),
        )
        self.namespace = namespace
        self.model_name = model_name
        self.websocket_urls = websocket_urls
        self.catalog = catalog
        self.ready_timeout_s = ready_timeout_s
        self.poll_interval_s = poll_interval_s
        self._api_client = api_client
        self._owns_client = api_client is None
        # A CustomObjectsApi given here (configured elsewhere, or a test double) is used as is.
        self._api: Any = custom_objects_api
        self._api_error: type[Exception] = _NoApiError  # ApiException, once the client is loaded
        if custom_objects_api is not None:
            from kubernetes.client.exceptions import ApiException

            self._api_error = ApiException

    def render(self, version: str) -> dict[str, Any]:
        return render_inference_service(self.template, check_version(version))

    def name(self, version: str) -> str:
        return inference_service_name(self.model_name, version)

    # The interface ---------------------------------------------------------------------------

    def ensure(self, version: str) -> Endpoint:
        desired = self.render(version)
        name = desired["metadata"]["name"]
        plan = plan_apply(self._get(name), desired)
        if plan == "conflict":
            raise ServingError(f"InferenceService {self.namespace}/{name} exists and is not wamfleet's")
        if plan == "wait":
            self._wait_deleted(name)
            plan = "create"
        if plan == "create":
            if not self._create(desired):  # created meanwhile by someone else: make it ours
                self._patch(name, desired)
        elif plan == "patch":
            self._patch(name, desired)
        if plan != "keep":
            log.info("InferenceService %s/%s: %s", self.namespace, name, plan)
        status = self._wait_ready(name)
        assert status.url is not None
        endpoint = Endpoint(version=version, url=endpoint_url(status.url, self.websocket_urls))
        self._record(version, endpoint, name, started=plan != "keep")
        return endpoint

    def stop(self, version: str) -> None:
        name = self.name(version)
        api = self.api
        try:
            api.delete_namespaced_custom_object(GROUP, API_VERSION, self.namespace, PLURAL, name)
            log.info("deleted InferenceService %s/%s", self.namespace, name)
        except self._api_error as exc:
            if _status(exc) != 404:
                raise
        if self.catalog is not None:
            with self.catalog.session() as s:
                row = s.get(PolicyEndpoint, (version, self.model_name))
                if row is not None and row.backend == self.backend:
                    s.delete(row)
                    audit(s, ACTOR, "endpoint.stop", version_label(self.model_name, version), handle=name)

    def endpoints(self) -> dict[str, Endpoint]:
        """The recorded endpoints (with a catalog: cheap, asked per robot assignment); else the
        cluster's wamfleet InferenceServices of this model that have a URL."""
        if self.catalog is not None:
            with self.catalog.session() as s:
                rows = s.scalars(
                    select(PolicyEndpoint).where(
                        PolicyEndpoint.model_name == self.model_name, PolicyEndpoint.backend == self.backend
                    )
                ).all()
                return {row.version: Endpoint(version=row.version, url=row.url) for row in rows}
        selector = f"{PART_OF}=wamfleet,{LABEL_MODEL}={label_value(self.model_name)}"
        listing = self.api.list_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, PLURAL, label_selector=selector
        )
        found: dict[str, Endpoint] = {}
        for item in listing.get("items") or []:
            version = ((item.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_VERSION)
            url = inference_service_status(item).url
            if version and url:
                found[version] = Endpoint(version=version, url=endpoint_url(url, self.websocket_urls))
        return found

    def healthy(self, version: str) -> bool:
        existing = self._get(self.name(version))
        return existing is not None and inference_service_status(existing).ready

    def close(self) -> None:
        """Closes the API client this backend created (one passed in belongs to the caller)."""
        if self._owns_client and self._api_client is not None:
            self._api_client.close()
            self._api_client = None
            self._api = None

    # Kubernetes API ---------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """`kubernetes.client.CustomObjectsApi`, created on first use."""
        if self._api is None:
            from kubernetes import client, config
            from kubernetes.client.exceptions import ApiException

            if self._api_client is None:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                self._api_client = client.ApiClient()
            self._api = client.CustomObjectsApi(self._api_client)
            self._api_error = ApiException
        return self._api

    def _get(self, name: str) -> dict[str, Any] | None:
        api = self.api
        try:
            obj: dict[str, Any] = api.get_namespaced_custom_object(
                GROUP, API_VERSION, self.namespace, PLURAL, name
            )
        except self._api_error as exc:
            if _status(exc) == 404:
                return None
            raise
        return obj

    def _create(self, body: dict[str, Any]) -> bool:
        """False when an object of that name appeared since it was read (409)."""
        api = self.api
        try:
            api.create_namespaced_custom_object(GROUP, API_VERSION, self.namespace, PLURAL, body)
        except self._api_error as exc:
            if _status(exc) == 409:
                return False
            raise
        return True

    def _patch(self, name: str, body: dict[str, Any]) -> None:
        # A JSON merge patch: maps merge, lists (containers, tolerations) are replaced whole.
        self.api.patch_namespaced_custom_object(GROUP, API_VERSION, self.namespace, PLURAL, name, body)

    def _wait_deleted(self, name: str) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while self._get(name) is not None:
            if time.monotonic() > deadline:
                raise ServingError(f"InferenceService {self.namespace}/{name} is still being deleted")
            time.sleep(self.poll_interval_s)

    def _wait_ready(self, name: str) -> ServiceStatus:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            obj = self._get(name)
            if obj is None:
                raise ServingError(f"InferenceService {self.namespace}/{name} was deleted while starting")
            status = inference_service_status(obj)
            if status.ready:
                return status
            if time.monotonic() > deadline:
                raise ServingError(
                    f"InferenceService {self.namespace}/{name} not ready in {self.ready_timeout_s:g}s: "
                    f"{status.reason} (kubectl describe inferenceservice -n {self.namespace} {name})"
                )
            time.sleep(self.poll_interval_s)

    def _record(self, version: str, endpoint: Endpoint, name: str, *, started: bool) -> None:
        if self.catalog is None:
            return
        with self.catalog.session() as s:
            row = s.get(PolicyEndpoint, (version, self.model_name))
            if row is not None and row.backend == self.backend and row.url == endpoint.url and not started:
                return  # adopted as recorded
            s.merge(
                PolicyEndpoint(
                    version=version,
                    model_name=self.model_name,
                    backend=self.backend,
                    url=endpoint.url,
                    handle=name,
                    started_at=now(),
                )
            )
            audit(
                s,
                ACTOR,
                "endpoint.start",
                version_label(self.model_name, version),
                url=endpoint.url,
                handle=name,
            )


class _NoApiError(Exception):
    """Stands in for ApiException before the kubernetes package is loaded (nothing raises it)."""


def _status(exc: Exception) -> int | None:
    """The HTTP status of a `kubernetes.client.ApiException` (None for anything else)."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None
