"""Prometheus metrics of ingestion, served at the platform API's /metrics."""

from __future__ import annotations

from prometheus_client import Counter

VERIFICATIONS = Counter(
    "wamfleet_ingest_file_verifications_total",
    "Files a commit verified, by how: `store_checksum` (the SHA-256 the store computed while copying) "
    "or `read_back` (the bytes read back and hashed here: the store reported none, or store_checksums "
    "is read-back).",
    ["method"],
)
