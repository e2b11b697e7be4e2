"""Prometheus metrics of the policy engine, in the default registry KServe serves at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_SECONDS = Histogram(
    "wamfleet_policy_stage_seconds",
    "Time per request stage: validate, queue, encode (observations into the cache), denoise, total.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
SESSIONS = Gauge("wamfleet_policy_sessions", "Sessions holding a KV cache.")
SESSION_BYTES = Gauge("wamfleet_policy_session_cache_bytes", "Bytes held by all sessions' KV caches.")
EVICTIONS = Counter(
    "wamfleet_policy_session_evictions_total", "Sessions evicted by the memory budget or TTL."
)
REQUESTS = Counter("wamfleet_policy_requests_total", "Inference requests by outcome.", ["outcome"])
BATCH_SIZE = Histogram(
    "wamfleet_policy_batch_size", "Requests denoised together.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
CHUNKS = Counter("wamfleet_policy_chunks_total", "Action chunks returned.")
