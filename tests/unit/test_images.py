"""The images (docker/*.Dockerfile, .dockerignore), checked without Docker.

A small Dockerfile parser (continuations, ARG substitution, stages) and the installed metadata
of this environment: bases pinned, uid 10001, torch pinned to constraints/cpu.txt's version in
its CUDA build, no torch in the platform image, every third-party module each image's code
imports installed in that image, entrypoints and health checks that name real commands,
options and ports, labels, and the build context.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.testing import CliRunner

from wamfleet.platform.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = ("platform", "serving", "pipeline")
GPU_IMAGES = ("serving", "pipeline")
TORCH_EXTRAS = {"model", "serve", "train", "all"}  # extras that pull torch (directly or through ray/kserve)
UID = "10001"
BUILD_TOOLS = {"gcc", "g++", "make", "cmake", "build-essential", "clang", "git", "pkg-config"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
runner = CliRunner()


# ---- parsing ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    base: str  # the FROM image with global ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str | None] = field(default_factory=dict)  # ARGs declared in the stage

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def expand(self, text: str) -> str:
        return substitute(text, {k: v for k, v in self.args.items() if v is not None})


@dataclass
class Dockerfile:
    name: str
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def build_stages(self) -> list[Stage]:
        return self.stages[:-1]


def substitute(text: str, values: dict[str, str]) -> str:
    """${NAME} and $NAME replaced where NAME has a value; anything else left as written."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", one, text)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction) with backslash continuations joined, comments dropped."""
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment and empty lines, inside continuations too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        yield start, buffer + stripped
        buffer = ""
    assert not buffer, f"line {start}: a continuation runs past the end of the file"


def parse_arg(value: str) -> tuple[str, str | None]:
    name, eq, default = value.partition("=")
    return name.strip(), (shlex.split(default)[0] if default.strip() else "") if eq else None


@cache
def dockerfile(image: str) -> Dockerfile:
    path = DOCKER / f"{image}.Dockerfile"
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        keyword, _, value = text.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            defaults = {k: v for k, v in global_args.items() if v is not None}
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=substitute(words[0], defaults), name=name))
        elif keyword == "ARG" and not stages:
            arg, default = parse_arg(value)
            global_args[arg] = default
        else:
            assert stages, f"{path.name}:{line}: {keyword} before the first FROM"
            stage = stages[-1]
            if keyword == "ARG":
                arg, default = parse_arg(value)
                stage.args[arg] = default if default is not None else global_args.get(arg)
            stage.instructions.append(Instruction(keyword, value, line))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(image, global_args, stages)


def env_pairs(value: str) -> dict[str, str]:
    """ENV/LABEL key=value pairs (quotes removed)."""
    pairs = {}
    for token in shlex.split(value):
        key, eq, val = token.partition("=")
        assert eq, f"use the key=value form: {value!r}"
        pairs[key] = val
    return pairs


@dataclass
class PipCommand:
    image: str
    stage: Stage
    subcommand: str
    requirements: list[str]
    options: dict[str, list[str]]
    flags: set[str]
    env: dict[str, str]

    @property
    def constrained(self) -> bool:
        return bool(
            self.options.get("-c") or self.options.get("--constraint") or "PIP_CONSTRAINT" in self.env
        )

    @property
    def index_urls(self) -> list[str]:
        names = ("--index-url", "-i", "--extra-index-url")
        return [url for name in names for url in self.options.get(name, [])]


PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f",
    "--find-links", "-d", "--dest", "-w", "--wheel-dir", "--root-user-action", "-t", "--target",
    "--prefix", "--platform", "--python-version", "--only-binary", "--no-binary",
}  # fmt: skip


def shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line, split at &&, ||, ; and |."""
    command: list[str] = []
    for token in shlex.split(script):
        if token in ("&&", "||", ";", "|"):
            if command:
                yield command
            command = []
        else:
            command.append(token)
    if command:
        yield command


