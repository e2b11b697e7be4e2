"""Curation of a validated dataset snapshot: filters on Ray Data, then selection on the driver.

The expensive part, decoding every episode, runs per episode (`curate_quality.analyse_episode`)
either in this process (`workers=0`, the one-worker baseline) or as Ray Data tasks that each
download one bundle from the object store into a temporary directory, analyse it and delete
it. What needs every episode at once is cheap and runs on the driver: near-duplicate removal
within (task, embodiment), diversity caps per (task, environment) and per task, and the
holdout split by a hash of the episode id. Both paths give the same dataset, byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from wamfleet.pipelines.curate_quality import EpisodeAnalysis, Rejection, analyse_episode
from wamfleet.pipelines.ray_runtime import ensure_ray
from wamfleet.platform.contracts.curation import (
    DROP_REASONS,
    CuratedDataset,
    CuratedEpisode,
    CurationRecipe,
    CurationReport,
    DroppedEpisode,
    Duplicate,
    FailedEpisodes,
    GroupCounts,
    actions_are_targets,
    curated_key,
    dataset_hash,
)
from wamfleet.platform.contracts.dataset import DatasetSnapshot, SnapshotEpisode
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.base import ObjectNotFound, ObjectStore
from wamfleet.platform.storage.bundles import BundleIntegrityError, download_bundle
from wamfleet.platform.storage.factory import open_object_store

Progress = Callable[[int, int], None]
_DEDUP_BLOCK = 1024  # rows of the similarity matrix computed at once


class CurationError(Exception):
    """Curation cannot proceed (inputs that do not belong together, a stored dataset altered)."""


def environment_of(episode: SnapshotEpisode, recipe: CurationRecipe) -> str:
    """Site plus the recipe's environment tags the episode carries, e.g. `sim/layout-seed=7`."""
    parts = [episode.site or "no-site"]
    parts += [f"{key}={episode.tags[key]}" for key in recipe.environment_tags if key in episode.tags]
    return "/".join(parts)


MIN_EPISODES_FOR_HOLDOUT = 3


def holdout_draw(episode_id: str) -> float:
    """A uniform number in [0, 1) fixed by the episode id: an episode keeps its split across datasets."""
    return int(hashlib.sha256(episode_id.encode()).hexdigest()[:16], 16) / 2**64


# Analysis ------------------------------------------------------------------------------------


def analyse_from_store(
    store: ObjectStore, episode: SnapshotEpisode, recipe: CurationRecipe
) -> EpisodeAnalysis:
    """Downloads the bundle to a temporary directory, analyses it, and deletes the directory."""
    with tempfile.TemporaryDirectory(prefix="wamfleet-curate-") as tmp:
        directory = Path(tmp) / "bundle"
        try:
            download_bundle(store, episode.robot_id, episode.episode_id, directory)
        except ObjectNotFound as exc:
            raise CurationError(f"episode {episode.episode_id}: not in the object store ({exc})") from None
        except BundleIntegrityError as exc:
            return EpisodeAnalysis(
                episode_id=episode.episode_id,
                num_frames=episode.num_frames,
                video_only=not episode.has_actions,
                rejections=[Rejection(reason="unreadable", detail=str(exc))],
            )
        return analyse_episode(directory, episode, recipe, verify=False)  # download_bundle verified


def _analyse_row(row: dict[str, Any], *, settings: Settings, recipe: CurationRecipe) -> dict[str, Any]:
    """One Ray Data task: a snapshot entry in, its analysis out (both as JSON)."""
    episode = SnapshotEpisode.model_validate_json(row["episode"])
    analysis = analyse_from_store(open_object_store(settings), episode, recipe)
    return {"episode_id": episode.episode_id, "analysis": analysis.model_dump_json()}


def _analyse_sequential(
    episodes: list[SnapshotEpisode], settings: Settings, recipe: CurationRecipe
) -> Iterator[EpisodeAnalysis]:
    store = open_object_store(settings)
    for episode in episodes:
        yield analyse_from_store(store, episode, recipe)


def _analyse_on_ray(
    episodes: list[SnapshotEpisode],
    settings: Settings,
    recipe: CurationRecipe,
    workers: int,
    ray_address: str | None,
) -> Iterator[EpisodeAnalysis]:
    import ray.data

    ensure_ray(ray_address)
    # Workers may run elsewhere (another cwd, another machine): a local store by absolute path.
    portable = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    items = [{"episode": e.model_dump_json()} for e in episodes]
    # One episode per block, so per task: even load, and progress episode by episode.
    source = ray.data.from_items(items, override_num_blocks=len(items))
    # Per-operator reservations leave one of two CPUs idle on a small cluster; there is one
    # operator here, so it may use every CPU its strategy allows.
    source.context.op_resource_reservation_enabled = False
    analysed = source.map(
        functools.partial(_analyse_row, settings=portable, recipe=recipe),
        compute=ray.data.TaskPoolStrategy(size=min(workers, len(items))),
        num_cpus=1,
    )
    for row in analysed.iter_rows():
        yield EpisodeAnalysis.model_validate_json(row["analysis"])


