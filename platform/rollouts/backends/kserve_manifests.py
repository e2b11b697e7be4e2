"""KServe InferenceService manifests (`serving.kserve.io/v1beta1`) rendered and judged as plain data.

One InferenceService per version (`wamfleet-policy-v3`), whose predictor is a custom container
running `wamfleet serve` from the serving image on port 8080, KServe v2 REST and the openpi
websocket on that one port. Raw deployment mode (a Deployment and a Service, no Knative), so
websocket upgrades pass and a robot's connection stays on one replica (its KV cache).

The policy comes from the MLflow registry (`models:/<name>/<version>`, MLFLOW_TRACKING_URI from a
Secret) or, for any other storage URI (`s3://…`, `pvc://…`), from KServe's storage initializer,
which puts it under /mnt/models (it must be a policy directory: policy.json at its root).

Everything here is pure, so it is tested without a cluster (`render_inference_service` against
the upstream CRD schema; `plan_apply` and `inference_service_status` on API answers); the
calls to the Kubernetes API live in `kserve.py`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from wamfleet.platform.rollouts.backends.base import version_label

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