def pip_commands(image: str) -> list[PipCommand]:
    found = []
    for stage in dockerfile(image).stages:
        for run in stage.all("RUN"):
            script = re.sub(r"^(--mount=\S+\s+)+", "", run.value)
            for words in shell_commands(script):
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    key, _, val = words.pop(0).partition("=")
                    env[key] = val
                if "pip" in words:
                    at = words.index("pip")  # `python -m pip ...`
                else:
                    at = next((i for i, w in enumerate(words) if w.endswith("/pip")), -1)
                if at < 0 or at + 1 >= len(words):
                    continue
                subcommand, rest = words[at + 1], words[at + 2 :]
                options: dict[str, list[str]] = {}
                flags: set[str] = set()
                requirements: list[str] = []
                while rest:
                    word = rest.pop(0)
                    if word.startswith("-"):
                        key, eq, val = word.partition("=")
                        if eq:
                            options.setdefault(key, []).append(stage.expand(val))
                        elif key in PIP_OPTIONS_WITH_VALUE:
                            options.setdefault(key, []).append(stage.expand(rest.pop(0)))
                        else:
                            flags.add(key)
                    else:
                        requirements.append(stage.expand(word))
                found.append(PipCommand(image, stage, subcommand, requirements, options, flags, env))
    return found


def is_local(requirement: str) -> bool:
    return requirement == "." or ".whl" in requirement or requirement.startswith(("/", "./"))


def runtime_installs(image: str) -> list[PipCommand]:
    """The `pip install`s that fill the runtime: the final stage's own, or else (a virtualenv
    copied from a build stage) the build stages'."""
    installs = [c for c in pip_commands(image) if c.subcommand == "install"]
    final = [c for c in installs if c.stage is dockerfile(image).final]
    return final or installs


def wamfleet_extras(image: str) -> set[str]:
    """Extras of the wamfleet wheel installed into the image's runtime."""
    extras: set[str] = set()
    for cmd in runtime_installs(image):
        for requirement in cmd.requirements:
            match = re.search(r"wamfleet-\S*\.whl\)?\[([\w,-]+)\]$", requirement)
            if match:
                extras |= set(match.group(1).split(","))
    return extras


def image_requirements(image: str) -> list[str]:
    """What the image's runtime gets: `wamfleet[extras]` and every other requirement named."""
    named = {r for cmd in runtime_installs(image) for r in cmd.requirements if not is_local(r)}
    return [f"wamfleet[{','.join(sorted(wamfleet_extras(image)))}]", *sorted(named)]


def pins(path: Path) -> dict[str, str]:
    """name -> exact version of a constraints file."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: not an exact pin: {line}"
            found[canonicalize_name(req.name)] = specs[0].version
    return found


CPU_TORCH = pins(ROOT / "constraints" / "cpu.txt")["torch"]
IMAGE_PINS = pins(DOCKER / "constraints.txt")


def image_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] or None
    if tag:
        name = name[: -len(tag) - 1]
    return name, tag, digest or None


# ---- the installed dependency tree (this environment has every extra) ----------------------


def closure(roots: Iterable[str]) -> set[str]:
    """Canonical names of the distributions `roots` need, extras and markers applied."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    names: set[str] = set()
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(
                f"{req.name} is not installed here: install wamfleet with every extra (scripts/bootstrap.sh)"
            )
        names.add(key[0])
        environments = [{"extra": extra} for extra in (req.extras or {""})]
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                stack.append(child)
    return names


