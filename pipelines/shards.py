"""Training shards: video latents and instruction embeddings encoded once, stored as safetensors.

Decoding H.264 and running the VAE costs more than a tiny model's training step, and the
result only depends on the dataset and the codec. So this step encodes every training window
of a curated dataset with the codec training will use (the parent policy's, or a new one
whose latent statistics are fitted here) and writes shards to the object store:

    datasets/<snapshot>/shards/<dataset[:16]>-<codec[:12]>/
        index.json            ShardIndex: config, codec sha256, embodiments + norm stats, files
        codec.safetensors     the codec the latents were made with
        text.safetensors      one embedding per task instruction
        train-00000.safetensors, holdout-00000.safetensors, ...

Fine-tuning then reads tensors only: no video decoding, no text encoder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import Tensor

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer, dim_mask
from wamfleet.model.objective import WAMBatch
from wamfleet.model.policy import load_policy
from wamfleet.model.text import TextEncoder
from wamfleet.model.vae import VideoCodec
from wamfleet.pipelines.train_local import LATENT_STATS_CLIPS, embodiment_entry
from wamfleet.pipelines.windows import WindowSample, episode_windows
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import get_embodiment
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.curation import CuratedDataset, CuratedEpisode
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.storage.base import ObjectStore
from wamfleet.platform.storage.bundles import download_bundle

SHARD_FORMAT = 1
INDEX_FILE = "index.json"
CODEC_FILE = "codec.safetensors"
TEXT_FILE = "text.safetensors"
Split = Literal["train", "holdout"]


class ShardError(ValueError):
    pass


class ShardFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    split: Split
    windows: int
    sha256: str


class ShardIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = SHARD_FORMAT
    prefix: str
    dataset_hash: str
    snapshot_hash: str
    config: dict[str, Any]
    codec_sha256: str
    parent: str | None
    embodiments: dict[str, dict[str, Any]]
    tasks: list[str]
    files: list[ShardFile]
    skipped: dict[str, str]  # episode id -> why no window came from it

    def windows(self, split: Split) -> int:
        return sum(f.windows for f in self.files if f.split == split)

    @property
    def key(self) -> str:
        return self.prefix + INDEX_FILE


def shards_prefix(dataset: CuratedDataset, codec_sha256: str) -> str:
    return f"datasets/{dataset.snapshot_hash}/shards/{dataset.dataset_hash[:16]}-{codec_sha256[:12]}/"


def _specs(catalog: Catalog, dataset: CuratedDataset, versions: dict[str, int]) -> dict[str, EmbodimentSpec]:
    specs = {}
    with catalog.session() as session:
        for name in sorted({e.embodiment for e in dataset.episodes}):
            spec = get_embodiment(session, name, versions.get(name))
            if spec is None:
                raise ShardError(f"embodiment {name!r}: not registered in the catalog")
            sizes = {(c.height, c.width) for c in spec.cameras}
            if len(sizes) > 1:
                raise ShardError(
                    f"embodiment {name!r}: cameras have different sizes {sorted(sizes)}; the model tiles "
                    "views of one size (record them at one size)"
                )
            specs[name] = spec
    return specs


@dataclass
class _Codebook:
    cfg: WAMConfig
    codec: VideoCodec
    norms: dict[str, tuple[QuantileNormalizer, QuantileNormalizer | None]]


def _from_parent(parent_dir: Path, specs: dict[str, EmbodimentSpec]) -> _Codebook:
    policy = load_policy(parent_dir)
    norms = {}
    for name in specs:
        entry = policy.embodiments.get(name)
        if entry is None:
            raise ShardError(
                f"embodiment {name!r}: the parent policy has no head for it "
                f"(known: {sorted(policy.embodiments)}); retrain without a parent to add an embodiment"
            )
        action = QuantileNormalizer.from_dict(entry["action_norm"]) if entry.get("action_norm") else None
        norms[name] = (QuantileNormalizer.from_dict(entry["state_norm"]), action)
    return _Codebook(policy.config, policy.codec, norms)


def _fresh(
    preset: str,
    specs: dict[str, EmbodimentSpec],
    readers: dict[str, EpisodeReader],
    train: list[CuratedEpisode],
) -> _Codebook:
    cameras = [c.name for c in next(iter(specs.values())).cameras]
    cfg = WAMConfig.preset_named(
        preset,
        cameras=cameras,
        embodiments=[
            {"name": s.name, "state_dim": s.state_dim, "action_dim": s.action_dim} for s in specs.values()
        ],
    )
    codec = VideoCodec(cfg).eval()
    norms: dict[str, tuple[QuantileNormalizer, QuantileNormalizer | None]] = {}
    for name in specs:
        own = [readers[e.episode_id] for e in train if e.embodiment == name and e.episode_id in readers]
        if not own:
            raise ShardError(f"embodiment {name!r}: no training episode to fit normalisation statistics on")
        states = QuantileNormalizer.fit(np.concatenate([r.states() for r in own]))
        acted = [a for r in own if (a := r.actions()) is not None]
        norms[name] = (states, QuantileNormalizer.fit(np.concatenate(acted)) if acted else None)
    clips = []
    for episode in train[:LATENT_STATS_CLIPS]:
        reader = readers.get(episode.episode_id)
        if reader is None:
            continue
        n = min(episode.stop - episode.start, 1 + 4 * 4)
        frames = reader.frames(episode.start, episode.start + n - (n - 1) % 4, cfg.cameras)
        clips.append(torch.from_numpy(np.stack([frames[c] for c in cfg.cameras], axis=1))[None])
    with torch.no_grad():
        codec.fit_latent_stats(clips)
    return _Codebook(cfg, codec, norms)


def _write_shard(windows: list[WindowSample], tasks: list[str], embodiments: list[str], path: Path) -> None:
    tensors = {
        "cond": torch.stack([w.cond for w in windows]).contiguous(),
        "video": torch.stack([w.video for w in windows]).contiguous(),
        "actions": torch.stack([w.actions for w in windows]).contiguous(),
        "states": torch.stack([w.states for w in windows]).contiguous(),
        "action_dim": torch.tensor([w.action_dim for w in windows]),
        "state_dim": torch.tensor([w.state_dim for w in windows]),
        "has_actions": torch.tensor([w.has_actions for w in windows], dtype=torch.uint8),
        "task": torch.tensor([tasks.index(w.task) for w in windows]),
        "embodiment": torch.tensor([embodiments.index(w.embodiment) for w in windows]),
    }
    for name in ("first_frame_channels", "image"):  # Wan I2V conditioning, when the model has it
        values = [getattr(w, name) for w in windows]
        if all(v is not None for v in values):
            tensors[name] = torch.stack(values).contiguous()
    save_file(tensors, str(path))


@contextmanager
def _open_bundles(
    store: ObjectStore, dataset: CuratedDataset, root: Path, on_episode: Callable[[int, int], None] | None
) -> Iterator[dict[str, EpisodeReader]]:
    """Downloads every episode's bundle under `root` (the first half of the progress) and keeps
    its reader open while the shards are built."""
    readers: dict[str, EpisodeReader] = {}
    total = len(dataset.episodes)
    try:
        for i, episode in enumerate(dataset.episodes):
            directory = root / "bundles" / episode.episode_id
            download_bundle(store, episode.robot_id, episode.episode_id, directory)
            readers[episode.episode_id] = EpisodeReader(directory, verify=False)
            if on_episode is not None:
                on_episode(i + 1, 2 * total)
        yield readers
    finally:
        for reader in readers.values():
            reader.close()


def _codebook(
    dataset: CuratedDataset,
    specs: dict[str, EmbodimentSpec],
    readers: dict[str, EpisodeReader],
    parent_dir: Path | None,
    preset: str,
) -> _Codebook:
    """The parent policy's codec and statistics, or fresh ones fitted on the training episodes."""
    if parent_dir is not None:
        return _from_parent(parent_dir, specs)
    return _fresh(preset, specs, readers, [e for e in dataset.episodes if e.split == "train"])


