"""Identifiers: episode ids are UUIDv7 so they sort by recording time across the fleet."""

from __future__ import annotations

import os
import re
import time
import uuid

# Robot ids, embodiment names, camera names and tags become object-store path segments and
# SQL values, so they are restricted to a portable, traversal-free alphabet.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SLUG = re.compile(SLUG_PATTERN)


def is_slug(value: str) -> bool:
    # fullmatch: with `match`, `$` also matches before a trailing newline ("robot-1\n").
    return _SLUG.fullmatch(value) is not None


def new_episode_id(timestamp_ms: int | None = None) -> uuid.UUID:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits."""
    ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"timestamp_ms out of range for UUIDv7: {ms}")
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 62 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def is_uuid7(value: uuid.UUID) -> bool:
    return value.version == 7 and value.variant == uuid.RFC_4122


def uuid7_time_ms(value: uuid.UUID) -> int:
    return value.int >> 80
