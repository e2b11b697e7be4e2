"""`wamfleet serve`: the policy endpoint (KServe v2 REST + openpi websocket on one port)."""

from __future__ import annotations

from typing import Annotated

import typer

from wamfleet.platform.cli.common import fail


def serve(
    policy: Annotated[
        str, typer.Option(help="Policy directory, or models:/<name>@<alias> / models:/<name>/<n>.")
    ],
    name: Annotated[str, typer.Option(help="Model name in /v2/models/<name>.")] = "wam",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (REST and websocket).")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="WAMFLEET_SERVE_API_KEY", help="Require `Authorization: Api-Key <key>`."),
    ] = None,
    embodiment: Annotated[
        str | None, typer.Option(help="Which of the policy's embodiments to act for.")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Version reported to robots (default: from the policy).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    max_batch: Annotated[int, typer.Option(min=1, help="Sessions denoised together (1: no batching).")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits for others.")] = 5.0,
) -> None:
    """Serve a policy for robots in closed loop."""
    import os

    from wamfleet.platform.cli.common import load_settings
    from wamfleet.serving.predictor import WAMPredictor

    if policy.startswith(("models:/", "runs:/")) and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = load_settings().effective_mlflow_uri  # the platform's registry
    from wamfleet.serving.server import serve as run

    predictor = WAMPredictor(
        name,
        policy,
        version=version,
        embodiment=embodiment,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    )
    try:
        run(predictor, host=host, port=port, api_key=api_key)
    except ValueError as exc:
        fail(str(exc))
