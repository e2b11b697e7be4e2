"""One way to reach Ray for curation (Ray Data) and fine-tuning (Ray Train).

`ensure_ray(None)` starts a local Ray on this machine (the embedded default); an address joins
a running cluster (`ray://head:10001` on KubeRay, or `auto`). Calling it again is a no-op, so
every step can call it without knowing whether another step already did.
"""

from __future__ import annotations

import logging


def ensure_ray(
    address: str | None,
    num_cpus: int | None = None,
    *,
    object_store_memory: int | None = None,
) -> None:
    """Connects to Ray once per process; `num_cpus`/`object_store_memory` apply to a local Ray only."""
    import ray

    if ray.is_initialized():
        return
    local = address is None
    ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        object_store_memory=object_store_memory if local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        ignore_reinit_error=True,
    )
