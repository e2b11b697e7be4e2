"""File digests shared by the robot that writes a bundle and everyone who verifies it."""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

_CHUNK = 1 << 20
# S3's header for a SHA-256 the store checks the body against (base64 of the raw digest).
CHECKSUM_HEADER = "x-amz-checksum-sha256"


def sha256_base64(hex_digest: str) -> str:
    """The manifest's hex SHA-256 as S3 writes it in x-amz-checksum-sha256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def sha256_hex(base64_digest: str) -> str | None:
    """x-amz-checksum-sha256 back to hex; None if it is not a base64 SHA-256."""
    try:
        raw = base64.b64decode(base64_digest, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
