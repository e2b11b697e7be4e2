"""`wamfleet data`: episodes in the object store, LeRobot v3 export / import, MCAP export."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from wamfleet.pipelines.lerobot_export import export_lerobot
from wamfleet.pipelines.lerobot_import import import_lerobot
from wamfleet.pipelines.lerobot_v3 import LeRobotFormatError
from wamfleet.platform.cli.common import fail, load_settings
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.storage import ObjectNotFound, ObjectStore, StorageError, open_object_store
from wamfleet.platform.storage.bundles import (
    EPISODES_PREFIX,
    download_bundle,
    get_manifest,
    iter_manifests,
    upload_bundle,
)
from wamfleet.platform.storage.embodiments import embodiment_for, put_embodiment

app = typer.Typer(
    help="Episodes in the object store; LeRobot v3 export and import; MCAP export.", no_args_is_help=True
)
console = Console()


def select_episodes(
    store: ObjectStore, robot: str | None = None, task: str | None = None, embodiment: str | None = None
) -> list[EpisodeManifest]:
    found = []
    for manifest in iter_manifests(store, robot):
        if task and task.lower() not in manifest.task.lower():
            continue
        if embodiment and manifest.embodiment.name != embodiment:
            continue
        found.append(manifest)
    return found


@app.command("ls")
def ls(
    robot: Annotated[str | None, typer.Option(help="Only this robot's episodes.")] = None,
    task: Annotated[
        str | None, typer.Option(help="Only episodes whose instruction contains this text.")
    ] = None,
) -> None:
    """List the committed episodes in the object store."""
    store = open_object_store(load_settings())
    table = Table()
    for column in ("episode", "robot", "embodiment", "task", "frames", "actions", "success"):
        table.add_column(column)
    for m in select_episodes(store, robot, task):
        table.add_row(
            str(m.episode_id),
            m.robot_id,
            f"{m.embodiment.name} v{m.embodiment.version}",
            m.task,
            str(m.num_frames),
            "yes" if m.has_actions else "video only",
            {True: "yes", False: "no", None: "-"}[m.outcome.success],
        )
    console.print(table)


def export_episodes(store: ObjectStore, manifests: list[EpisodeManifest], out: Path) -> dict[str, object]:
    """Downloads and verifies the bundles, then writes them as one LeRobot v3 dataset."""
    names = sorted({m.embodiment.name for m in manifests})
    if len(names) != 1:
        raise ValueError(f"embodiment: episodes span {names}; export one embodiment at a time (--embodiment)")
    spec = embodiment_for(store, manifests[0])
    with tempfile.TemporaryDirectory(prefix="wamfleet-export-") as tmp, Progress(console=console) as progress:
        job = progress.add_task("downloading bundles", total=len(manifests))
        dirs = []
        for m in manifests:
            directory = Path(tmp) / str(m.episode_id)
            download_bundle(store, m.robot_id, m.episode_id, directory)
            dirs.append(directory)
            progress.advance(job)
        progress.add_task("encoding LeRobot videos", total=None)
        return export_lerobot(dirs, out, spec)


@app.command("export-lerobot")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="Directory to create; must not exist or be empty.")],
    robot: Annotated[str | None, typer.Option(help="Only this robot's episodes.")] = None,
    task: Annotated[
        str | None, typer.Option(help="Only episodes whose instruction contains this text.")
    ] = None,
    embodiment: Annotated[str | None, typer.Option(help="Only this embodiment's episodes.")] = None,
) -> None:
    """Write episodes from the object store as a LeRobot v3.0 dataset directory."""
    store = open_object_store(load_settings())
    manifests = select_episodes(store, robot, task, embodiment)
    if not manifests:
        fail("no committed episodes match the filters")
    try:
        info = export_episodes(store, manifests, out)
    except (ValueError, FileExistsError, StorageError) as exc:
        fail(str(exc))
    console.print(f"wrote {info['total_episodes']} episodes, {info['total_frames']} frames to {out}")


def find_episode(store: ObjectStore, episode_id: uuid.UUID, robot: str | None = None) -> EpisodeManifest:
    """A committed episode by id alone: its key (episodes/<robot>/<id>/manifest.json) names the robot."""
    suffix = f"/{episode_id}/{MANIFEST_FILE}"
    for info in store.list(EPISODES_PREFIX + (f"{robot}/" if robot else "")):
        if info.key.endswith(suffix):
            return get_manifest(store, info.key.split("/")[1], episode_id)
    raise ObjectNotFound(f"episode {episode_id}" + (f" of robot {robot!r}" if robot else ""))


@app.command("export-mcap")
def export_mcap_cmd(
    episode: Annotated[
        str, typer.Argument(help="An episode bundle directory, or an episode id in the store.")
    ],
    out: Annotated[Path, typer.Argument(help="The .mcap file to write (open it in Foxglove).")],
    robot: Annotated[str | None, typer.Option(help="The episode's robot (narrows the store search).")] = None,
    images: Annotated[
        str, typer.Option(help="Cameras as auto (H.264 video where possible), h264, jpeg or png.")
    ] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Write one episode as an MCAP file: cameras as video or images, state and actions as joint states."""
    from wamfleet.fleet_agent.episode_format import BundleError
    from wamfleet.fleet_agent.mcap_export import IMAGE_FORMATS, export_mcap

    fmt = next((f for f in IMAGE_FORMATS if f == images), None)
    if fmt is None:
        fail(f"--images: expected one of {', '.join(IMAGE_FORMATS)}, got {images!r}")
    if out.is_dir():
        fail(f"{out}: is a directory; give a file name")
    if out.exists() and not force:
        fail(f"{out}: exists; pass --force to overwrite it")
    source = Path(episode)
    with tempfile.TemporaryDirectory(prefix="wamfleet-mcap-") as tmp:
        try:
            if source.is_dir():
                bundle = source
            else:
                try:
                    episode_id = uuid.UUID(episode)
                except ValueError:
                    fail(f"EPISODE: {episode!r} is neither a bundle directory nor an episode id")
                store = open_object_store(load_settings())
                manifest = find_episode(store, episode_id, robot)
                bundle = Path(tmp) / str(episode_id)
                download_bundle(store, manifest.robot_id, episode_id, bundle)
            result = export_mcap(bundle, out, images=fmt)
        except (BundleError, ValueError, OSError, StorageError) as exc:
            fail(str(exc))
    counts = ", ".join(f"{topic} {n}" for topic, n in result.messages.items())
    console.print(f"wrote {out}: {counts} messages", highlight=False)


@app.command("import-lerobot")
def import_cmd(
    root: Annotated[Path, typer.Argument(help="A LeRobot v3.0 dataset directory.")],
    robot_id: Annotated[
        str, typer.Option(help="Robot id for episodes that do not carry one.")
    ] = "lerobot-import",
    embodiment: Annotated[
        str | None, typer.Option(help="Embodiment name to file the episodes under (default: robot_type).")
    ] = None,
) -> None:
    """Read a LeRobot v3.0 dataset into episode bundles in the object store."""
    store = open_object_store(load_settings())
    with tempfile.TemporaryDirectory(prefix="wamfleet-import-") as tmp:
        try:
            with console.status("decoding LeRobot episodes"):
                result = import_lerobot(root, Path(tmp), robot_id=robot_id, embodiment_name=embodiment)
            put_embodiment(store, result.embodiment)
            for directory, _ in result.bundles:
                upload_bundle(store, directory)
        except (LeRobotFormatError, ValueError, StorageError) as exc:
            fail(str(exc))
    console.print(f"imported {len(result.bundles)} episodes from {root}")
