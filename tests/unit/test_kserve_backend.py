"""The InferenceService a rollout asks KServe for, checked against KServe's own CRD schema.

The schema is the upstream `serving.kserve.io_inferenceservices.yaml` (v1beta1). It is made as
strict as the API server with field validation `Strict` (kubectl's default): an object schema
that lists properties rejects unknown fields unless it says `x-kubernetes-preserve-unknown-fields`;
`x-kubernetes-int-or-string` means integer or string; int32/int64 formats are range-checked.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wamfleet.platform.rollouts.backends.base import check_version
from wamfleet.platform.rollouts.backends.kserve import KServeBackend
from wamfleet.platform.rollouts.backends.kserve_manifests import (
    CONTAINER_NAME,
    GPU_TOLERATION,
    KServeTemplate,
    ServingResources,
    dns1035_name,
    endpoint_url,
    inference_service_name,
    inference_service_status,
    label_value,
    plan_apply,
    render_inference_service,
)

CRD = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "crds"
    / "serving.kserve.io_inferenceservices.yaml"
)
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _strict(node: Any) -> Any:
    """A structural CRD schema as plain JSON Schema, with the API server's strictness."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.setdefault("type", ["integer", "string"])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def validator() -> jsonschema.Draft7Validator:
    crd = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)  # 2 MB: the C loader is 10x faster
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)


def errors(obj: dict[str, Any]) -> list[str]:
    """Schema errors, plus what the API server checks in metadata (the CRD leaves it open)."""
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(obj)]
    meta = obj.get("metadata", {})
    if not (DNS_1035.match(meta.get("name", "")) and len(meta["name"]) <= 63):
        found.append(f"metadata.name: {meta.get('name')!r} is not a DNS-1035 label")
    for where in (meta.get("labels", {}), obj["spec"]["predictor"].get("labels", {})):
        for key, value in where.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value) or len(value) > 63:
                found.append(f"label {key}={value!r} is invalid")
    for key, value in meta.get("annotations", {}).items():
        if not isinstance(value, str):
            found.append(f"annotation {key}: not a string")
    return found


def gpu_template(**overrides: Any) -> KServeTemplate:
    options: dict[str, Any] = {
        "namespace": "robots",
        "resources": ServingResources(gpus=2, cpu="8", memory="64Gi"),
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
        ],
        "service_account": "wamfleet-serving",
        "env_from_secrets": ["wamfleet-artifacts"],
        "min_replicas": 1,
        "max_replicas": 3,
    }
    return KServeTemplate(**(options | overrides))


def test_rendered_service_validates_against_the_upstream_crd() -> None:
    for template in (gpu_template(), KServeTemplate(namespace="default", resources=ServingResources(gpus=0))):
        obj = render_inference_service(template, "3")
        assert errors(obj) == [], errors(obj)


def test_gpus_node_selector_and_tolerations_land_where_kserve_reads_them() -> None:
    obj = render_inference_service(gpu_template(), "7")
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1" and obj["kind"] == "InferenceService"
    meta = obj["metadata"]
    assert meta["name"] == "wamfleet-policy-v7" and meta["namespace"] == "robots"
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "wamfleet"
    assert meta["labels"]["wamfleet.io/model-version"] == "7"
    predictor = obj["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert predictor["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
    ]
    assert predictor["serviceAccountName"] == "wamfleet-serving"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert predictor["labels"]["wamfleet.io/model-version"] == "7"
    (container,) = predictor["containers"]
    assert container["name"] == CONTAINER_NAME == "kserve-container"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/wam/ready", "port": 8080}
    args = container["args"]
    assert args[:3] == ["serve", "--policy", "models:/wamfleet-policy/7"]
    for flag, value in [("--port", "8080"), ("--host", "0.0.0.0"), ("--version", "wamfleet-policy/7")]:
        assert args[args.index(flag) + 1] == value
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--dtype") + 1] == "bf16"  # the GPU path runs in bf16
    assert "--compile" in args  # and the denoising step compiled (CUDA graphs)
    (tracking,) = [e for e in container["env"] if e["name"] == "MLFLOW_TRACKING_URI"]
    assert tracking == {
        "name": "MLFLOW_TRACKING_URI",
        "valueFrom": {"secretKeyRef": {"name": "wamfleet-serving", "key": "MLFLOW_TRACKING_URI"}},
    }
    assert container["envFrom"] == [{"secretRef": {"name": "wamfleet-artifacts"}}]


