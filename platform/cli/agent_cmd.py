"""`wamfleet agent`: the robot-side uploader. Needs only the base install (no torch, no server libs)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from wamfleet.fleet_agent.client import AgentError, AuthError, PlatformClient
from wamfleet.fleet_agent.config import AgentSettings
from wamfleet.fleet_agent.spool import Spool
from wamfleet.fleet_agent.uploader import Uploader
from wamfleet.platform.cli.common import PolicyEndpoint, fail
from wamfleet.platform.contracts.errors import describe_validation_error

app = typer.Typer(help="The robot agent: spool and upload episodes.", no_args_is_help=True)
console = Console()
log = logging.getLogger(__name__)

ApiUrl = Annotated[str | None, typer.Option(help="Platform API base URL (WAMFLEET_AGENT_API_URL).")]
SpoolDir = Annotated[Path | None, typer.Option(help="Spool directory (WAMFLEET_AGENT_SPOOL_DIR).")]


def agent_settings(**overrides: Any) -> AgentSettings:
    try:
        return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid agent settings (WAMFLEET_AGENT_*): {describe_validation_error(exc)}")


@app.command("run")
def run(
    once: Annotated[bool, typer.Option(help="Upload what is ready, then exit.")] = False,
    api_url: ApiUrl = None,
    spool_dir: SpoolDir = None,
    bandwidth_limit: Annotated[int | None, typer.Option(help="Upload cap in bytes/s (0: none).")] = None,
    retention_s: Annotated[float | None, typer.Option(help="Keep uploaded episodes this long.")] = None,
) -> None:
    """Upload ready episodes from the spool; keeps running until interrupted unless --once."""
    settings = agent_settings(
        api_url=api_url, spool_dir=spool_dir, bandwidth_limit=bandwidth_limit, retention_s=retention_s
    )
    try:
        uploader = Uploader.from_settings(settings)
    except ValueError as exc:
        fail(str(exc))
    recovered, discarded = uploader.spool.recover_recordings()
    if recovered or discarded:
        console.print(f"spool: {recovered} finished recordings queued, {discarded} unfinished discarded")
    console.print(f"agent ready: spool {settings.spool_dir}, platform {settings.api_url}", highlight=False)
    try:
        if once:
            report = uploader.run_once()
            console.print(
                f"committed {len(report.committed)}, rejected {len(report.rejected)}, "
                f"deferred {len(report.deferred)}; "
                f"sent {report.files_sent} files ({report.bytes_sent} bytes), "
                f"skipped {report.files_skipped} already received"
            )
            if report.rejected or report.deferred:
                raise typer.Exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        uploader.run(stop, settings.poll_s)
    except AuthError as exc:
        fail(f"token: the platform refused this robot's token ({exc})")
    finally:
        uploader.client.close()


@app.command("status")
def status(spool_dir: SpoolDir = None) -> None:
    """Count the spool's episodes per state."""
    settings = agent_settings(spool_dir=spool_dir)
    for state, count in Spool(settings.spool_dir).counts().items():
        console.print(f"{state:10} {count}")


@app.command("import-video")
def import_video_cmd(
    file: Annotated[Path, typer.Argument(help="A video file (anything FFmpeg reads).")],
    task: Annotated[str, typer.Option(help="What the video shows being done, as an instruction.")],
    embodiment: Annotated[str, typer.Option(help="Registered embodiment to file it under.")] = "human",
    upload: Annotated[bool, typer.Option(help="Upload right away (else leave it in the spool).")] = True,
    api_url: ApiUrl = None,
    spool_dir: SpoolDir = None,
) -> None:
    """Turn a plain video into a video-only episode and upload it."""
    from wamfleet.fleet_agent.video_import import import_video

    settings = agent_settings(api_url=api_url, spool_dir=spool_dir)
    if settings.token is None or settings.robot_id is None:
        fail("robot_id/token: set WAMFLEET_AGENT_ROBOT_ID and WAMFLEET_AGENT_TOKEN")
    client = PlatformClient(settings.api_url, settings.token.get_secret_value(), settings.timeout_s)
    try:
        spec = client.embodiment(embodiment)
        spool = Spool(settings.spool_dir)
        manifest = import_video(file, spool, robot_id=settings.robot_id, embodiment=spec, task=task)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    except AgentError as exc:
        fail(f"embodiment: cannot fetch {embodiment!r} from the platform ({exc})")
    finally:
        client.close()
    console.print(f"episode {manifest.episode_id}: {manifest.num_frames} frames at {manifest.fps:g} fps")
    if upload:
        uploader = Uploader.from_settings(settings)
        report = uploader.run_once()
        if str(manifest.episode_id) not in report.committed:
            fail(f"upload did not complete (rejected {report.rejected}, deferred {report.deferred})", code=1)
        console.print("uploaded and committed")