def _save_codec(codec: VideoCodec, root: Path) -> str:
    """Writes the codec's weights; their sha256 names the shards (same data, same codec: reused)."""
    state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    save_file(state, str(root / CODEC_FILE))
    return sha256_file(root / CODEC_FILE)


@dataclass
class _ShardWriter:
    """Collects each split's windows and writes them out as a shard file once enough are pending."""

    root: Path
    tasks: list[str]
    embodiments: list[str]
    windows_per_shard: int
    files: list[ShardFile] = field(default_factory=list)
    pending: dict[Split, list[WindowSample]] = field(default_factory=lambda: {"train": [], "holdout": []})

    def add(self, split: Split, windows: list[WindowSample]) -> None:
        self.pending[split].extend(windows)
        if len(self.pending[split]) >= self.windows_per_shard:
            self.flush(split)

    def flush(self, split: Split) -> None:
        if not self.pending[split]:
            return
        name = f"{split}-{sum(f.split == split for f in self.files):05d}.safetensors"
        _write_shard(self.pending[split], self.tasks, self.embodiments, self.root / name)
        self.files.append(
            ShardFile(
                name=name, split=split, windows=len(self.pending[split]), sha256=sha256_file(self.root / name)
            )
        )
        self.pending[split] = []


def _encode_episodes(
    dataset: CuratedDataset,
    readers: dict[str, EpisodeReader],
    book: _Codebook,
    shards: _ShardWriter,
    on_episode: Callable[[int, int], None] | None,
) -> dict[str, str]:
    """Every episode's training windows into the shards (the second half of the progress);
    returns the episodes that gave none, with why."""
    skipped: dict[str, str] = {}
    total = len(dataset.episodes)
    for i, episode in enumerate(dataset.episodes):
        reader = readers[episode.episode_id]
        missing = [c for c in book.cfg.cameras if c not in reader.cameras]
        if missing:
            skipped[episode.episode_id] = f"cameras {missing} missing"
            continue
        state_norm, action_norm = book.norms[episode.embodiment]
        windows = episode_windows(
            reader, book.codec, book.cfg, episode.embodiment, state_norm, action_norm,
            start=episode.start, stop=episode.stop,
            failed_episodes=dataset.recipe.failed_episodes,
        )  # fmt: skip
        if not windows:
            skipped[episode.episode_id] = "shorter than one training window"
        shards.add(episode.split, windows)
        if on_episode is not None:
            on_episode(total + i + 1, 2 * total)
    shards.flush("train")
    shards.flush("holdout")
    return skipped


