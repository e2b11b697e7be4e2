"""`wamfleet pipelines compile` and `wamfleet retrain`: the continuous fine-tuning pipeline."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from wamfleet.platform.cli.common import fail, load_settings
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.retrain import RetrainParams

app = typer.Typer(help="The continuous fine-tuning pipeline (Kubeflow Pipelines).", no_args_is_help=True)
console = Console()


@app.command("compile")
def compile_cmd(
    out: Annotated[Path, typer.Option(help="Where to write the pipeline's IR YAML.")] = Path(
        "continuous-finetune.yaml"
    ),
) -> None:
    """Write the compiled pipeline (what a Kubeflow Pipelines host uploads)."""
    from wamfleet.pipelines.pipeline import compile_pipeline

    path = compile_pipeline(out)
    console.print(f"wrote {path}")


def _params(params_file: Path | None, overrides: Mapping[str, object]) -> RetrainParams:
    try:
        base = RetrainParams.model_validate_json(params_file.read_text()) if params_file else RetrainParams()
        data = base.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        return RetrainParams.model_validate(data)
    except OSError as exc:
        fail(f"--params-file: {exc}")
    except ValidationError as exc:
        fail(f"retrain parameters: {describe_validation_error(exc)}")


def retrain(
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    mode: Annotated[str | None, typer.Option(help="lora or full fine-tuning.")] = None,
    preset: Annotated[str | None, typer.Option(help="Model preset when training a new model.")] = None,
    parent: Annotated[
        str | None, typer.Option(help="Alias or version to resume from; 'none' trains a new model.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train data-parallel workers.")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="Closed-loop episodes per task.")] = None,
    params_file: Annotated[Path | None, typer.Option(help="RetrainParams as JSON.")] = None,
    kfp_host: Annotated[
        str | None, typer.Option(help="Submit to this Kubeflow Pipelines API instead of running here.")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Execute this retrain run recorded in the catalog (platform-launched).")
    ] = None,
) -> None:
    """Curate the fleet's data, fine-tune, evaluate and register a policy version in MLflow."""
    from wamfleet.platform.catalog import retrains
    from wamfleet.platform.catalog.db import Catalog

    settings = load_settings()
    catalog = Catalog(settings.effective_catalog_url)
    host = kfp_host or settings.kfp_host
    if run_id:
        with catalog.session() as session:
            row = retrains.get_run(session, run_id)
            if row is None:
                fail(f"--run-id: no retrain run {run_id} in the catalog")
            params = RetrainParams.model_validate(row.params)
    else:
        overrides = {"steps": steps, "mode": mode, "preset": preset, "parent": parent, "workers": workers}
        params = _params(params_file, overrides | {"eval_episodes": eval_episodes})
        with catalog.session() as session:
            row = retrains.create_run(
                session,
                trigger="manual",
                reason="wamfleet retrain",
                requested_by="cli",
                backend="kfp" if host else "local",
                params=params,
            )
            run_id = row.run_id
    if host:
        from wamfleet.pipelines.run import submit

        external = submit(host, params, run_id)
        with catalog.session() as session:
            retrains.mark_running(session, run_id, external_id=external)
        console.print(f"retrain {run_id}: submitted to {host} as KFP run {external}")
        return
    from wamfleet.pipelines.run import failure_message, run_recorded

    console.print(f"retrain {run_id}: running the pipeline locally (kfp.local, local Ray)")
    try:
        result = run_recorded(settings, catalog, params, run_id)
    except Exception as exc:  # noqa: BLE001 - recorded on the run, then reported
        traceback.print_exc()
        fail(f"retrain {run_id} failed: {' '.join(failure_message(exc).split())}", code=1)
    alias = "candidate" if result.candidate else "no alias (gate failed)"
    console.print(
        f"retrain {run_id}: registered {settings.registered_model} version {result.version}, {alias}"
    )
