"""The Helm chart (charts/wamfleet), linted, rendered and validated offline: no cluster.

Rendering uses helm-python-sdk (Helm's own engine and schema validation). Core objects validate
strictly against the Kubernetes OpenAPI schemas that kubernetes-validate ships; custom resources
(InferenceService, RayCluster, RayJob) against the upstream CRD schemas in ../shared/crds, made as
strict as the API server by the helper of test_kserve_backend.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.test_kserve_backend import FORMATS, _strict
from tests.unit.test_kserve_backend import errors as inference_service_errors
from wamfleet.pipelines.pipeline import CONFIG_ENV, PIPELINE_NAME, SECRET_ENV
from wamfleet.platform.rollouts.backends.kserve_manifests import (
    KServeTemplate,
    ServingResources,
    plan_apply,
    render_inference_service,
)
from wamfleet.platform.rollouts.controller import KServeOptions
from wamfleet.platform.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wamfleet"
CRDS = REPO.parent / "shared" / "crds"
KUBE_VERSION = "1.37.0"  # the newest Kubernetes kubernetes-validate ships schemas for
RELEASE = "wamfleet"
NAMESPACE = "robots"
CUSTOM_GROUPS = ("serving.kserve.io/", "ray.io/")
PROFILES = ("default", "production")

Obj = dict[str, Any]


@cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def profile_values(profile: str) -> dict[str, Any] | None:
    if profile == "default":
        return None
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values-production.yaml").read_text())
    return loaded


def render(values: dict[str, Any] | None) -> list[Obj]:
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@cache
def _rendered(profile: str) -> str:
    return json.dumps(render(profile_values(profile)))


def objects(profile: str) -> list[Obj]:
    """A fresh copy each time (tests may not see each other's changes)."""
    loaded: list[Obj] = json.loads(_rendered(profile))
    return loaded


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = find(objs, kind, name)
    return found


def pod_specs(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """Every pod spec an object makes, named `Kind/name:where`."""
    label = f"{obj['kind']}/{obj['metadata']['name']}"
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "Job"}:
        yield label, spec["template"]["spec"]
    elif kind == "InferenceService":
        yield f"{label}:predictor", spec["predictor"]
    elif kind == "RayCluster":
        yield from ray_cluster_pod_specs(label, spec)
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from ray_cluster_pod_specs(label, spec["rayClusterSpec"])
        yield f"{label}:submitter", spec["submitterPodTemplate"]["spec"]


def ray_cluster_pod_specs(label: str, spec: Obj) -> Iterator[tuple[str, Obj]]:
    yield f"{label}:head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"{label}:{group['groupName']}", group["template"]["spec"]


def containers(pod: Obj) -> list[Obj]:
    found: list[Obj] = pod.get("initContainers", []) + pod["containers"]
    return found


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def decoded(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def platform_container(objs: list[Obj]) -> Obj:
    deployment = one(objs, "Deployment", "wamfleet-platform")
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


# Lint and schema -------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    meta = chart().metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "wamfleet"
    assert meta["appVersion"] == "0.1.0"
    assert meta["kubeVersion"].startswith(">=1.28")
    schema = chart().schema
    assert schema is not None and schema["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_strict_passes(profile: str) -> None:
    report = helm_python.lint(
        CHART, profile_values(profile), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


def test_schema_closes_every_object_and_types_every_value() -> None:
    """additionalProperties on every object, a type (or a $ref / combinator) on every value."""
    schema = chart().schema
    assert schema is not None
    open_maps = {"affinity"}  # Kubernetes affinity is passed through as it is

    def walk(node: Any, where: str) -> Iterator[str]:
        if not isinstance(node, dict):
            return
        typed = any(k in node for k in ("type", "$ref", "allOf", "anyOf", "oneOf", "enum", "const"))
        if not typed:
            yield f"{where}: no type"
        closed = "additionalProperties" in node or where.rsplit(".", 1)[-1] in open_maps
        if node.get("type") == "object" and not closed:
            yield f"{where}: no additionalProperties"
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{where}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{where}[{key}]")

    problems = list(walk(schema, "values"))
    for name, definition in schema["definitions"].items():
        problems += walk(definition, f"definitions.{name}")
    assert problems == []
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"platform": {"replicas": "two"}}, "/platform/replicas"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"platform": {"rolloutBackend": "docker"}}, "/platform/rolloutBackend"),
        ({"platform": {"logLevel": "LOUD"}}, "/platform/logLevel"),
        ({"images": {"serving": {"tag": "latest"}}}, "/images/serving/tag"),
        ({"serving": {"gpus": -1}}, "/serving/gpus"),
        ({"serving": {"cpu": 4}}, "/serving/cpu"),
        ({"serving": {"nodeSelector": {"gpu": True}}}, "/serving/nodeSelector/gpu"),
        (
            {"serving": {"tolerations": [{"key": "gpu", "operator": "Maybe"}]}},
            "/serving/tolerations/0/operator",
        ),
        ({"ray": {"gpuWorkers": {"gpus": 0}}}, "/ray/gpuWorkers/gpus"),
        ({"rayJob": {"cluster": "borrowed"}}, "/rayJob/cluster"),
        ({"platform": {"ingress": {"hosts": [{"host": "x", "paths": [{"path": "/"}]}]}}}, "pathType"),
        ({"postgresql": {"bundled": False}}, "/postgresql/existingSecret"),
        ({"mlflow": {"enabled": False}}, "/mlflow/existingSecret"),
        ({"minio": {"bundled": False}}, "/s3/endpoint"),
        ({"ray": {"enabled": False}}, "/ray/address"),
        ({"networkPolicy": {"robotPeers": [{"ipBlok": {"cidr": "10.0.0.0/8"}}]}}, "ipBlok"),
        ({"platform": {"dashboard": {"anonymousRead": "yes"}}}, "/platform/dashboard/anonymousRead"),
        (
            {"platform": {"dashboard": {"mlflowUiUrl": "javascript:alert(1)"}}},
            "/platform/dashboard/mlflowUiUrl",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(named)):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"s3": {"existingSecret": "fleet-s3"}},
            "pipelines.settingsSecret.create: the chart cannot copy credentials it does not own "
            "(s3.existingSecret)",
        ),
        (
            {
                "mlflow": {"enabled": False, "existingSecret": "mlflow"},
                "pipelines": {"settingsSecret": {"create": False}},
            },
            "serving.createMlflowSecret",
        ),
        (
            {"ray": {"gpuWorkers": {"replicas": 5, "maxReplicas": 2}}},
            "ray.gpuWorkers: replicas 5 must lie within minReplicas 0 and maxReplicas 2",
        ),
        (
            {
                "rayJob": {"enabled": True, "cluster": "shared"},
                "ray": {"enabled": False, "address": "ray://x:10001"},
            },
            "rayJob.cluster=shared",
        ),
        ({"serving": {"initialVersion": {"enabled": True, "version": "1" * 40}}}, "serving.initialVersion"),
    ],
)
def test_inconsistent_values_fail_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