def _save_text(cfg: WAMConfig, tasks: list[str], root: Path) -> None:
    """One embedding per instruction, so fine-tuning needs no text encoder."""
    emb, mask = TextEncoder(cfg.text).encode(tasks)
    save_file({"embedding": emb.contiguous(), "mask": mask.contiguous()}, str(root / TEXT_FILE))


def _publish(store: ObjectStore, index: ShardIndex, root: Path) -> None:
    """Uploads codec, text and shard files, then the index last: the commit marker."""
    for name in [CODEC_FILE, TEXT_FILE, *(f.name for f in index.files)]:
        store.put_file(index.prefix + name, root / name)
    store.put_bytes(index.key, index.model_dump_json(indent=1).encode())


def build_shards(
    catalog: Catalog,
    store: ObjectStore,
    dataset: CuratedDataset,
    embodiment_versions: dict[str, int],
    *,
    parent_dir: Path | None = None,
    parent: str | None = None,
    preset: str = "tiny",
    seed: int = 0,
    windows_per_shard: int = 256,
    on_episode: Callable[[int, int], None] | None = None,
) -> ShardIndex:
    """Encodes every window of the dataset; returns the stored index (reused when it exists)."""
    if not dataset.episodes:
        raise ShardError(f"dataset {dataset.dataset_hash}: curation kept no episode")
    torch.manual_seed(seed)
    specs = _specs(catalog, dataset, embodiment_versions)
    tasks, names = sorted({e.task for e in dataset.episodes}), sorted(specs)
    with tempfile.TemporaryDirectory(prefix="wamfleet-shards-") as tmp:
        root = Path(tmp)
        with _open_bundles(store, dataset, root, on_episode) as readers:
            book = _codebook(dataset, specs, readers, parent_dir, preset)
            codec_sha = _save_codec(book.codec, root)
            prefix = shards_prefix(dataset, codec_sha)
            if store.exists(prefix + INDEX_FILE):
                return ShardIndex.model_validate_json(store.get_bytes(prefix + INDEX_FILE))
            shards = _ShardWriter(root, tasks, names, windows_per_shard)
            skipped = _encode_episodes(dataset, readers, book, shards, on_episode)
        if not any(f.split == "train" for f in shards.files):
            raise ShardError(
                f"dataset {dataset.dataset_hash}: no training window "
                f"({book.cfg.context_chunks} chunks of {book.cfg.actions_per_chunk} steps) fits any episode"
            )
        _save_text(book.cfg, tasks, root)
        index = ShardIndex(
            prefix=prefix,
            dataset_hash=dataset.dataset_hash,
            snapshot_hash=dataset.snapshot_hash,
            config=json.loads(book.cfg.model_dump_json()),
            codec_sha256=codec_sha,
            parent=parent,
            embodiments={n: embodiment_entry(specs[n], *book.norms[n]) for n in names},
            tasks=tasks,
            files=shards.files,
            skipped=skipped,
        )
        _publish(store, index, root)
        return index


