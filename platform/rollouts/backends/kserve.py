"""Policy versions served as KServe InferenceServices (`serving.kserve.io/v1beta1`) on Kubernetes.

One InferenceService per version (`wamfleet-policy-v3`), whose predictor is a custom container
running `wamfleet serve` from the serving image on port 8080, KServe v2 REST and the openpi
websocket on that one port. Raw deployment mode (a Deployment and a Service, no Knative), so
websocket upgrades pass and a robot's connection stays on one replica (its KV cache).

The policy comes from the MLflow registry (`models:/<name>/<version>`, MLFLOW_TRACKING_URI from a
Secret) or, for any other storage URI (`s3://…`, `pvc://…`), from KServe's storage initializer,
which puts it under /mnt/models (it must be a policy directory: policy.json at its root).

`render_inference_service` is pure (tests validate it against the upstream CRD schema); the
calls to the Kubernetes API are thin, and what they decide (`plan_apply`, `inference_service_status`)
is pure too. The kubernetes package is imported only when a backend first talks to a cluster.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
API_VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
DEFAULT_IMAGE = "ghcr.io/wamfleet/wamfleet-serving:0.1.0"
CONTAINER_NAME = "kserve-container"  # KServe recognises the predictor's main container by this name
PORT = 8080
SERVED_NAME = "wam"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
REGISTRY_SCHEMES = ("models:/", "runs:/")
GPU_RESOURCE = "nvidia.com/gpu"
PART_OF = "app.kubernetes.io/part-of"
LABEL_MODEL = "wamfleet.io/registered-model"
LABEL_VERSION = "wamfleet.io/model-version"
ANNOTATION_VERSION = "wamfleet.io/model-version"  # the exact version (a label value may be sanitised)
ANNOTATION_URI = "wamfleet.io/model-uri"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# KServe names objects `<name>-predictor…` and hosts `<name>-<namespace>.<domain>`; every one of
# them must stay a 63-character DNS label.
MAX_NAME_LENGTH = 45
ACTOR = "backend:kserve"

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns1035_name(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """`text` as a DNS-1035 label; a hash suffix keeps altered or shortened names distinct."""
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    if not clean or not clean[0].isalpha():
        clean = f"x-{clean}".rstrip("-")
    if clean == text and len(clean) <= max_length:
        return clean
    return f"{clean[: max_length - 9].rstrip('-')}-{_digest(text)}"


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value (63 characters of [-A-Za-z0-9_.], alphanumeric ends)."""
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):  # `match` would keep a trailing "\n"
        return text
    clean = re.sub(r"[^-A-Za-z0-9_.]", "-", text).strip("-_.")
    return f"{clean[:54].rstrip('-_.')}-{_digest(text)}".lstrip("-")


def inference_service_name(model_name: str, version: str) -> str:
    """`wamfleet-policy-v3` for version 3 of wamfleet-policy; always a valid InferenceService name."""
    return dns1035_name(f"{model_name}-v{version}")


@dataclass(frozen=True)
class ServingResources:
    """What one predictor replica gets. GPUs are limits (extended resources are never overcommitted);
    CPU is a request only, so the batching thread is never throttled."""

    gpus: int = 1
    cpu: str = "4"
    memory: str = "32Gi"
    gpu_resource: str = GPU_RESOURCE


GPU_TOLERATION: dict[str, Any] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class KServeTemplate:
    """Everything an InferenceService of one version is rendered from, but the version.

    `storage_uri_template` is formatted with `model_name` and `version`. `tolerations=None`
    tolerates the usual `nvidia.com/gpu` taint when the predictor asks for GPUs. The tracking
    URI comes from `mlflow_secret`/`mlflow_secret_key`; `env_from_secrets` adds whole Secrets
    (artifact store credentials: AWS_ACCESS_KEY_ID, MLFLOW_S3_ENDPOINT_URL, WAMFLEET_SERVE_API_KEY).
    """

    namespace: str
    model_name: str = "wamfleet-policy"
    storage_uri_template: str = "models:/{model_name}/{version}"
    image: str = DEFAULT_IMAGE
    resources: ServingResources = field(default_factory=ServingResources)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] | None = None
    service_account: str | None = None
    mlflow_secret: str = "wamfleet-serving"
    mlflow_secret_key: str = "MLFLOW_TRACKING_URI"
    env_from_secrets: Sequence[str] = ()
    min_replicas: int = 1
    max_replicas: int | None = None
    serve_args: Sequence[str] = ()