# Validation of every object --------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_core_objects_validate_strictly(profile: str) -> None:
    core = [o for o in objects(profile) if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert len(core) >= 20
    for obj in core:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.absolute_path))
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


@cache
def crd_validator(file: str, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((CRDS / file).read_text(), Loader=yaml.CSafeLoader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(served["schema"]["openAPIV3Schema"]), format_checker=FORMATS)


RAY_CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


@pytest.mark.parametrize("profile", PROFILES)
def test_custom_resources_validate_against_the_upstream_crds(profile: str) -> None:
    custom = [o for o in objects(profile) if o["apiVersion"].startswith(CUSTOM_GROUPS)]
    kinds = sorted(o["kind"] for o in custom)
    assert kinds == (["RayCluster"] if profile == "default" else ["InferenceService", "RayCluster", "RayJob"])
    for obj in custom:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "InferenceService":
            assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
            found = inference_service_errors(obj)
        else:
            assert obj["apiVersion"] == "ray.io/v1"
            validator = crd_validator(RAY_CRDS[obj["kind"]], "v1")
            found = [
                f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
            ]
        assert found == [], f"{name}: {found}"


# What the platform reads -----------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_kserve_template_is_exactly_kserve_options(profile: str) -> None:
    objs = objects(profile)
    config = one(objs, "ConfigMap", "wamfleet-kserve-template")
    text = config["data"]["kserve.json"]
    assert set(json.loads(text)) == set(KServeOptions.model_fields)
    options = KServeOptions.model_validate_json(text)
    platform = one(objs, "Deployment", "wamfleet-platform")
    (container,) = platform["spec"]["template"]["spec"]["containers"]
    path = Path(env_of(container)["WAMFLEET_KSERVE_TEMPLATE_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in platform["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "wamfleet-kserve-template" and path.name in config["data"]
    assert options.service_account == "wamfleet-serving"
    assert find(objs, "ServiceAccount", "wamfleet-serving")
    if profile == "production":
        assert options.gpus == 1 and options.cpu == "8" and options.memory == "64Gi"
        assert options.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert options.tolerations is not None and len(options.tolerations) == 2
        assert (options.min_replicas, options.max_replicas) == (1, 4)
    else:
        assert options == KServeOptions(service_account="wamfleet-serving")


def test_initial_inference_service_is_the_one_the_platform_would_render() -> None:
    """The platform adopts it (plan `keep`): same name, labels, annotations and predictor."""
    objs = objects("production")
    (chart_is,) = find(objs, "InferenceService")
    template_json = one(objs, "ConfigMap", "wamfleet-kserve-template")["data"]["kserve.json"]
    options = KServeOptions.model_validate_json(template_json)
    env = env_of(platform_container(objs))
    template = KServeTemplate(
        namespace=env["WAMFLEET_KSERVE_NAMESPACE"]["value"],
        model_name=env["WAMFLEET_REGISTERED_MODEL"]["value"],
        image=env["WAMFLEET_SERVING_IMAGE"]["value"],
        **options.template_fields(),
    )
    platform_is = render_inference_service(template, "1")
    assert chart_is["metadata"]["name"] == platform_is["metadata"]["name"] == "wamfleet-policy-v1"
    assert plan_apply(chart_is, platform_is) == "keep"
    assert chart_is["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = chart_is["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["image"] == "ghcr.io/wamfleet/wamfleet-serving:0.1.0"
    args = container["args"]
    assert args[:3] == ["serve", "--policy", "models:/wamfleet-policy/1"]
    expected = [
        ("--port", "8080"),
        ("--version", "wamfleet-policy/1"),
        ("--device", "cuda"),
        ("--dtype", "bf16"),
    ]
    for flag, value in expected:
        assert args[args.index(flag) + 1] == value
    assert "--compile" in args
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/wam/ready"
    assert predictor["nodeSelector"] and predictor["tolerations"]
    tracking = env_of(container)["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]
    assert tracking == {"name": "wamfleet-serving", "key": "MLFLOW_TRACKING_URI"}
    serving_secret = one(objs, "Secret", "wamfleet-serving")
    assert set(serving_secret["data"]) == {"MLFLOW_TRACKING_URI"}


@pytest.mark.parametrize("profile", PROFILES)
def test_platform_environment_is_valid_settings(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = objects(profile)
    deployment = one(objs, "Deployment", "wamfleet-platform")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["wamfleet"] and container["args"] == ["platform", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8600, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(container)
    known = {f"WAMFLEET_{name.upper()}" for name in Settings.model_fields} | {"WAMFLEET_PIPELINE_IMAGE"}
    assert {n for n in env if n.startswith("WAMFLEET_")} <= known
    secret_refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert set(secret_refs) == {
        "WAMFLEET_CATALOG_URL",
        "WAMFLEET_S3_ACCESS_KEY",
        "WAMFLEET_S3_SECRET_KEY",
        "WAMFLEET_ADMIN_TOKEN",
        "WAMFLEET_MLFLOW_TRACKING_URI",
    }
    rendered_secrets = {s["metadata"]["name"]: s for s in find(objs, "Secret")}
    for name, ref in secret_refs.items():
        if profile == "default":  # every credential is the chart's own
            assert ref["key"] in rendered_secrets[ref["name"]]["data"], name
        elif name != "WAMFLEET_MLFLOW_TRACKING_URI":  # operator-made Secrets
            assert ref["name"] not in rendered_secrets, name
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    settings = Settings()
    assert settings.storage_backend == "s3" and settings.rollout_backend == "kserve"
    assert settings.kserve_namespace == NAMESPACE
    assert settings.serving_image == "ghcr.io/wamfleet/wamfleet-serving:0.1.0"
    assert settings.api_host == "0.0.0.0" and settings.api_port == 8600
    # Off in every profile: on 0.0.0.0, anonymous reading hands out every episode's signed URLs.
    assert not settings.dashboard_anonymous_read
    assert settings.kfp_host == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert env["WAMFLEET_PIPELINE_IMAGE"]["value"] == "ghcr.io/wamfleet/wamfleet-pipeline:0.1.0"
    # The data dir is an emptyDir (the root filesystem is read-only).
    (data_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.data_dir)]
    (data_volume,) = [v for v in pod["volumes"] if v["name"] == data_mount["name"]]
    assert "emptyDir" in data_volume
    # Ray: the KubeRay head Service of the chart's RayCluster, Ray client port.
    ray_cluster = one(objs, "RayCluster")["metadata"]["name"]
    assert settings.ray_address == f"ray://{ray_cluster}-head-svc.{NAMESPACE}.svc.cluster.local:10001"
    if profile == "production":
        assert settings.s3_endpoint == "s3.fleet.example.com" and settings.s3_secure
        assert settings.mlflow_ui_url == "https://mlflow.fleet.example.com"
        assert secret_refs["WAMFLEET_CATALOG_URL"] == {"name": "wamfleet-database", "key": "catalog-url"}
        assert "replicas" not in deployment["spec"]  # the HorizontalPodAutoscaler owns it
        hpa = one(objs, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == "wamfleet-platform"
        assert one(objs, "Ingress")["spec"]["rules"][0]["host"] == "wamfleet.fleet.example.com"
    else:
        assert settings.s3_endpoint == f"wamfleet-minio.{NAMESPACE}.svc.cluster.local:9000"
        assert not find(objs, "HorizontalPodAutoscaler") and not find(objs, "Ingress")
        assert "WAMFLEET_MLFLOW_UI_URL" not in env


@pytest.mark.parametrize("profile", PROFILES)
def test_pipeline_secret_and_config_map_hold_exactly_what_the_steps_read(profile: str) -> None:
    objs = objects(profile)
    config = one(objs, "ConfigMap", "wamfleet-pipelines")
    assert config["metadata"]["namespace"] == "kubeflow"
    assert set(config["data"]) == set(CONFIG_ENV)
    assert config["data"]["WAMFLEET_RAY_ADDRESS"].startswith("ray://wamfleet-ray-head-svc.")
    secrets = find(objs, "Secret", "wamfleet-pipelines")
    if profile == "production":
        assert secrets == []  # external credentials: the operator creates it (docs)
        return
    (secret,) = secrets
    assert secret["metadata"]["namespace"] == "kubeflow"
    assert set(secret["data"]) == set(SECRET_ENV)
    values = decoded(secret)
    database = decoded(one(objs, "Secret", "wamfleet-postgresql"))
    s3 = decoded(one(objs, "Secret", "wamfleet-s3"))
    assert values["WAMFLEET_CATALOG_URL"] == database["catalog-url"]
    assert values["WAMFLEET_CATALOG_URL"].startswith("postgresql+psycopg://wamfleet:")
    assert database["password"] in database["catalog-url"] and database["password"] in database["mlflow-url"]
    assert values["WAMFLEET_S3_ACCESS_KEY"] == s3["access-key"]
    assert values["WAMFLEET_S3_SECRET_KEY"] == s3["secret-key"]
    mlflow_url = f"http://wamfleet-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert values["WAMFLEET_MLFLOW_TRACKING_URI"] == mlflow_url


def test_pipeline_upload_hook_compiles_and_uploads_continuous_finetune() -> None:
    objs = objects("default")
    job = one(objs, "Job", "wamfleet-pipeline-upload")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/wamfleet/wamfleet-pipeline:0.1.0"
    script = container["command"][-1]
    assert "wamfleet pipelines compile --out /tmp/p.yaml" in script
    code = script.split("exec python -c '", 1)[1].rsplit("'", 1)[0]
    compile(code, "upload", "exec")  # the Python the Job runs is at least valid
    assert f'name = "{PIPELINE_NAME}"' in code and "upload_pipeline_version" in code
    assert env_of(container)["KFP_HOST"]["value"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    bucket_job = one(objs, "Job", "wamfleet-minio-bucket")
    compile(bucket_job["spec"]["template"]["spec"]["containers"][0]["command"][-1], "bucket", "exec")


# Bundled stores and MLflow ---------------------------------------------------------------------


def test_bundled_postgresql_and_minio_are_single_replica_stateful_sets() -> None:
    objs = objects("default")
    for name, port in [("wamfleet-postgresql", 5432), ("wamfleet-minio", 9000)]:
        sts = one(objs, "StatefulSet", name)
        assert sts["spec"]["replicas"] == 1
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert one(objs, "Service", name)["spec"]["ports"][0]["port"] == port
    production = objects("production")
    assert not find(production, "StatefulSet")


@pytest.mark.parametrize("profile", PROFILES)
def test_mlflow_server_stores_runs_in_postgresql_and_artifacts_in_s3(profile: str) -> None:
    objs = objects(profile)
    deployment = one(objs, "Deployment", "wamfleet-mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    image = container["image"]
    assert image.startswith("ghcr.io/mlflow/mlflow:v") and not image.endswith(":latest")
    args = container["command"] + container["args"]
    bucket = "wamfleet" if profile == "default" else "wamfleet-fleet"
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    for flag, value in [
        ("--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)"),
        ("--artifacts-destination", f"s3://{bucket}/mlflow"),
        ("--host", "0.0.0.0"),
        ("--port", "5000"),
    ]:
        assert args[args.index(flag) + 1] == value
    env = env_of(container)
    for name in ("MLFLOW_BACKEND_STORE_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    endpoint = "https://s3.fleet.example.com" if profile == "production" else "http://wamfleet-minio."
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"].startswith(endpoint)
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert f"wamfleet-mlflow.{NAMESPACE}.svc.cluster.local:5000" in hosts
    assert one(objs, "Service", "wamfleet-mlflow")["spec"]["ports"][0]["port"] == 5000


# Ray -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_ray_cluster_has_a_cpu_head_and_a_gpu_worker_group(profile: str) -> None:
    objs = objects(profile)
    clusters = [one(objs, "RayCluster")["spec"]]
    if profile == "production":
        job = one(objs, "RayJob")["spec"]
        assert job["entrypoint"] == "wamfleet retrain" and job["shutdownAfterJobFinishes"] is True
        clusters.append(job["rayClusterSpec"])
    for spec in clusters:
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
        assert head["image"] == "ghcr.io/wamfleet/wamfleet-pipeline:0.1.0"
        assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}
        (group,) = spec["workerGroupSpecs"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker_pod = group["template"]["spec"]
        assert worker_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        if profile == "production":
            assert worker_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert "WAMFLEET_CATALOG_URL" in env_of(worker_pod["containers"][0])


# Security --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(profile: str) -> None:
    specs = [spec for obj in objects(profile) for spec in pod_specs(obj)]
    # default: platform, mlflow, 2 stores, 2 jobs, Ray head and workers; production: no stores, one
    # job, the InferenceService, the RayJob's head, workers and submitter.
    assert len(specs) == {"default": 8, "production": 9}[profile]
    for where, pod in specs:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(pod):
            c = container["securityContext"]
            assert c["runAsNonRoot"] is True and c["readOnlyRootFilesystem"] is True, where
            assert c["allowPrivilegeEscalation"] is False and c["capabilities"]["drop"] == ["ALL"], where
            assert c["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container.get("resources"), where
    for cluster in [one(objects(profile), "RayCluster")["spec"]]:
        assert cluster["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True


PINNED = re.compile(r"[^:@]+(:\d+)?/[^:@]+:[A-Za-z0-9_][A-Za-z0-9_.-]*")


@pytest.mark.parametrize("profile", PROFILES)
def test_images_are_pinned(profile: str) -> None:
    for obj in objects(profile):
        for where, pod in pod_specs(obj):
            for container in containers(pod):
                image = container["image"]
                assert PINNED.fullmatch(image), (where, image)
                assert not image.endswith(":latest"), where


SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN$|ACCESS_KEY|CATALOG_URL|TRACKING_URI|BACKEND_STORE_URI")


@pytest.mark.parametrize("profile", PROFILES)
def test_credentials_only_through_secrets(profile: str) -> None:
    objs = objects(profile)
    secret_values = {value for secret in find(objs, "Secret") for value in decoded(secret).values()}
    assert all(len(v) >= 8 for v in secret_values)
    plain: list[tuple[str, str]] = []
    for config in find(objs, "ConfigMap"):
        plain += [(f"ConfigMap/{config['metadata']['name']}", v) for v in config["data"].values()]
    for obj in objs:
        for where, pod in pod_specs(obj):
            for container in containers(pod):
                plain += [(where, a) for a in container.get("command", []) + container.get("args", [])]
                for entry in container.get("env", []):
                    if SENSITIVE.search(entry["name"]):
                        assert "secretKeyRef" in entry.get("valueFrom", {}), (where, entry["name"])
                    if "value" in entry:
                        plain.append((f"{where}:{entry['name']}", entry["value"]))
    leaks = [(where, secret[:4] + "…") for where, text in plain for secret in secret_values if secret in text]
    assert leaks == []
    if profile == "production":  # operator-made Secrets; the chart renders only the two tracking URIs
        rendered = sorted(s["metadata"]["name"] for s in find(objs, "Secret"))
        assert rendered == ["wamfleet-mlflow", "wamfleet-serving"]


@pytest.mark.parametrize("profile", PROFILES)
def test_platform_role_grants_only_inference_services(profile: str) -> None:
    objs = objects(profile)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    role = one(objs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ]
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    platform_pod = one(objs, "Deployment", "wamfleet-platform")["spec"]["template"]["spec"]
    platform_sa = platform_pod["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": platform_sa, "namespace": NAMESPACE}]
    # No other pod gets an API token from a chart-made ServiceAccount.
    accounts = {a["metadata"]["name"]: a for a in find(objs, "ServiceAccount")}
    assert accounts[platform_sa]["automountServiceAccountToken"] is True
    for name, account in accounts.items():
        assert account["automountServiceAccountToken"] is (name == platform_sa), name
    for obj in objs:
        for where, pod in pod_specs(obj):
            pod_account = pod.get("serviceAccountName")
            if pod_account is not None and pod_account != platform_sa:
                assert pod_account in accounts, where
                assert pod.get("automountServiceAccountToken", False) is False, where


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


def pod_labels(obj: Obj) -> Iterator[tuple[str, dict[str, str]]]:
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "Job"}:
        yield obj["metadata"]["name"], spec["template"]["metadata"]["labels"]
    elif kind == "RayCluster":
        yield (
            f"{obj['metadata']['name']}-head",
            spec["headGroupSpec"]["template"]["metadata"]["labels"] | {"ray.io/node-type": "head"},
        )
    elif kind == "InferenceService":
        yield obj["metadata"]["name"], spec["predictor"]["labels"]


@pytest.mark.parametrize("profile", PROFILES)
def test_network_policies_deny_by_default_and_allow_what_each_needs(profile: str) -> None:
    objs = objects(profile)
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objs, "NetworkPolicy")}
    deny = policies["wamfleet-default-deny"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    pods = dict(label for obj in objs for label in pod_labels(obj))
    for name, labels in pods.items():  # every release pod falls under the default deny
        if labels.get("app.kubernetes.io/managed-by") != "wamfleet-platform":
            assert selects(deny["podSelector"], labels), name

    def sources(policy: str, port: int) -> list[Obj]:
        ingress = policies[policy]["ingress"]
        rules = [r for r in ingress if any(p.get("port") == port for p in r.get("ports", []))]
        return [peer for rule in rules for peer in rule.get("from", [{"anywhere": True}])]

    def allowed(policy: str, port: int, labels: dict[str, str]) -> bool:
        return any(
            peer.get("anywhere") or ("namespaceSelector" not in peer and selects(peer["podSelector"], labels))
            for peer in sources(policy, port)
        )

    platform = pods["wamfleet-platform"]
    mlflow = pods["wamfleet-mlflow"]
    ray = pods["wamfleet-ray-head"]
    assert sources("wamfleet-platform", 8600) == [{"anywhere": True}]  # robots, from anywhere
    assert allowed("wamfleet-mlflow", 5000, platform) and allowed("wamfleet-mlflow", 5000, ray)
    outsider = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "minio"}
    assert not allowed("wamfleet-mlflow", 5000, outsider)
    assert allowed("wamfleet-ray-head", 10001, platform) and not allowed("wamfleet-ray-head", 10001, mlflow)
    (pipeline_steps,) = [p for p in sources("wamfleet-mlflow", 5000) if "namespaceSelector" in p]
    assert pipeline_steps["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubeflow"}
    if profile == "default":
        assert allowed("wamfleet-postgresql", 5432, platform) and allowed("wamfleet-postgresql", 5432, mlflow)
        assert not allowed("wamfleet-postgresql", 5432, pods["wamfleet-minio"])
        assert {"anywhere": True} in sources("wamfleet-minio", 9000)  # robots' presigned URLs
    else:
        assert "wamfleet-postgresql" not in policies and "wamfleet-minio" not in policies
        serving = pods["wamfleet-policy-v1"]
        assert selects(policies["wamfleet-policy-servers"]["podSelector"], serving)
        assert allowed("wamfleet-mlflow", 5000, serving)
    for name, policy in policies.items():  # no policy selects nothing
        if name != "wamfleet-policy-servers" or profile == "production":
            assert any(selects(policy["podSelector"], labels) for labels in pods.values()), name


VARIANT: dict[str, Any] = {
    "imagePullSecrets": ["regcred"],
    "platform": {"rolloutBackend": "local", "ingress": {"enabled": True, "tls": []}},
    "s3": {"region": "us-east-1"},
    "minio": {"service": {"type": "LoadBalancer"}},
    "mlflow": {"enabled": False, "existingSecret": "team-mlflow"},
    "serving": {
        "gpus": 0,
        "createMlflowSecret": False,
        "serviceAccount": {"create": False, "name": ""},
        "envFromSecrets": ["artifact-store"],
        "storageUriTemplate": "s3://policies/{model_name}/{version}",
        "initialVersion": {"enabled": True, "version": "7"},
    },
    "ray": {"autoscaling": {"enabled": False}},
    "rayJob": {"enabled": True, "cluster": "shared"},
    "pipelines": {"namespace": "", "kfpAuth": "serviceAccountToken", "settingsSecret": {"create": False}},
    "networkPolicy": {"robotPeers": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "minioFromRobots": False},
}


def test_other_options_render_valid_objects() -> None:
    """A CPU predictor from S3, an external MLflow, a RayJob on the shared cluster, multi-user KFP."""
    objs = render(VARIANT)
    for obj in objs:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            file = RAY_CRDS.get(obj["kind"])
            found = (
                inference_service_errors(obj)
                if file is None
                else [e.message for e in crd_validator(file, "v1").iter_errors(obj)]
            )
            assert found == [], (obj["kind"], found)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    options = KServeOptions.model_validate_json(
        one(objs, "ConfigMap", "wamfleet-kserve-template")["data"]["kserve.json"]
    )
    assert options.service_account is None and options.gpus == 0
    (chart_is,) = find(objs, "InferenceService")
    template = KServeTemplate(
        namespace=NAMESPACE,
        image="ghcr.io/wamfleet/wamfleet-serving:0.1.0",
        storage_uri_template=options.storage_uri_template,
        resources=ServingResources(gpus=0, cpu=options.cpu, memory=options.memory),
        env_from_secrets=options.env_from_secrets,
    )
    assert plan_apply(chart_is, render_inference_service(template, "7")) == "keep"
    predictor_env = env_of(chart_is["spec"]["predictor"]["containers"][0])
    assert predictor_env["STORAGE_URI"]["value"] == "s3://policies/wamfleet-policy/7"
    job = one(objs, "RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": "wamfleet-ray"} and "rayClusterSpec" not in job
    assert one(objs, "ConfigMap", "wamfleet-pipelines")["metadata"]["namespace"] == NAMESPACE
    tracking = env_of(platform_container(objs))["WAMFLEET_MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]
    assert tracking == {"name": "team-mlflow", "key": "tracking-uri"}
    assert not find(objs, "Deployment", "wamfleet-mlflow") and not find(objs, "Secret", "wamfleet-serving")
    upload = one(objs, "Job", "wamfleet-pipeline-upload")["spec"]["template"]["spec"]
    assert any(v["name"] == "kfp-token" for v in upload["volumes"])
    policy = one(objs, "NetworkPolicy", "wamfleet-platform")["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    minio_rules = one(objs, "NetworkPolicy", "wamfleet-minio")["spec"]["ingress"]
    assert all("from" in rule for rule in minio_rules)  # robots no longer reach MinIO