def load_index(store: ObjectStore, key: str) -> ShardIndex:
    return ShardIndex.model_validate_json(store.get_bytes(key))


@dataclass
class ShardData:
    """Windows of one split held as stacked tensors; `batch` gathers rows into a WAMBatch."""

    index: ShardIndex
    config: WAMConfig
    tensors: dict[str, Tensor]
    text: Tensor
    text_mask: Tensor

    def __len__(self) -> int:
        return int(self.tensors["cond"].shape[0]) if self.tensors else 0

    def subset(self, rank: int, world: int) -> ShardData:
        """Every world-th window from rank: each data-parallel worker its own part."""
        rows = torch.arange(rank, len(self), world)
        return ShardData(
            self.index, self.config, {k: v[rows] for k, v in self.tensors.items()}, self.text, self.text_mask
        )

    def batch(self, rows: Tensor) -> WAMBatch:
        t = self.tensors
        cfg = self.config
        task = t["task"][rows]
        names = sorted(self.index.embodiments)
        return WAMBatch(
            cond=t["cond"][rows],
            video=t["video"][rows],
            actions=t["actions"][rows],
            action_mask=torch.cat([dim_mask(int(d), cfg.max_action_dim) for d in t["action_dim"][rows]]),
            has_actions=t["has_actions"][rows].bool(),
            states=t["states"][rows],
            state_mask=torch.cat([dim_mask(int(d), cfg.max_state_dim) for d in t["state_dim"][rows]]),
            text=self.text[task],
            text_mask=self.text_mask[task],
            embodiments=[names[int(i)] for i in t["embodiment"][rows]],
            first_frame_channels=t["first_frame_channels"][rows] if "first_frame_channels" in t else None,
            image=t["image"][rows] if "image" in t else None,
        )


def fetch_shards(store: ObjectStore, index: ShardIndex, dest: Path, split: Split) -> ShardData:
    """Downloads one split (checking each file's sha256) and loads it."""
    dest.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, Tensor]] = []
    for f in index.files:
        if f.split != split:
            continue
        path = dest / f.name
        store.get_file(index.prefix + f.name, path)
        if sha256_file(path) != f.sha256:
            raise ShardError(f"{index.prefix}{f.name}: sha256 does not match {INDEX_FILE}")
        parts.append(load_file(str(path)))
    store.get_file(index.prefix + TEXT_FILE, dest / TEXT_FILE)
    text = load_file(str(dest / TEXT_FILE))
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
    config = WAMConfig.model_validate(index.config)
    return ShardData(index, config, tensors, text["embedding"], text["mask"])


def fetch_codec(store: ObjectStore, index: ShardIndex, dest: Path) -> VideoCodec:
    store.get_file(index.prefix + CODEC_FILE, dest / CODEC_FILE)
    if sha256_file(dest / CODEC_FILE) != index.codec_sha256:
        raise ShardError(f"{index.prefix}{CODEC_FILE}: sha256 does not match {INDEX_FILE}")
    codec = VideoCodec(WAMConfig.model_validate(index.config))
    codec.load_state_dict(load_file(str(dest / CODEC_FILE)))
    return codec.eval()
