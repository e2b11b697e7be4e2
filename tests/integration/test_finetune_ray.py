"""Fine-tuning on Ray Train from training shards: a new model, then LoRA from it on two workers.

Shards are built from synthetic episodes through the real steps (snapshot, curate, shards);
the first run trains a new tiny model with one worker; the second resumes from that policy
with LoRA on two data-parallel workers (DDP over gloo) and must come back merged, different
from its parent, with the parent's codec and normalisation statistics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.conftest import MakeMlflowStore, WriteEpisode
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.curate import curate
from wamfleet.pipelines.finetune import FinetuneConfig, finetune
from wamfleet.pipelines.ray_runtime import ensure_ray
from wamfleet.pipelines.shards import ShardIndex, build_shards, fetch_shards
from wamfleet.pipelines.snapshot import freeze_snapshot
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import add_embodiment, add_episode, add_robot
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec
from wamfleet.platform.contracts.curation import CurationRecipe
from wamfleet.platform.contracts.dataset import SnapshotQuery
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.bundles import upload_bundle
from wamfleet.platform.storage.factory import open_object_store

# Ray Train on two workers: a minute and more; `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ensure_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def build_index(settings: Settings, embodiment: EmbodimentSpec, write_episode: WriteEpisode) -> ShardIndex:
    catalog = Catalog(settings.effective_catalog_url)
    store = open_object_store(settings)
    with catalog.session() as session:
        add_embodiment(session, embodiment)
        add_robot(session, "robot-1", embodiment.name, "lab", "")
    for i in range(4):
        directory, manifest = write_episode(frames=64, tags={"layout-seed": str(i)})
        upload_bundle(store, directory)
        with catalog.session() as session:
            add_episode(session, manifest)
    snapshot = freeze_snapshot(catalog, store, SnapshotQuery())
    dataset = curate(
        snapshot, {e.episode_id for e in snapshot.episodes}, settings, CurationRecipe(min_frames=8)
    )
    assert dataset.episodes, dataset.report  # identical synthetic episodes: curation keeps one
    return build_shards(catalog, store, dataset, {embodiment.name: 1}, preset="tiny", seed=0)


@pytest.fixture
def embodiment() -> EmbodimentSpec:
    """Views of one size: the model tiles them into one canvas."""
    cameras = [CameraSpec(name="front", height=32, width=32), CameraSpec(name="wrist", height=32, width=32)]
    return EmbodimentSpec(
        name="test-arm", cameras=cameras, fps=15, state_names=["j0", "j1", "j2"], action_names=["a0", "a1"]
    )


def test_new_model_then_lora_on_two_workers(
    ray_local: None,
    tmp_path: Path,
    embodiment: EmbodimentSpec,
    write_episode: WriteEpisode,
    mlflow_store: MakeMlflowStore,
) -> None:
    torch.set_num_threads(1)
    settings = Settings(data_dir=tmp_path / "data")
    # This test's copy of the migrated empty store, where effective_mlflow_uri points.
    assert mlflow_store(settings.data_dir / "mlflow.db") == settings.effective_mlflow_uri
    index = build_index(settings, embodiment, write_episode)
    train = fetch_shards(open_object_store(settings), index, tmp_path / "check", "train")
    assert len(train) == index.windows("train") > 0
    uri = settings.effective_mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # no global MLflow state in this process
    experiment = client.create_experiment("finetune-test", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)

    first = finetune(
        settings,
        index,
        tmp_path / "v1",
        FinetuneConfig(steps=6, batch_size=4, workers=1),
        mlflow_run_id=run.info.run_id,
        metadata={"version": "v1"},
    )
    assert first.steps == 6 and len(first.losses) == 6 and first.samples_per_s > 0
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 7))
    parent = load_policy(first.policy_dir)
    assert parent.metadata == {"version": "v1"}
    codec = load_file(str(first.policy_dir / "codec.safetensors"))

    second = finetune(
        settings,
        index,
        tmp_path / "v2",
        FinetuneConfig(mode="lora", lora_rank=2, steps=4, batch_size=2, workers=2),
        parent_uri=str(first.policy_dir),
    )
    child = load_policy(second.policy_dir)
    names = set(child.model.state_dict())
    assert not any("lora_" in n for n in names)  # merged before saving
    assert names == set(parent.model.state_dict())
    changed = [
        n for n, w in child.model.state_dict().items() if not torch.equal(w, parent.model.state_dict()[n])
    ]
    assert changed, "LoRA fine-tuning left every weight as it was"
    assert child.embodiments == parent.embodiments == json.loads(json.dumps(index.embodiments))
    for key, value in load_file(str(second.policy_dir / "codec.safetensors")).items():
        assert torch.equal(value, codec[key])  # the shards' latent space, unchanged
