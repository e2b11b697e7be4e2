"""Names on the MLflow registry that the pipeline writes and the platform reads: the aliases a
rollout moves, and the lineage tags every registered version carries."""

from __future__ import annotations

CANDIDATE, CHAMPION, PREVIOUS = "candidate", "champion", "previous"

LINEAGE_PREFIX = "wamfleet."
TAG_SNAPSHOT = "wamfleet.snapshot"
TAG_DATASET = "wamfleet.dataset"
TAG_PARENT = "wamfleet.parent_version"
TAG_CODE = "wamfleet.code_version"
TAG_PIPELINE_RUN = "wamfleet.pipeline_run"
TAG_RETRAIN = "wamfleet.retrain_run"
TAG_GATE = "wamfleet.gate"
# How episodes that failed were trained on (the curation recipe's failed_episodes): imitated, or
# only for the world model. Two versions that differ here learned different things from one snapshot.
TAG_FAILED_EPISODES = "wamfleet.failed_episodes"
LINEAGE_TAGS = (TAG_SNAPSHOT, TAG_DATASET, TAG_PARENT, TAG_CODE, TAG_PIPELINE_RUN, TAG_FAILED_EPISODES)