def analyse_snapshot_episodes(
    episodes: list[SnapshotEpisode],
    settings: Settings,
    recipe: CurationRecipe,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> dict[str, EpisodeAnalysis]:
    """Every episode's analysis by id: in this process (`workers=0`) or on Ray Data."""
    if workers < 0:
        raise ValueError(f"workers: must be >= 0, got {workers}")
    if not episodes:
        return {}
    stream: Iterable[EpisodeAnalysis]
    if workers == 0:
        stream = _analyse_sequential(episodes, settings, recipe)
    else:
        stream = _analyse_on_ray(episodes, settings, recipe, workers, ray_address)
    results: dict[str, EpisodeAnalysis] = {}
    for analysis in stream:
        results[analysis.episode_id] = analysis
        if progress is not None:
            progress(len(results), len(episodes))
    missing = {e.episode_id for e in episodes} - set(results)
    if missing:
        raise CurationError(f"episodes {sorted(missing)}: no analysis came back")
    return results


# Selection -----------------------------------------------------------------------------------


def _success_rank(episode: SnapshotEpisode) -> int:
    return {True: 0, None: 1, False: 2}[episode.success]


def find_duplicates(
    episodes: list[SnapshotEpisode], analyses: dict[str, EpisodeAnalysis], threshold: float
) -> list[Duplicate]:
    """Near-duplicates within each (task, embodiment): in episode-id order, an episode whose
    cosine similarity to an earlier kept one reaches `threshold` is removed (the earliest stays)."""
    groups: dict[tuple[str, str], list[SnapshotEpisode]] = defaultdict(list)
    for episode in episodes:
        groups[(episode.task, episode.embodiment)].append(episode)
    found: list[Duplicate] = []
    for key in sorted(groups):
        # Embeddings of one layout (cameras, state dims) compare; other layouts never match.
        by_layout: dict[int, list[SnapshotEpisode]] = defaultdict(list)
        for episode in sorted(groups[key], key=lambda e: e.episode_id):
            by_layout[len(analyses[episode.episode_id].embedding)].append(episode)
        for size, members in sorted(by_layout.items()):
            if size:
                found += _greedy_dedup(members, analyses, threshold)
    return found


def _greedy_dedup(
    members: list[SnapshotEpisode], analyses: dict[str, EpisodeAnalysis], threshold: float
) -> list[Duplicate]:
    vectors = np.array([analyses[e.episode_id].embedding for e in members], dtype=np.float64)
    kept = np.zeros(len(members), dtype=bool)
    found = []
    for lo in range(0, len(members), _DEDUP_BLOCK):
        hi = min(lo + _DEDUP_BLOCK, len(members))
        sims = vectors[lo:hi] @ vectors[:hi].T
        for i in range(lo, hi):
            earlier = np.flatnonzero(kept[:i])
            if earlier.size:
                row = sims[i - lo, earlier]
                best = int(np.argmax(row))
                if row[best] >= threshold:
                    found.append(
                        Duplicate(
                            episode_id=members[i].episode_id,
                            duplicate_of=members[earlier[best]].episode_id,
                            similarity=round(float(row[best]), 6),
                        )
                    )
                    continue
            kept[i] = True
    return found


def apply_caps(
    episodes: list[SnapshotEpisode], analyses: dict[str, EpisodeAnalysis], recipe: CurationRecipe
) -> tuple[list[SnapshotEpisode], int, int]:
    """Diversity caps: at most `max_per_environment` per (task, environment), preferring
    successful, then longer (kept frames), then earlier episodes; then at most `max_per_task`
    per task, taken round-robin over its environments. Returns (selected, capped per env, per task)."""

    def preference(e: SnapshotEpisode) -> tuple[int, int, str]:
        return (_success_rank(e), -analyses[e.episode_id].frames_kept, e.episode_id)

    by_env: dict[tuple[str, str], list[SnapshotEpisode]] = defaultdict(list)
    for episode in episodes:
        by_env[(episode.task, environment_of(episode, recipe))].append(episode)
    ranked: list[tuple[int, SnapshotEpisode]] = []  # (rank within its environment, episode)
    capped_env = 0
    for key in sorted(by_env):
        members = sorted(by_env[key], key=preference)
        if recipe.max_per_environment:
            capped_env += max(len(members) - recipe.max_per_environment, 0)
            members = members[: recipe.max_per_environment]
        ranked += list(enumerate(members))
    by_task: dict[str, list[tuple[int, SnapshotEpisode]]] = defaultdict(list)
    for rank, episode in ranked:
        by_task[episode.task].append((rank, episode))
    selected: list[SnapshotEpisode] = []
    capped_task = 0
    for task in sorted(by_task):
        in_turn = sorted(by_task[task], key=lambda item: (item[0], *preference(item[1])))
        if recipe.max_per_task:
            capped_task += max(len(in_turn) - recipe.max_per_task, 0)
            in_turn = in_turn[: recipe.max_per_task]
        selected += [e for _, e in in_turn]
    return sorted(selected, key=lambda e: e.episode_id), capped_env, capped_task


def assign_splits(
    episodes: list[SnapshotEpisode],
    analyses: dict[str, EpisodeAnalysis],
    fraction: float,
    failed_episodes: FailedEpisodes = "world_model",
) -> dict[str, Literal["train", "holdout"]]:
    """Holdout when the id's draw < fraction; episodes without actions to evaluate always train
    (video-only ones, and failed ones when `failed_episodes` is "world_model": their actions are
    no target), and if every episode drew holdout the one with the highest draw trains instead. A
    small dataset (3+ episodes with actions to evaluate) where none drew holdout still sets its
    lowest draw aside, so offline evaluation always has something to measure."""

    def evaluable(e: SnapshotEpisode) -> bool:
        return not analyses[e.episode_id].video_only and actions_are_targets(e.success, failed_episodes)

    splits: dict[str, Literal["train", "holdout"]] = {}
    for e in episodes:
        holdout = evaluable(e) and holdout_draw(e.episode_id) < fraction
        splits[e.episode_id] = "holdout" if holdout else "train"
    if episodes and "train" not in splits.values():
        splits[max(episodes, key=lambda e: holdout_draw(e.episode_id)).episode_id] = "train"
    acted = [e for e in episodes if evaluable(e)]
    if fraction > 0 and len(acted) >= MIN_EPISODES_FOR_HOLDOUT and "holdout" not in splits.values():
        splits[min(acted, key=lambda e: holdout_draw(e.episode_id)).episode_id] = "holdout"
    return splits


def build_dataset(
    snapshot: DatasetSnapshot,
    ok_ids: Collection[str],
    analyses: dict[str, EpisodeAnalysis],
    recipe: CurationRecipe,
) -> CuratedDataset:
    """The driver's part of curation: from every episode's analysis to the curated dataset."""
    ok = set(ok_ids)
    candidates = [e for e in snapshot.episodes if e.episode_id in ok]
    missing = [e.episode_id for e in candidates if e.episode_id not in analyses]
    if missing:
        raise CurationError(f"episodes {missing}: no analysis")
    report = CurationReport(
        episodes_in=len(snapshot.episodes), not_validated=len(snapshot.episodes) - len(candidates)
    )
    report.analysed = len(candidates)
    report.frames_in = sum(analyses[e.episode_id].num_frames for e in candidates)
    passed: list[SnapshotEpisode] = []
    for episode in candidates:
        analysis = analyses[episode.episode_id]
        if analysis.kept:
            passed.append(episode)
            continue
        first, *others = analysis.rejections
        report.dropped[first.reason] += 1
        report.dropped_episodes.append(
            DroppedEpisode(
                episode_id=episode.episode_id,
                reason=first.reason,
                detail=first.detail,
                other_reasons=[r.reason for r in others],
            )
        )

    report.duplicates = find_duplicates(passed, analyses, recipe.dedup_threshold)
    report.duplicates_removed = len(report.duplicates)
    removed = {d.episode_id for d in report.duplicates}
    unique = [e for e in passed if e.episode_id not in removed]
    selected, report.capped_per_environment, report.capped_per_task = apply_caps(unique, analyses, recipe)
    splits = assign_splits(selected, analyses, recipe.holdout_fraction, recipe.failed_episodes)

    chosen = []
    for episode in selected:
        analysis = analyses[episode.episode_id]
        chosen.append(
            CuratedEpisode(
                episode_id=episode.episode_id,
                robot_id=episode.robot_id,
                task=episode.task,
                embodiment=episode.embodiment,
                environment=environment_of(episode, recipe),
                video_only=analysis.video_only,
                start=analysis.start,
                stop=analysis.stop,
                split=splits[episode.episode_id],
            )
        )
    _summarise(report, candidates, chosen, analyses)
    return CuratedDataset(
        dataset_hash=dataset_hash(snapshot.snapshot_hash, recipe, chosen),
        snapshot_hash=snapshot.snapshot_hash,
        recipe=recipe,
        episodes=chosen,
        report=report,
    )


def _summarise(
    report: CurationReport,
    candidates: list[SnapshotEpisode],
    chosen: list[CuratedEpisode],
    analyses: dict[str, EpisodeAnalysis],
) -> None:
    report.kept = len(chosen)
    report.video_only_kept = sum(e.video_only for e in chosen)
    failed = {c.episode_id for c in candidates if c.success is False}
    report.failed_kept = sum(e.episode_id in failed for e in chosen)
    report.train = sum(e.split == "train" for e in chosen)
    report.holdout = report.kept - report.train
    report.frames_kept = sum(e.stop - e.start for e in chosen)
    report.frames_trimmed = sum(analyses[e.episode_id].num_frames - (e.stop - e.start) for e in chosen)
    report.environments = len({(e.task, e.environment) for e in chosen})
    for episode in candidates:
        report.per_task.setdefault(episode.task, GroupCounts()).episodes_in += 1
        report.per_embodiment.setdefault(episode.embodiment, GroupCounts()).episodes_in += 1
    for e in chosen:
        for counts in (report.per_task[e.task], report.per_embodiment[e.embodiment]):
            counts.kept += 1
            counts.frames_kept += e.stop - e.start
    report.per_task = dict(sorted(report.per_task.items()))
    report.per_embodiment = dict(sorted(report.per_embodiment.items()))


def curate(
    snapshot: DatasetSnapshot,
    ok_ids: Collection[str],
    settings: Settings,
    recipe: CurationRecipe,
    *,
    workers: int = 0,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> CuratedDataset:
    """Curates the snapshot's validated episodes (`ok_ids`) with `recipe`.

    `workers=0` analyses episodes one after another in this process; `workers>=1` runs that
    many concurrent Ray Data tasks (one CPU each) on the Ray at `ray_address` (local if None).
    `progress(done, total)` is called as each episode's analysis arrives.
    """
    ok = set(ok_ids)
    known = {e.episode_id for e in snapshot.episodes}
    strangers = sorted(ok - known)
    if strangers:
        shown = ", ".join(strangers[:5]) + (" ..." if len(strangers) > 5 else "")
        raise CurationError(
            f"ok_ids: {len(strangers)} episode ids are not in snapshot {snapshot.snapshot_hash} "
            f"(a validation report of another snapshot?): {shown}"
        )
    candidates = [e for e in snapshot.episodes if e.episode_id in ok]
    analyses = analyse_snapshot_episodes(
        candidates, settings, recipe, workers=workers, ray_address=ray_address, progress=progress
    )
    return build_dataset(snapshot, ok, analyses, recipe)


# Storage -------------------------------------------------------------------------------------


def save_curated(store: ObjectStore, dataset: CuratedDataset) -> str:
    """Writes the dataset beside its snapshot; returns the key."""
    key = curated_key(dataset.snapshot_hash, dataset.dataset_hash)
    store.put_bytes(key, dataset.model_dump_json(indent=2).encode())
    return key


def load_curated(store: ObjectStore, snapshot_hash: str, dataset_hash_: str) -> CuratedDataset:
    """Reads a stored dataset and checks that its content still hashes to its name."""
    key = curated_key(snapshot_hash, dataset_hash_)
    raw = store.get_bytes(key)
    try:
        dataset = CuratedDataset.model_validate_json(raw)
    except ValidationError as exc:
        raise CurationError(f"{key}: {describe_validation_error(exc)}") from None
    actual = dataset_hash(dataset.snapshot_hash, dataset.recipe, dataset.episodes)
    if (
        dataset.snapshot_hash != snapshot_hash
        or dataset.dataset_hash != dataset_hash_
        or actual != dataset_hash_
    ):
        raise CurationError(f"{key}: content does not hash to {dataset_hash_} (altered dataset?)")
    return dataset


__all__ = [
    "DROP_REASONS",
    "CurationError",
    "analyse_from_store",
    "analyse_snapshot_episodes",
    "apply_caps",
    "assign_splits",
    "build_dataset",
    "curate",
    "environment_of",
    "find_duplicates",
    "holdout_draw",
    "load_curated",
    "save_curated",
]
