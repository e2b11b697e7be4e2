"""The episode bundle format, shared by the writer robots record with and the reader pipelines use.

A bundle directory holds `data.parquet` (one row per frame, LeRobot column names),
`videos/<camera>.mp4` (H.264, short GOP, no B-frames, so any frame is a cheap seek away) and
`manifest.json`, written last with every other file's size and sha256: a directory without a
manifest is an unfinished recording, never an episode. The file names live in
`contracts/episode.py`; the frame schema, the manifest file's reading and writing and the
error for a bad bundle live here, so the two sides cannot drift apart.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from pydantic import ValidationError

from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.contracts.errors import describe_validation_error

Image = NDArray[np.uint8]


class BundleError(Exception):
    """A bundle on disk is missing, truncated, altered or malformed; names the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _vector_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim) if dim > 0 else pa.list_(pa.float32())


def frame_schema(state_dim: int, action_dim: int) -> pa.Schema:
    """The data.parquet schema; column names follow LeRobot."""
    return pa.schema(
        [
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("timestamp", pa.float32(), nullable=False),
            pa.field("observation.state", _vector_type(state_dim), nullable=False),
            pa.field("action", _vector_type(action_dim), nullable=True),
            pa.field("next.reward", pa.float32(), nullable=True),
            pa.field("next.success", pa.bool_(), nullable=True),
            pa.field("intervention", pa.bool_(), nullable=False),
        ]
    )


def write_manifest(directory: Path, manifest: EpisodeManifest) -> None:
    """Writes the commit marker atomically: a reader sees no manifest or a whole, synced one."""
    tmp = directory / f".{MANIFEST_FILE}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(manifest.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_FILE)


def load_manifest(directory: Path) -> EpisodeManifest:
    """The bundle's manifest, validated; BundleError when it is missing or malformed."""
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise BundleError(
            MANIFEST_FILE, f"missing in {directory} (an unfinished or absent episode)"
        ) from None
    try:
        return EpisodeManifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BundleError(MANIFEST_FILE, f"not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise BundleError(MANIFEST_FILE, describe_validation_error(exc)) from None