@app.command("import-bag")
def import_bag_cmd(
    path: Annotated[
        Path, typer.Argument(help="A rosbag2 directory (sqlite3 or MCAP storage) or an .mcap file.")
    ],
    mapping: Annotated[
        Path, typer.Option(help="YAML or JSON file naming the bag's topics for the embodiment.")
    ],
    task: Annotated[
        str | None, typer.Option(help="Instruction for every episode (overrides the mapping).")
    ] = None,
    success: Annotated[
        bool | None,
        typer.Option("--success/--failure", help="Outcome of every episode (overrides the mapping)."),
    ] = None,
    upload: Annotated[bool, typer.Option(help="Upload right away (else leave them in the spool).")] = True,
    robot_id: Annotated[str | None, typer.Option(help="This robot's id (WAMFLEET_AGENT_ROBOT_ID).")] = None,
    api_url: ApiUrl = None,
    spool_dir: SpoolDir = None,
) -> None:
    """Turn a ROS 2 bag or MCAP recording into episodes in the spool (all of them or none)."""
    from wamfleet.fleet_agent.bag_import import BagError, import_bag, load_mapping
    from wamfleet.platform.contracts.embodiment import EmbodimentSpec
    from wamfleet.platform.contracts.episode import Outcome

    settings = agent_settings(api_url=api_url, spool_dir=spool_dir, robot_id=robot_id)
    if settings.robot_id is None:
        fail("robot_id: pass --robot-id or set WAMFLEET_AGENT_ROBOT_ID")
    try:
        bag_mapping = load_mapping(mapping)
    except BagError as exc:
        fail(str(exc))
    needs_platform = upload or not isinstance(bag_mapping.embodiment, EmbodimentSpec)
    if needs_platform and settings.token is None:
        fail("token: set WAMFLEET_AGENT_TOKEN (or use --no-upload with the embodiment spec in the mapping)")
    if isinstance(bag_mapping.embodiment, EmbodimentSpec):
        spec = bag_mapping.embodiment
    else:
        assert settings.token is not None
        client = PlatformClient(settings.api_url, settings.token.get_secret_value(), settings.timeout_s)
        try:
            spec = client.embodiment(bag_mapping.embodiment)
        except AgentError as exc:
            fail(f"embodiment: cannot fetch {bag_mapping.embodiment!r} from the platform ({exc})")
        finally:
            client.close()
    outcome = bag_mapping.outcome
    if success is not None:
        outcome = (outcome or Outcome()).model_copy(update={"success": success})
    try:
        with console.status(f"importing {path.name}"):
            result = import_bag(
                path,
                bag_mapping,
                Spool(settings.spool_dir),
                robot_id=settings.robot_id,
                embodiment=spec,
                task=task,
                outcome=outcome,
            )
    except (ValueError, OSError) as exc:
        fail(str(exc))
    for m in result.manifests:
        console.print(
            f"episode {m.episode_id}: {m.num_frames} frames at {m.fps:g} fps, task {m.task!r}",
            highlight=False,
        )
    for skipped in result.skipped:
        console.print(f"skipped at {skipped.start_s:.3f} s into the bag: {skipped.reason}", highlight=False)
    n = len(result.manifests)
    console.print(
        f"imported {n} episode{'s' if n != 1 else ''} into {settings.spool_dir}/ready", highlight=False
    )
    if upload:
        uploader = Uploader.from_settings(settings)
        report = uploader.run_once()
        missing = [str(m.episode_id) for m in result.manifests if str(m.episode_id) not in report.committed]
        if missing:
            fail(
                f"upload did not complete for {missing} "
                f"(rejected {report.rejected}, deferred {report.deferred})",
                code=1,
            )
        console.print("uploaded and committed")


@app.command("drive")
def drive_cmd(
    endpoint: PolicyEndpoint,
    task: Annotated[str, typer.Option(help="Meta-World task, e.g. reach-v3.")] = "reach-v3",
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to drive.")] = 1,
    max_steps: Annotated[int, typer.Option(min=1, help="Control steps per episode at most.")] = 150,
    spool_dir: SpoolDir = None,
    robot_id: Annotated[str | None, typer.Option(help="This robot's id (WAMFLEET_AGENT_ROBOT_ID).")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="WAMFLEET_POLICY_API_KEY", help="The policy server's Api-Key.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the episodes' object layouts.")] = 0,
    image_size: Annotated[int, typer.Option(min=8, help="Camera image side in pixels.")] = 96,
    merge: Annotated[str, typer.Option(help="Overlapping chunks: latest or weighted.")] = "latest",
    timeout_s: Annotated[float, typer.Option(help="Per-request timeout; then the robot holds still.")] = 5.0,
) -> None:
    """Drive a simulated arm with a served policy; record autonomous episodes for `agent run`."""
    settings = agent_settings(spool_dir=spool_dir, robot_id=robot_id)
    if settings.robot_id is None:
        fail("robot_id: pass --robot-id or set WAMFLEET_AGENT_ROBOT_ID")
    if merge not in ("latest", "weighted"):
        fail(f"--merge: expected latest or weighted, got {merge!r}")
    from wamfleet.fleet_agent.sim.drive import DriveResult, drive
    from wamfleet.fleet_agent.sim.metaworld_robot import known_task

    if not known_task(task):
        fail(f"--task: unknown Meta-World task {task!r}")

    def report(result: DriveResult) -> None:
        stats = result.stats
        where = f"episode {result.episode_id}" if result.episode_id else "not recorded (no policy answer)"
        console.print(
            f"{result.task} seed {result.seed}: {where}; success {result.outcome.success}, "
            f"progress {result.outcome.progress or 0.0:.2f}, policy {result.policy_version or '-'}, "
            f"{stats.steps} steps, {stats.chunks} chunks, {stats.safe_actions} safe actions",
            highlight=False,
        )

    try:
        results = drive(
            endpoint,
            task,
            episodes,
            spool_dir=settings.spool_dir,
            robot_id=settings.robot_id,
            api_key=api_key,
            max_steps=max_steps,
            seed=seed,
            image_size=image_size,
            merge="weighted" if merge == "weighted" else "latest",
            timeout_s=timeout_s,
            on_episode=report,
        )
    except ValueError as exc:
        fail(str(exc))
    recorded = sum(1 for r in results if r.episode_id)
    console.print(
        f"recorded {recorded} of {len(results)} episodes into {settings.spool_dir}/ready", highlight=False
    )
    if recorded == 0:
        raise typer.Exit(1)