def test_default_tolerations_follow_the_gpu_request() -> None:
    gpu = render_inference_service(KServeTemplate(namespace="n"), "1")["spec"]["predictor"]
    assert gpu["tolerations"] == [GPU_TOLERATION]
    cpu_template = KServeTemplate(namespace="n", resources=ServingResources(gpus=0))
    cpu = render_inference_service(cpu_template, "1")["spec"]["predictor"]
    assert "tolerations" not in cpu
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    args = cpu["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "cpu" and args[args.index("--dtype") + 1] == "fp32"
    assert "--compile" not in args


def test_a_storage_uri_goes_through_the_storage_initializer() -> None:
    template = KServeTemplate(namespace="n", storage_uri_template="s3://policies/{model_name}/{version}")
    obj = render_inference_service(template, "4")
    container = obj["spec"]["predictor"]["containers"][0]
    assert {"name": "STORAGE_URI", "value": "s3://policies/wamfleet-policy/4"} in container["env"]
    assert not any(e["name"] == "MLFLOW_TRACKING_URI" for e in container["env"])
    assert container["args"][:3] == ["serve", "--policy", "/mnt/models"]
    assert obj["metadata"]["annotations"]["wamfleet.io/model-uri"] == "s3://policies/wamfleet-policy/4"
    assert errors(obj) == []


@pytest.mark.parametrize(
    ("model", "version"),
    [
        ("wamfleet-policy", "3"),
        ("wamfleet-policy", "123456789012"),
        ("Wamfleet_Policy", "1.2"),
        ("9lives", "rc/1"),
        ("wam", "--"),
        ("a" * 80, "42"),
        ("policy.with.dots", "v3"),
    ],
)
def test_names_are_dns_1035_labels_and_stay_distinct(model: str, version: str) -> None:
    name = inference_service_name(model, version)
    assert DNS_1035.match(name) and len(name) <= 45, name
    value = label_value(version)
    assert LABEL_VALUE.match(value) and len(value) <= 63


def test_name_edge_cases() -> None:
    assert inference_service_name("wamfleet-policy", "3") == "wamfleet-policy-v3"
    # Sanitising must not merge distinct versions into one InferenceService.
    assert inference_service_name("wam", "1.2") != inference_service_name("wam", "1-2")
    assert dns1035_name("a" * 80) != dns1035_name("a" * 81)
    assert label_value("7") == "7" and label_value("x" * 70) != label_value("x" * 71)
    with pytest.raises(ValueError, match="version"):
        check_version("champion")
    with pytest.raises(ValueError, match="version"):
        KServeBackend("n").render("0")


def test_broken_objects_fail_validation() -> None:
    good = render_inference_service(gpu_template(), "3")
    assert errors(good) == []

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    assert any("minReplicas" in e for e in errors(wrong_type))

    unknown_field = copy.deepcopy(good)
    unknown_field["spec"]["predictor"]["gpus"] = 2  # not where KServe reads GPUs
    assert any("gpus" in e for e in errors(unknown_field))

    bad_quantity = copy.deepcopy(good)
    bad_quantity["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] = "64 gigs"
    assert any("memory" in e for e in errors(bad_quantity))

    no_container_name = copy.deepcopy(good)
    del no_container_name["spec"]["predictor"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in errors(no_container_name))

    too_wide = copy.deepcopy(good)
    too_wide["spec"]["predictor"]["containers"][0]["readinessProbe"]["periodSeconds"] = 2**40
    assert any("int32" in e for e in errors(too_wide))

    bad_name = copy.deepcopy(good)
    bad_name["metadata"]["name"] = "Wamfleet_Policy.3"
    assert any("DNS-1035" in e for e in errors(bad_name))


def _service(
    *, ready: str | None, url: str | None = None, generation: int = 1, observed: int = 1
) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed}
    if url:
        status["url"] = url
    if ready is not None:
        status["conditions"] = [
            {"type": "PredictorReady", "status": ready, "message": "0/1 replicas available"},
            {"type": "Ready", "status": ready, "reason": "" if ready == "True" else "PredictorNotReady"},
        ]
    return {"metadata": {"name": "wamfleet-policy-v3", "generation": generation}, "status": status}


def test_status_gives_readiness_and_url() -> None:
    url = "http://wamfleet-policy-v3-robots.example.com"
    assert inference_service_status({"metadata": {}}).ready is False
    ready = inference_service_status(_service(ready="True", url=url))
    assert ready.ready and ready.url == url and ready.reason == ""
    starting = inference_service_status(_service(ready="False", url=url))
    assert not starting.ready and "PredictorNotReady" in starting.reason
    assert "0/1 replicas available" in starting.reason
    assert not inference_service_status(_service(ready="True", url=url, generation=2, observed=1)).ready
    assert not inference_service_status(_service(ready="True")).ready  # no URL to hand out yet
    internal = _service(ready="True")
    internal["status"]["address"] = {"url": "http://wamfleet-policy-v3-predictor.robots.svc.cluster.local"}
    assert inference_service_status(internal).url == internal["status"]["address"]["url"]
    assert endpoint_url(url, websocket=True) == "ws://wamfleet-policy-v3-robots.example.com"
    assert endpoint_url("https://h.example.com", websocket=True) == "wss://h.example.com"
    assert endpoint_url(url, websocket=False) == url


def test_create_or_patch_decision() -> None:
    desired = render_inference_service(gpu_template(), "3")
    assert plan_apply(None, desired) == "create"
    # What the API server returns: our object with defaults and status filled in.
    served = copy.deepcopy(desired)
    served["metadata"] |= {"generation": 1, "uid": "u-1", "resourceVersion": "42"}
    served["spec"]["predictor"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["optional"] = False
    served["spec"]["predictor"]["deploymentStrategy"] = {"type": "RollingUpdate"}
    served["status"] = _service(ready="True", url="http://x")["status"]
    assert plan_apply(served, desired) == "keep"
    newer = render_inference_service(gpu_template(image="ghcr.io/wamfleet/wamfleet-serve:1.1"), "3")
    assert plan_apply(served, newer) == "patch"
    fewer_gpus = render_inference_service(gpu_template(resources=ServingResources(gpus=1)), "3")
    assert plan_apply(served, fewer_gpus) == "patch"
    deleting = copy.deepcopy(served)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-21T10:00:00Z"
    assert plan_apply(deleting, desired) == "wait"
    foreign = copy.deepcopy(served)
    del foreign["metadata"]["labels"]["app.kubernetes.io/part-of"]
    assert plan_apply(foreign, desired) == "conflict"


def test_the_backend_renders_what_it_was_configured_with() -> None:
    backend = KServeBackend(
        "robots",
        model_name="wamfleet-policy",
        resources=ServingResources(gpus=1, cpu="4", memory="24Gi"),
        node_selector={"pool": "gpu"},
        service_account="sa",
    )
    obj = backend.render("12")
    assert obj["metadata"]["name"] == backend.name("12") == "wamfleet-policy-v12"
    assert obj["spec"]["predictor"]["nodeSelector"] == {"pool": "gpu"}
    assert errors(obj) == []
    backend.close()  # never connected: nothing to release, and no cluster needed
