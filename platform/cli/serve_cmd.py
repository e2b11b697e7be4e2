"""`wamfleet serve`: the policy endpoint (KServe v2 REST + openpi websocket on one port)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from wamfleet.platform.cli.common import fail

if TYPE_CHECKING:
    from wamfleet.serving.scripted import ChunkPolicy, ScriptedLoaders
from wamfleet.platform.contracts.protocol import MAX_MESSAGE_BYTES

COMPILE_MODES = ("reduce-overhead", "default", "max-autotune-no-cudagraphs", "max-autotune")


def serve(
    policy: Annotated[
        str, typer.Option(help="Policy directory, or models:/<name>@<alias> / models:/<name>/<n>.")
    ],
    name: Annotated[str, typer.Option(help="Model name in /v2/models/<name>.")] = "wam",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (REST and websocket).")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="WAMFLEET_SERVE_API_KEY",
            help="Require `Authorization: Api-Key <key>` on every inference route (REST and websocket);"
            " health, readiness, metadata and /metrics stay open for probes.",
        ),
    ] = None,
    embodiment: Annotated[
        str | None, typer.Option(help="Which of the policy's embodiments to act for.")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Version reported to robots (default: from the policy).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[
        str, typer.Option(help="Weights' precision: fp32, bf16 or fp16 (bf16 on a GPU; sampling stays fp32).")
    ] = "fp32",
    max_session_gib: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Memory for session caches (default: on a GPU, its free memory after the weights less"
            " a reserve for a max batch's work; on a CPU, max-batch sessions of this preset).",
        ),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the denoising step (recommended on a GPU: CUDA graphs); compiles at"
            " start-up, before the server reports ready.",
        ),
    ] = False,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            help="With --compile, inductor's mode: reduce-overhead (CUDA graphs; the GPU's default),"
            " default (fused kernels; the CPU's), max-autotune-no-cudagraphs."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Sessions denoised together (1: no batching).")] = 8,
    max_message_mib: Annotated[
        float,
        typer.Option(
            min=1,
            max=1024,
            help="Largest websocket message (frames of every camera since the last request);"
            " a larger one is closed with 1009.",
        ),
    ] = MAX_MESSAGE_BYTES / 2**20,
) -> None:
    """Serve a policy for robots in closed loop."""
    import os

    from wamfleet.platform.cli.common import load_settings
    from wamfleet.serving.predictor import DTYPES, WAMPredictor

    if dtype not in DTYPES:
        fail(f"--dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        fail(f"--compile-mode: expected one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if compile_mode is not None and not compile:
        fail("--compile-mode: only with --compile")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device is visible to this process (torch {torch.__version__})")
    settings = None
    if compile:
        from wamfleet.model.transformer import CompileSettings

        settings = CompileSettings.for_device(device)
        if compile_mode is not None:
            settings = CompileSettings(mode=compile_mode)

    if policy.startswith(("models:/", "runs:/")) and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = load_settings().effective_mlflow_uri  # the platform's registry
    from wamfleet.serving.server import serve as run

    predictor = WAMPredictor(
        name,
        policy,
        version=version,
        embodiment=embodiment,
        device=device,
        dtype=dtype,
        scripted=_scripted_loaders(),
        max_session_bytes=None if max_session_gib is None else int(max_session_gib * 2**30),
        max_batch=max_batch,
        compile=settings,
    )
    try:
        run(
            predictor,
            host=host,
            port=port,
            api_key=api_key,
            max_message_bytes=int(max_message_mib * 2**20),
        )
    except ValueError as exc:
        fail(str(exc))


def _scripted_loaders() -> ScriptedLoaders:
    """Policies of other kinds this command serves: the simulated fleet's scripted expert (a
    candidate of known quality for rollout tests), loaded only when a policy names it."""

    def expert(record: dict[str, Any]) -> ChunkPolicy:
        from wamfleet.fleet_agent.sim.scripted_policy import ScriptedExpert

        return ScriptedExpert.from_record(record)

    return {"scripted-expert": expert}
