"""KServeBackend against the Kubernetes API's behaviour, through a recording fake CustomObjectsApi.

The fake answers as the API server documents it: 404 for a missing object, 409 for a create
over an existing one, a JSON merge patch that bumps metadata.generation when the spec changes,
deletion that lingers with a deletionTimestamp while finalizers run, and a KServe controller
that reports Ready (with observedGeneration and a URL) a few reads after each change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from wamfleet.platform.rollouts.backends.base import ServingError
from wamfleet.platform.rollouts.backends.kserve import KServeBackend
from wamfleet.platform.rollouts.backends.kserve_manifests import GROUP, PLURAL


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class FakeCustomObjects:
    ready_after_reads: int = 2  # the controller reconciles a change after this many reads
    linger_reads: int = 1  # a deleted object stays (deletionTimestamp) for this many reads
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # verb -> HTTP status to answer once
    _pending: dict[str, int] = field(default_factory=dict)  # name -> reads until reconciled
    _deleting: dict[str, int] = field(default_factory=dict)
    url: str = "http://wam.robots.svc.cluster.local"

    def _call(self, verb: str, name: str, group: str, plural: str) -> None:
        assert (group, plural) == (GROUP, PLURAL)
        self.calls.append((verb, name))
        if verb in self.fail_next:
            raise ApiException(status=self.fail_next.pop(verb))

    def _reconcile(self, name: str) -> None:
        obj = self.objects[name]
        if name in self._deleting:
            self._deleting[name] -= 1
            if self._deleting[name] < 0:
                del self.objects[name], self._deleting[name]
            return
        if self._pending.get(name, 0) > 0:
            self._pending[name] -= 1
            return
        generation = obj["metadata"]["generation"]
        obj["status"] = {
            "observedGeneration": generation,
            "url": self.url,
            "conditions": [{"type": "Ready", "status": "True"}],
        }

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self._call("get", name, group, plural)
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self._reconcile(name)
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[name])

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any:
        name = body["metadata"]["name"]
        self._call("create", name, group, plural)
        if name in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"] |= {"generation": 1, "uid": f"uid-{name}", "namespace": namespace}
        obj["status"] = {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Starting"}]}
        self.objects[name] = obj
        self._pending[name] = self.ready_after_reads
        return copy.deepcopy(obj)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any]
    ) -> Any:
        self._call("patch", name, group, plural)
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        obj = self.objects[name]
        patched = merge_patch(obj, body)
        if patched.get("spec") != obj.get("spec"):
            patched["metadata"]["generation"] = obj["metadata"]["generation"] + 1
            self._pending[name] = self.ready_after_reads
        self.objects[name] = patched
        return copy.deepcopy(patched)

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self._call("delete", name, group, plural)
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self.objects[name]["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
        self._deleting[name] = self.linger_reads
        return {"status": "Success"}

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, label_selector: str = ""
    ) -> Any:
        self._call("list", "*", group, plural)
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        items = [
            copy.deepcopy(o)
            for o in self.objects.values()
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return {"items": items}

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]


@pytest.fixture
def api() -> FakeCustomObjects:
    return FakeCustomObjects()


@pytest.fixture
def backend(api: FakeCustomObjects) -> Iterator[KServeBackend]:
    b = KServeBackend(
        "robots", custom_objects_api=api, poll_interval_s=0.0, ready_timeout_s=5.0, websocket_urls=True
    )
    yield b
    b.close()


def test_ensure_creates_then_waits_for_ready(api: FakeCustomObjects, backend: KServeBackend) -> None:
    endpoint = backend.ensure("3")
    assert endpoint.url == "ws://wam.robots.svc.cluster.local"
    verbs = api.verbs()
    assert verbs[:2] == ["get", "create"]  # 404 first, then create
    assert verbs.count("get") >= 1 + api.ready_after_reads  # it waited for the controller
    assert backend.healthy("3")
    assert backend.endpoints() == {"3": endpoint}


def test_ensure_keeps_an_identical_service_and_patches_a_changed_one(
    api: FakeCustomObjects, backend: KServeBackend
) -> None:
    backend.ensure("3")
    api.calls.clear()
    backend.ensure("3")
    assert "create" not in api.verbs() and "patch" not in api.verbs()  # kept as it is
    changed = KServeBackend("robots", custom_objects_api=api, poll_interval_s=0.0, min_replicas=2)
    api.calls.clear()
    changed.ensure("3")
    assert api.verbs().count("patch") == 1 and "create" not in api.verbs()
    name = backend.name("3")
    assert api.objects[name]["spec"]["predictor"]["minReplicas"] == 2
    assert api.objects[name]["metadata"]["generation"] == 2
    # Ready only once the controller observed generation 2 (it took ready_after_reads reads).
    assert api.objects[name]["status"]["observedGeneration"] == 2


def test_a_409_on_create_means_someone_made_it_meanwhile_so_it_is_patched(
    api: FakeCustomObjects, backend: KServeBackend
) -> None:
    """Another platform replica created it between our read (404) and our create (409)."""
    original = api.create_namespaced_custom_object

    def created_meanwhile(group: str, version: str, namespace: str, plural: str, body: dict[str, Any]) -> Any:
        other = copy.deepcopy(body)
        other["spec"]["predictor"]["minReplicas"] = 3  # theirs differs a little
        original(group, version, namespace, plural, other)
        return original(group, version, namespace, plural, body)  # now a real 409

    api.create_namespaced_custom_object = created_meanwhile  # type: ignore[method-assign]
    endpoint = backend.ensure("4")
    assert endpoint.url.startswith("ws://")
    assert api.verbs()[:4] == ["get", "create", "create", "patch"]
    assert api.objects[backend.name("4")]["spec"]["predictor"]["minReplicas"] == 1  # ours now


def test_a_foreign_object_of_that_name_is_left_alone(api: FakeCustomObjects, backend: KServeBackend) -> None:
    foreign = backend.render("5")
    foreign["metadata"]["labels"] = {"app": "someone-else"}
    foreign["metadata"]["generation"] = 1
    api.objects[backend.name("5")] = foreign
    with pytest.raises(ServingError, match="exists and is not wamfleet's"):
        backend.ensure("5")
    assert "patch" not in api.verbs() and "delete" not in api.verbs()


def test_a_service_being_deleted_is_waited_out_then_created(
    api: FakeCustomObjects, backend: KServeBackend
) -> None:
    backend.ensure("6")
    backend.stop("6")
    assert backend.name("6") in api.objects  # still there, finalizers running
    api.calls.clear()
    backend.ensure("6")
    verbs = api.verbs()
    assert "create" in verbs and verbs.index("create") > 0
    assert backend.healthy("6")


def test_stop_deletes_and_a_missing_service_is_not_an_error(
    api: FakeCustomObjects, backend: KServeBackend
) -> None:
    backend.ensure("7")
    backend.stop("7")
    assert api.verbs()[-1] == "delete"
    backend.stop("404")  # never existed: the API's 404 is swallowed
    api.fail_next["delete"] = 403  # RBAC says no: that is an error the operator must see
    with pytest.raises(ApiException) as info:
        backend.stop("7")
    assert info.value.status == 403


def test_readiness_timeout_and_deletion_while_starting(api: FakeCustomObjects) -> None:
    slow = FakeCustomObjects(ready_after_reads=10_000)
    backend = KServeBackend("robots", custom_objects_api=slow, poll_interval_s=0.0, ready_timeout_s=0.05)
    with pytest.raises(ServingError, match="not ready in"):
        backend.ensure("8")
    assert not backend.healthy("8")
    vanishing = FakeCustomObjects(ready_after_reads=10_000)
    backend = KServeBackend("robots", custom_objects_api=vanishing, poll_interval_s=0.0, ready_timeout_s=5.0)
    original = vanishing.get_namespaced_custom_object
    reads = {"n": 0}

    def get(*args: Any) -> Any:
        reads["n"] += 1
        if reads["n"] == 3:
            vanishing.objects.clear()
        return original(*args)

    vanishing.get_namespaced_custom_object = get  # type: ignore[method-assign,assignment]
    with pytest.raises(ServingError, match="was deleted while starting"):
        backend.ensure("9")


def test_api_errors_other_than_404_and_409_surface(api: FakeCustomObjects, backend: KServeBackend) -> None:
    api.fail_next["get"] = 500
    with pytest.raises(ApiException) as info:
        backend.ensure("10")
    assert info.value.status == 500
    api.fail_next["create"] = 422  # the API refused the object (admission, schema)
    with pytest.raises(ApiException) as info:
        backend.ensure("10")
    assert info.value.status == 422