def render_inference_service(template: KServeTemplate, version: str) -> dict[str, Any]:
    """The InferenceService that serves `version` (a plain dict, ready for the API or for YAML)."""
    name = inference_service_name(template.model_name, version)
    storage_uri = template.storage_uri_template.format(model_name=template.model_name, version=version)
    from_registry = storage_uri.startswith(REGISTRY_SCHEMES)
    resources = template.resources
    labels = {
        PART_OF: "wamfleet",
        "app.kubernetes.io/name": "wamfleet-policy-server",
        "app.kubernetes.io/component": "policy-server",
        "app.kubernetes.io/managed-by": "wamfleet-platform",
        LABEL_MODEL: label_value(template.model_name),
        LABEL_VERSION: label_value(version),
    }
    args = ["serve", "--policy", storage_uri if from_registry else MODEL_DIR]
    args += ["--host", "0.0.0.0", "--port", str(PORT), "--name", SERVED_NAME]
    args += ["--version", version_label(template.model_name, version)]
    gpu = resources.gpus > 0
    if gpu:  # the denoising step compiled (CUDA graphs), during the warm-up before it is ready
        args += ["--device", "cuda", "--dtype", "bf16", "--compile"]
    else:
        args += ["--device", "cpu", "--dtype", "fp32"]
    args += template.serve_args
    env: list[dict[str, Any]] = []
    if from_registry:
        secret_ref = {"name": template.mlflow_secret, "key": template.mlflow_secret_key}
        env.append({"name": "MLFLOW_TRACKING_URI", "valueFrom": {"secretKeyRef": secret_ref}})
    else:
        env.append({"name": "STORAGE_URI", "value": storage_uri})  # KServe's storage initializer
    limits: dict[str, str] = {"memory": resources.memory}
    if resources.gpus > 0:
        limits[resources.gpu_resource] = str(resources.gpus)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": template.image,
        "command": ["wamfleet"],
        "args": args,
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": resources.cpu, "memory": resources.memory}, "limits": limits},
        # Ready only after the policy loaded and one warm-up inference ran.
        "readinessProbe": {
            "httpGet": {"path": f"/v2/models/{SERVED_NAME}/ready", "port": PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }
    if template.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in template.env_from_secrets]
    tolerations = template.tolerations
    if tolerations is None:
        tolerations = [GPU_TOLERATION] if resources.gpus > 0 else []
    predictor: dict[str, Any] = {
        "minReplicas": template.min_replicas,
        "maxReplicas": max(template.max_replicas or template.min_replicas, template.min_replicas),
        "labels": dict(labels),
        # KServe drains requests in flight for 30 s on SIGTERM; leave it room.
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
    }
    if template.service_account:
        predictor["serviceAccountName"] = template.service_account
    if template.node_selector:
        predictor["nodeSelector"] = dict(template.node_selector)
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": template.namespace,
            "labels": labels,
            "annotations": {
                # A Deployment and a Service: websocket upgrades pass, no scale-to-zero cold starts.
                DEPLOYMENT_MODE: "RawDeployment",
                "serving.kserve.io/enable-prometheus-scraping": "true",
                ANNOTATION_VERSION: version,
                ANNOTATION_URI: storage_uri,
            },
        },
        "spec": {"predictor": predictor},
    }


# Decisions on what the API returned (pure) --------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    ready: bool
    url: str | None
    reason: str  # why it is not ready ("" when it is)


def inference_service_status(obj: Mapping[str, Any]) -> ServiceStatus:
    """Readiness and URL from `status.conditions` / `status.url` (`status.address.url` as fallback).

    A Ready condition about an older generation of the spec (a patch not yet rolled out) does not count.
    """
    status: Mapping[str, Any] = obj.get("status") or {}
    url = status.get("url") or (status.get("address") or {}).get("url") or None
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return ServiceStatus(False, url, f"spec generation {generation} not rolled out yet (at {observed})")
    ready = conditions.get("Ready")
    if ready is None:
        return ServiceStatus(False, url, "no Ready condition yet")
    if ready.get("status") != "True":
        failing = [c for c in conditions.values() if c.get("status") == "False" and c.get("message")]
        detail = ready.get("message") or (failing[0].get("message") if failing else "") or ""
        return ServiceStatus(
            False, url, f"Ready={ready.get('status')} {ready.get('reason') or ''} {detail}".strip()
        )
    if not url:
        return ServiceStatus(False, None, "ready but no status.url yet")
    return ServiceStatus(True, url, "")


def endpoint_url(url: str, websocket: bool) -> str:
    """The URL robots get: the InferenceService's http(s) URL, or the same host as ws(s)://."""
    if websocket and url.startswith(("http://", "https://")):
        return "ws" + url[len("http") :]
    return url


def _contains(have: Any, want: Any) -> bool:
    """Whether `have` (as the server returns it, with defaults filled in) holds everything in `want`."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_contains, have, want))
    return bool(have == want)


Plan = Literal["create", "patch", "keep", "wait", "conflict"]


def plan_apply(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> Plan:
    """What to do to make the cluster hold `desired`.

    create: nothing there; keep: it already says all of it; patch: it differs; wait: it is
    being deleted (create after it is gone); conflict: an object of that name that wamfleet
    does not manage (left alone).
    """
    if existing is None:
        return "create"
    meta: Mapping[str, Any] = existing.get("metadata") or {}
    if (meta.get("labels") or {}).get(PART_OF) != "wamfleet":
        return "conflict"
    if meta.get("deletionTimestamp"):
        return "wait"
    want_meta = desired["metadata"]
    same = (
        _contains(meta.get("labels") or {}, want_meta.get("labels") or {})
        and _contains(meta.get("annotations") or {}, want_meta.get("annotations") or {})
        and _contains(existing.get("spec") or {}, desired["spec"])
    )
    return "keep" if same else "patch"


# The backend -----------------------------------------------------------------------------------


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