def third_party_imports(files: Iterable[Path], top_level_only: bool = False) -> dict[str, set[str]]:
    """Top-level module name -> files importing it (stdlib and wamfleet left out)."""
    found: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("wamfleet", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def py(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


CLI = ROOT / "platform" / "cli"
PLATFORM_CORE = [p for p in py("platform") if CLI not in p.parents]
# What each image runs. The `wamfleet` entry point imports every CLI module, so their
# module-level imports count everywhere; the function-level ones only where that command runs.
IMAGE_CODE: dict[str, tuple[list[Path], list[Path]]] = {
    "platform": (
        [*PLATFORM_CORE, *(CLI / f for f in ("main.py", "common.py", "platform_cmd.py", "rollout_cmd.py"))],
        py("platform/cli"),
    ),
    "serving": (
        [
            *py("serving", "model", "platform/contracts"),
            ROOT / "platform" / "settings.py",
            CLI / "serve_cmd.py",
        ],
        py("platform/cli"),
    ),
    "pipeline": (py("pipelines", "fleet_agent", "model", "serving", "platform"), []),
}


# ---- base images, users, stages -------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_every_base_image_is_pinned_to_a_version(image: str) -> None:
    parsed = dockerfile(image)
    names = {s.name for s in parsed.stages if s.name}
    for stage in parsed.stages:
        if stage.base in names:
            continue  # a previous stage
        assert "$" not in stage.base, f"{image}: FROM {stage.base}: a variable without a default"
        _, tag, digest = image_ref(stage.base)
        assert tag, f"{image}: FROM {stage.base} has no tag"
        assert tag != "latest" and re.match(r"v?\d+\.\d+\.\d+", tag), (
            f"{image}: FROM {stage.base}: not an exact version tag (major.minor.patch)"
        )
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image}: bad digest in {stage.base}"


@pytest.mark.parametrize("image", IMAGES)
def test_bases_match_the_project_python_and_ray(image: str) -> None:
    python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in dockerfile(image).stages:
        name, tag, _ = image_ref(stage.base)
        if name.endswith("python"):
            assert tag and Version(tag.split("-")[0]) in python, f"{image}: {stage.base} outside {python}"
        elif name.endswith("rayproject/ray"):
            match = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", tag or "")
            assert match, f"{image}: {stage.base}: expected <ray version>-pyXY-cuXYZ"
            assert match.group(1) == IMAGE_PINS["ray"], (
                "Ray in the base must equal docker/constraints.txt's ray"
            )
            assert Version(f"{match.group(2)}.{match.group(3)}") in python
            assert stage.args.get("TORCH_CUDA") in (None, match.group(4))


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_uid_10001(image: str) -> None:
    users = dockerfile(image).final.all("USER")
    assert users, f"{image}: the final stage sets no USER (it would run as root)"
    assert users[-1].value.split(":")[0] == UID, f"{image}: USER {users[-1].value}, want {UID}"
    assert users[-1].value.replace(":", "").isdigit(), "numeric, so runAsNonRoot can verify it"
    last_user = users[-1].line
    assert all(i.line < last_user for i in dockerfile(image).final.all("RUN")), "RUN after the last USER"


# The one compiler a final stage may carry, and why: GPU predictors run with --compile, and
# Triton builds its CUDA launcher with the system C compiler the first time a kernel compiles.
RUNTIME_COMPILERS = {"serving": {"gcc", "libc6-dev"}}


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_installs_no_build_tools(image: str) -> None:
    allowed = RUNTIME_COMPILERS.get(image, set())
    for run in dockerfile(image).final.all("RUN"):
        for words in shell_commands(re.sub(r"^(--mount=\S+\s+)+", "", run.value)):
            if words[:1] == ["apt-get"] and "install" in words:
                packages = {w for w in words if not w.startswith("-") and w not in ("apt-get", "install")}
                bad = {p for p in packages if p in BUILD_TOOLS or p.endswith("-dev")} - allowed
                assert not bad, f"{image}: build tools in the final stage: {sorted(bad)}"
    for cmd in pip_commands(image):
        if cmd.stage is dockerfile(image).final:
            assert "--no-index" in cmd.flags, f"{image}: the final stage may install prebuilt wheels only"


@pytest.mark.parametrize("image", IMAGES)
def test_stage_variables_are_declared_in_the_stage(image: str) -> None:
    # A global ARG is not visible inside a stage until redeclared: an undeclared ${X} is empty.
    for stage in dockerfile(image).stages:
        known = {"PATH", "HOME"} | set(stage.args)
        for instruction in stage.instructions:
            if instruction.keyword in ("ENV", "LABEL", "RUN", "HEALTHCHECK"):
                pattern = r"\$\{(\w+)\}" if instruction.keyword == "RUN" else r"\$\{(\w+)\}|\$([A-Za-z_]\w*)"
                for match in re.finditer(pattern, instruction.value):
                    name = match.group(1) or match.group(2)
                    assert name in known, (
                        f"{image}.Dockerfile:{instruction.line}: ${name} is not declared here"
                    )
            if instruction.keyword == "ENV":
                known |= set(env_pairs(instruction.value))


# ---- pip, torch, extras ---------------------------------------------------------------------


def test_image_constraints_pin_the_same_torch_as_the_cpu_venv() -> None:
    assert IMAGE_PINS["torch"] == CPU_TORCH


@pytest.mark.parametrize("image", IMAGES)
def test_every_pip_install_is_pinned(image: str) -> None:
    commands = [c for c in pip_commands(image) if c.subcommand in ("install", "download", "wheel")]
    assert commands, f"{image}: no pip install found"
    for cmd in commands:
        for requirement in cmd.requirements:
            if is_local(requirement):
                continue
            req = Requirement(requirement)
            exact = [s for s in req.specifier if s.operator == "=="]
            assert exact or cmd.constrained, f"{image}: `pip {cmd.subcommand} {requirement}` is not pinned"
            if canonicalize_name(req.name) == "torch":
                assert exact and Version(exact[0].version).public == CPU_TORCH, (
                    f"{image}: {requirement}: want torch=={CPU_TORCH} (constraints/cpu.txt)"
                )
            else:
                assert canonicalize_name(req.name) in IMAGE_PINS, (
                    f"{image}: {req.name} not in constraints.txt"
                )
        for constraint in cmd.options.get("-c", []) + cmd.options.get("--constraint", []):
            assert constraint.endswith("docker/constraints.txt") or constraint == "/tmp/constraints.txt"


@pytest.mark.parametrize("image", IMAGES)
def test_only_torch_comes_from_another_index(image: str) -> None:
    # Anything else from a second index invites dependency confusion.
    for cmd in pip_commands(image):
        if not cmd.index_urls:
            continue
        assert [canonicalize_name(Requirement(r).name) for r in cmd.requirements] == ["torch"]
        assert "--no-deps" in cmd.flags, "torch's dependencies come from PyPI"
        assert all(re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", u) for u in cmd.index_urls)


@pytest.mark.parametrize("image", GPU_IMAGES)
def test_gpu_images_install_the_cuda_build_of_the_pinned_torch(image: str) -> None:
    torch = [
        Requirement(r)
        for cmd in runtime_installs(image)
        for r in cmd.requirements
        if not is_local(r) and canonicalize_name(Requirement(r).name) == "torch"
    ]
    assert torch, f"{image}: torch is not installed"
    for req in torch:
        version = Version(next(iter(req.specifier)).version)
        assert version.public == CPU_TORCH
        assert version.local and re.fullmatch(r"cu\d+", version.local), f"{image}: {req} is not a CUDA build"
        downloads = [c for c in pip_commands(image) if c.index_urls]
        assert any(u.endswith(f"/{version.local}") for c in downloads for u in c.index_urls)
        base_cuda = re.search(r"-(cu\d+)", dockerfile(image).final.base)
        if base_cuda:
            assert base_cuda.group(1) == version.local, f"{image}: base {base_cuda.group(1)}, torch {version}"


def test_platform_image_has_no_torch() -> None:
    extras = wamfleet_extras("platform")
    assert "platform" in extras
    assert not extras & TORCH_EXTRAS, f"platform image extras {sorted(extras)} pull torch"
    installed = closure(image_requirements("platform"))
    heavy = installed & {"torch", "ray", "kserve", "diffusers", "transformers", "metaworld", "mujoco"}
    assert not heavy, f"the platform image would install {sorted(heavy)}"


def test_gpu_images_have_their_extras() -> None:
    assert {"serve", "model"} <= wamfleet_extras("serving")
    # `platform`: the pipeline steps read and write the catalog (PostgreSQL through psycopg).
    assert {"platform", "train", "model", "sim", "serve"} <= wamfleet_extras("pipeline")


@pytest.mark.parametrize("image", IMAGES)
def test_every_imported_library_is_installed_in_the_image(image: str) -> None:
    installed = closure(image_requirements(image))
    providers = packages_distributions()
    full, top_level = IMAGE_CODE[image]
    imports = third_party_imports(full)
    for module, files in third_party_imports(top_level, top_level_only=True).items():
        imports.setdefault(module, set()).update(files)
    missing = {
        module: sorted(files)[:3]
        for module, files in imports.items()
        if not {canonicalize_name(d) for d in providers.get(module, [])} & installed
    }
    assert not missing, f"{image} image lacks what its code imports: {missing}"


# ---- entrypoints, health, labels ------------------------------------------------------------


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), "use the exec (JSON) form"
    return value


def assert_runs_a_real_command(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WAMFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert argv[0] == "wamfleet", f"{argv}: not the wamfleet command"
    path = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        path.append(word)
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"`wamfleet {' '.join(path)}` does not exist: {result.output}"
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in result.output, f"`wamfleet {' '.join(path)}` has no {word}"


def test_the_cli_has_the_commands_images_and_chart_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("platform", "serve", "pipelines", "retrain", "rollout"):
        assert re.search(rf"^\W*{command}\b", result.output, re.M), f"`wamfleet {command}` is missing"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_a_real_wamfleet_command(
    image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    final = dockerfile(image).final
    entrypoint = [exec_form(i) for i in final.all("ENTRYPOINT")][-1:]
    cmd = [exec_form(i) for i in final.all("CMD")][-1:]
    argv = (entrypoint[0] if entrypoint else []) + (cmd[0] if cmd else [])
    assert argv, f"{image}: no ENTRYPOINT or CMD"
    assert_runs_a_real_command(argv, monkeypatch, tmp_path)


def test_platform_image_serves_the_api_on_all_interfaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    final = dockerfile("platform").final
    argv = exec_form(final.all("ENTRYPOINT")[-1]) + exec_form(final.all("CMD")[-1])
    assert argv[:3] == ["wamfleet", "platform", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert env_pairs(final.all("ENV")[-1].value).get("WAMFLEET_ROLLOUT_BACKEND") == "kserve"


def test_the_inference_services_the_platform_creates_run_in_the_serving_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from wamfleet.platform.rollouts.backends import kserve_manifests as kserve

    obj = kserve.render_inference_service(kserve.KServeTemplate(namespace="wamfleet"), "3")
    container = obj["spec"]["predictor"]["containers"][0]
    assert_runs_a_real_command(container["command"] + container["args"], monkeypatch, tmp_path)
    exposed = [i.value for i in dockerfile("serving").final.all("EXPOSE")]
    assert exposed == [str(kserve.PORT)] == [str(p["containerPort"]) for p in container["ports"]]


def health_url(image: str) -> str:
    checks = dockerfile(image).final.all("HEALTHCHECK")
    assert checks, f"{image}: no HEALTHCHECK"
    value = checks[-1].value
    match = re.search(r"http://127\.0\.0\.1:(?:%s|(\d+))(/[\w/.-]*)", value)
    assert match, f"{image}: HEALTHCHECK asks no local URL"
    default = re.search(r"environ\.get\('WAMFLEET_API_PORT', '(\d+)'\)", value)  # ':%s' % the port setting
    port = match.group(1) or (default.group(1) if default else "")
    assert [i.value for i in dockerfile(image).final.all("EXPOSE")] == [port]
    return match.group(2)


def test_platform_health_check_asks_a_real_route(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from wamfleet.platform.api.app import create_app
    from wamfleet.platform.settings import Settings

    api = create_app(Settings(data_dir=tmp_path, admin_token=SecretStr("t")))
    try:
        assert health_url("platform") in {getattr(r, "path", None) for r in api.routes}
    finally:
        api.state.platform.catalog.dispose()
    assert env_pairs(dockerfile("platform").final.all("ENV")[-1].value)["WAMFLEET_API_PORT"] == "8600"


def test_serving_health_check_asks_kserve_readiness() -> None:
    assert health_url("serving") == "/v2/health/ready"
    assert "--start-period=" in dockerfile("serving").final.all("HEALTHCHECK")[-1].value


def test_pipeline_image_documents_why_it_has_no_health_check() -> None:
    assert [i.value for i in dockerfile("pipeline").final.all("HEALTHCHECK")] == ["NONE"]


@pytest.mark.parametrize("image", IMAGES)
def test_oci_labels(image: str) -> None:
    final = dockerfile(image).final
    labels: dict[str, str] = {}
    for label in final.all("LABEL"):
        labels |= {k: final.expand(v) for k, v in env_pairs(label.value).items()}
    for key in ("title", "description", "version", "revision", "source", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"{image}: no org.opencontainers.image.{key}"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.title"] == f"wamfleet-{image}"
    assert labels["org.opencontainers.image.base.name"] == final.base


def test_pipeline_image_bakes_lineage_and_rendering_settings() -> None:
    final = dockerfile("pipeline").final
    assert "WAMFLEET_CODE_VERSION" in final.args
    env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        env |= env_pairs(instruction.value)
    assert env["WAMFLEET_CODE_VERSION"] == "${WAMFLEET_CODE_VERSION}"
    assert env["MUJOCO_GL"] == "egl"
    assert "graphics" in env["NVIDIA_DRIVER_CAPABILITIES"]  # EGL through the NVIDIA driver on GPU nodes
    image = final.expand(env["WAMFLEET_PIPELINE_IMAGE"])
    assert image_ref(image)[1] == PYPROJECT["project"]["version"]
    apt = " ".join(r.value for r in final.all("RUN") if "apt-get install" in r.value)
    for package in ("libegl1", "libgl1", "libegl-mesa0"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", apt), f"{package} is not installed"


# ---- build context --------------------------------------------------------------------------


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus **) as a regex over slash paths."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the context (last match wins; parents count)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, dockerignore_regex(line.lstrip("!"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "wamfleet-data/catalog.db",
        "wamfleet-data/demo/mlflow.db",
        "data/episodes/x.parquet",
        "mlruns/0/meta.yaml",
        "test-artifacts/report.xml",
        ".pytest_cache/v/cache/lastfailed",
        ".hypothesis/examples/x",
        "benchmarks/finetune.py",
        "tests/unit/test_images.py",
        "wamfleet.egg-info/PKG-INFO",
        "platform/api/__pycache__/app.cpython-311.pyc",
        "pipelines/wamfleet-data/objects/x",
        ".env",
        "platform/.env",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert not in_build_context(path)


def test_dockerignore_lets_in_what_the_images_build_from() -> None:
    sources: set[str] = set()
    for image in IMAGES:
        for stage in dockerfile(image).build_stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.value.split() if not w.startswith("--")]
                sources |= set(words[:-1])
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs | {"pyproject.toml", "README.md", "docker/constraints.txt"} <= sources
    for source in sources:
        assert in_build_context(source), f"{source} is copied but .dockerignore leaves it out"
    for package_file in (
        "platform/catalog/migrations/script.py.mako",
        "platform/settings.py",
        "model/config.py",
    ):
        assert (ROOT / package_file).exists()
        assert in_build_context(package_file), package_file


def test_dockerignore_parser_follows_docker_semantics() -> None:
    assert dockerignore_regex("**/__pycache__").fullmatch("a/b/__pycache__")
    assert dockerignore_regex("**/__pycache__").fullmatch("__pycache__")
    assert dockerignore_regex("*.py[cod]").fullmatch("x.pyc")
    assert not dockerignore_regex("*").fullmatch("a/b")  # parents are matched separately


# ---- the deployment docs --------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["docs/deploy.md", "docker/README.md"])
def test_wamfleet_commands_in_the_docs_exist(doc: str) -> None:
    import typer.main

    root = typer.main.get_command(app)  # typer's own click: duck-typed below
    checked = 0
    for line in (ROOT / doc).read_text().splitlines():
        for match in re.finditer(r"(?<![\w/.-])wamfleet\s+([a-z][^`|;&)\n]*)", line):
            command: Any = root
            words = [w.strip("[],") for w in match.group(1).split()]
            path = []
            while words and words[0] in getattr(command, "commands", {}):
                path.append(words[0])
                command = command.commands[words.pop(0)]
            if not path:
                continue  # prose ("the wamfleet command")
            known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            for word in words:
                if word.startswith("--"):
                    option = word.split("=")[0]
                    assert option in known | {"--help"}, f"{doc}: `wamfleet {' '.join(path)}` has no {option}"
            checked += 1
    assert checked >= 3, f"{doc}: found only {checked} wamfleet commands"
