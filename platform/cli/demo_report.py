"""The demo's report: one self-contained HTML page (plots inlined as PNG) plus report.json.

Everything in it is read back from the running platform (the dashboard's read API, the episode
catalog) and from MLflow, not from the demo's own bookkeeping, so the report shows what an
operator would find: episodes per task and robot, the curation funnel of each retrain, training
curves, closed-loop success per version (the pipeline's evaluation and the fleet's own episodes),
serving latency, and every rollout decision with its reason.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.contracts.curation import CurationReport
from wamfleet.platform.contracts.episode import EpisodeSource
from wamfleet.platform.contracts.ingest import EpisodeSummary
from wamfleet.platform.contracts.lineage import TAG_PARENT
from wamfleet.platform.contracts.rollout import TAG_LATENCY_P95_MS
from wamfleet.platform.rollouts.gates import wilson_interval95
from wamfleet.platform.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_DIR = "report"


class VersionRow(BaseModel):
    version: str
    parent: str | None = None
    retrain_run_id: str | None = None
    dataset_hash: str | None = None
    aliases: list[str] = Field(default_factory=list)
    train_steps: int = 0
    final_train_loss: float | None = None
    eval_success_rate: float | None = Field(default=None, description="pipeline evaluation, held-out layouts")
    eval_successes: int | None = None
    eval_episodes: int | None = None
    eval_action_mse: float | None = None
    gate_passed: bool | None = None
    fleet_episodes: int = 0
    fleet_successes: int = 0
    fleet_success_rate: float | None = Field(default=None, description="the fleet's autonomous episodes")
    latency_p95_ms: float | None = Field(default=None, description="median over episodes of each p95")


class DecisionRow(BaseModel):
    action: str
    from_stage: str
    to_stage: str
    reason: str
    actor: str


class RolloutRow(BaseModel):
    rollout_id: str
    candidate_version: str
    champion_version: str | None
    final_stage: str
    decisions: list[DecisionRow]


class FunnelRow(BaseModel):
    retrain_run_id: str
    model_version: str | None
    steps: list[tuple[str, int]]


class DemoReport(BaseModel):
    profile: str
    created_at: datetime
    model_name: str
    dashboard_url: str
    mlflow_url: str
    episodes: int
    autonomous_episodes: int
    episodes_by_task_and_robot: dict[str, dict[str, int]]
    versions: list[VersionRow]
    rollouts: list[RolloutRow]
    curation: list[FunnelRow]


def funnel(report: CurationReport) -> list[tuple[str, int]]:
    """What was left after each curation step, in order."""
    validated = report.episodes_in - report.not_validated
    filtered = validated - sum(report.dropped.values())
    deduplicated = filtered - report.duplicates_removed
    return [
        ("in snapshot", report.episodes_in),
        ("validated", validated),
        ("passed quality filters", filtered),
        ("after near-duplicate removal", deduplicated),
        ("kept after diversity caps", report.kept),
        ("train", report.train),
        ("holdout", report.holdout),
    ]


def _task_of(e: EpisodeSummary) -> str:
    return e.tags.get("env", e.task)


def _count(metric: float | None) -> int | None:
    return None if metric is None else round(metric)


def eval_text(v: VersionRow) -> str:
    """'6/10 = 0.60 [0.31, 0.83]': the evaluation's count, rate and 95% interval."""
    if v.eval_successes is None or not v.eval_episodes:
        return "-" if v.eval_success_rate is None else f"{v.eval_success_rate:.2f}"
    low, high = wilson_interval95(v.eval_successes, v.eval_episodes)
    rate = v.eval_successes / v.eval_episodes
    return f"{v.eval_successes}/{v.eval_episodes} = {rate:.2f} [{low:.2f}, {high:.2f}]"


def gather(
    admin: AdminClient, settings: Settings, profile: str, dashboard_url: str, mlflow_url: str
) -> tuple[DemoReport, dict[str, list[float]], dict[str, list[float]]]:
    """The report's numbers, plus the training curves and latencies per version for the plots."""
    from mlflow import MlflowClient

    episodes = admin.all_episodes()
    models = admin.model_versions()
    if models.error:
        raise RuntimeError(models.error)
    runs = {r.model_version: r for r in admin.retrain_runs() if r.model_version}
    client = MlflowClient(tracking_uri=settings.effective_mlflow_uri)
    by_task_robot: dict[str, Counter[str]] = defaultdict(Counter)
    for e in episodes:
        by_task_robot[_task_of(e)][e.robot_id] += 1
    curves: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    versions: list[VersionRow] = []
    for mv in sorted(models.versions, key=lambda v: int(v.version)):
        served = f"{models.model_name}/{mv.version}"
        driven = [e for e in episodes if e.source == EpisodeSource.autonomous and e.policy_version == served]
        successes = sum(bool(e.outcome.success) for e in driven)
        latencies[mv.version] = [
            float(e.tags[TAG_LATENCY_P95_MS]) for e in driven if TAG_LATENCY_P95_MS in e.tags
        ]
        history = client.get_metric_history(mv.run_id, "train_loss") if mv.run_id else []
        curves[mv.version] = [m.value for m in sorted(history, key=lambda m: m.step)]
        run = runs.get(mv.version)
        gate = mv.metrics.get("gate_passed")
        versions.append(
            VersionRow(
                version=mv.version,
                parent=mv.lineage.get(TAG_PARENT) or None,
                retrain_run_id=run.run_id if run else None,
                dataset_hash=run.dataset_hash if run else None,
                aliases=mv.aliases,
                train_steps=len(curves[mv.version]),
                final_train_loss=curves[mv.version][-1] if curves[mv.version] else None,
                eval_success_rate=mv.metrics.get("eval_success_rate"),
                eval_successes=_count(mv.metrics.get("eval_successes")),
                eval_episodes=_count(mv.metrics.get("eval_episodes")),
                eval_action_mse=mv.metrics.get("eval_offline_action_mse"),
                gate_passed=None if gate is None else gate >= 0.5,
                fleet_episodes=len(driven),
                fleet_successes=successes,
                fleet_success_rate=successes / len(driven) if driven else None,
                latency_p95_ms=statistics.median(latencies[mv.version]) if latencies[mv.version] else None,
            )
        )
    rollouts = [
        RolloutRow(
            rollout_id=v.rollout.rollout_id,
            candidate_version=v.rollout.candidate_version,
            champion_version=v.rollout.champion_version,
            final_stage=v.rollout.stage,
            decisions=[
                DecisionRow(
                    action=d.action,
                    from_stage=d.from_stage,
                    to_stage=d.to_stage,
                    reason=d.reason,
                    actor=d.actor,
                )
                for d in v.rollout.decisions
            ],
        )
        for v in reversed(admin.rollout_views())
    ]
    curation = [
        FunnelRow(retrain_run_id=c.retrain_run_id, model_version=c.model_version, steps=funnel(c.report))
        for d in reversed(admin.datasets())
        for c in d.curated
        if c.report is not None
    ]
    report = DemoReport(
        profile=profile,
        created_at=datetime.now(UTC),
        model_name=models.model_name,
        dashboard_url=dashboard_url,
        mlflow_url=mlflow_url,
        episodes=len(episodes),
        autonomous_episodes=sum(e.source == EpisodeSource.autonomous for e in episodes),
        episodes_by_task_and_robot={
            task: dict(sorted(c.items())) for task, c in sorted(by_task_robot.items())
        },
        versions=versions,
        rollouts=rollouts,
        curation=curation,
    )
    return report, curves, latencies


# Plots -----------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _figure(width: float = 6.4, height: float = 3.4) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def plot_episodes(report: DemoReport) -> str:
    fig, ax = _figure()
    tasks = list(report.episodes_by_task_and_robot)
    robots = sorted({r for counts in report.episodes_by_task_and_robot.values() for r in counts})
    bottom = [0] * len(tasks)
    for robot in robots:
        counts = [report.episodes_by_task_and_robot[t].get(robot, 0) for t in tasks]
        ax.bar(tasks, counts, bottom=bottom, label=robot)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_ylabel("episodes")
    ax.set_title("Episodes per task and robot (expert + autonomous)")
    ax.legend(fontsize="small")
    return _png(fig)


def plot_funnel(report: DemoReport) -> str:
    fig, ax = _figure(height=0.9 + 0.45 * max(1, len(report.curation)) * 4)
    for k, row in enumerate(report.curation):
        labels = [f"{label}" for label, _ in row.steps]
        ax.barh(
            [f"{label} (v{row.model_version or '?'})" for label in labels],
            [count for _, count in row.steps],
            color=f"C{k}",
            label=f"retrain for version {row.model_version or '?'}",
        )
    ax.invert_yaxis()
    ax.set_xlabel("episodes")
    ax.set_title("Curation funnel per retrain")
    ax.legend(fontsize="small")
    return _png(fig)


def plot_curves(curves: dict[str, list[float]]) -> str:
    fig, ax = _figure()
    for version, losses in curves.items():
        if losses:
            ax.plot(range(1, len(losses) + 1), losses, label=f"version {version}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (flow matching)")
    ax.set_yscale("log")
    ax.set_title("Training curves")
    ax.legend(fontsize="small")
    return _png(fig)


def plot_success(report: DemoReport) -> str:
    """Success per version, evaluation (held-out layouts) beside the fleet's, with 95% intervals."""
    fig, ax = _figure()
    names = [f"v{v.version}" for v in report.versions]
    x = list(range(len(names)))
    for offset, label, counts in (
        (-0.2, "evaluation", [(v.eval_successes, v.eval_episodes) for v in report.versions]),
        (0.2, "fleet", [(v.fleet_successes, v.fleet_episodes) for v in report.versions]),
    ):
        rates, low, high = [], [], []
        for k, n in counts:
            rate = k / n if k is not None and n else 0.0
            lo, hi = wilson_interval95(k, n) if k is not None and n else (0.0, 0.0)
            rates.append(rate)
            low.append(rate - lo)
            high.append(hi - rate)
        ax.bar([i + offset for i in x], rates, 0.4, label=label, yerr=[low, high], capsize=4)
        for i, (k, n) in enumerate(counts):
            if n:
                ax.annotate(f"{k}/{n}", (i + offset, 0.02), ha="center", fontsize="small")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title("Closed-loop success per version")
    ax.legend(fontsize="small")
    return _png(fig)


def plot_latency(latencies: dict[str, list[float]]) -> str:
    fig, ax = _figure()
    shown = {v: values for v, values in latencies.items() if values}
    if shown:
        ax.boxplot(list(shown.values()), tick_labels=[f"v{v}" for v in shown])
    ax.set_ylabel("per-episode p95 latency (ms)")
    ax.set_title("Serving latency seen by the robots (action chunk requests)")
    return _png(fig)


# HTML ------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(header: list[str], rows: list[list[str]], test_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table data-testid="{test_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: DemoReport, curves: dict[str, list[float]], latencies: dict[str, list[float]]) -> str:
    versions = _table(
        [
            "version",
            "parent",
            "aliases",
            "steps",
            "final loss",
            "evaluation success",
            "gate",
            "fleet success",
            "latency p95 (median)",
        ],
        [
            [
                f"{report.model_name}/{v.version}",
                v.parent or "none",
                ", ".join(v.aliases) or "-",
                str(v.train_steps),
                "-" if v.final_train_loss is None else f"{v.final_train_loss:.3f}",
                eval_text(v),
                {True: "passed", False: "failed", None: "-"}[v.gate_passed],
                f"{_pct(v.fleet_success_rate)} ({v.fleet_successes}/{v.fleet_episodes})",
                "-" if v.latency_p95_ms is None else f"{v.latency_p95_ms:.0f} ms",
            ]
            for v in report.versions
        ],
        "versions",
    )
    rollouts = "".join(
        f"<h3>Rollout {html.escape(r.rollout_id)}: version {html.escape(r.candidate_version)} "
        f"against {html.escape(r.champion_version or 'no champion')}, ended "
        f'<span data-testid="rollout-stage">{html.escape(r.final_stage)}</span></h3>'
        + _table(
            ["action", "from", "to", "by", "reason"],
            [[d.action, d.from_stage, d.to_stage, d.actor, d.reason] for d in r.decisions],
            "decisions",
        )
        for r in report.rollouts
    )
    plots = [
        ("Episodes", plot_episodes(report)),
        ("Curation", plot_funnel(report)),
        ("Training", plot_curves(curves)),
        ("Closed-loop success", plot_success(report)),
        ("Serving latency", plot_latency(latencies)),
    ]
    figures = "".join(
        f'<figure><figcaption>{html.escape(title)}</figcaption><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{png}"></figure>'
        for title, png in plots
    )
    links = (
        f'<p>Dashboard: <a href="{html.escape(report.dashboard_url)}">{html.escape(report.dashboard_url)}</a>'
        f' · MLflow UI: <a href="{html.escape(report.mlflow_url)}">{html.escape(report.mlflow_url)}</a>'
        " (live while the demo serves them)</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wamfleet demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figcaption {{ font-weight: 600; }}
img {{ max-width: 34em; }}
</style></head><body>
<h1>wamfleet demo report ({html.escape(report.profile)} profile)</h1>
<p>{report.episodes} episodes in the catalog, {report.autonomous_episodes} of them driven autonomously by
the policy versions below; made {report.created_at:%Y-%m-%d %H:%M:%S} UTC.</p>
{links}
<h2>Policy versions</h2>
{versions}
<h2>Rollouts: every decision</h2>
{rollouts}
<h2>Plots</h2>
{figures}
</body></html>
"""


def write_report(
    admin: AdminClient, settings: Settings, profile: str, dashboard_url: str, mlflow_url: str
) -> tuple[Path, DemoReport]:
    """Writes <data_dir>/report/index.html and report.json; returns the HTML path and the numbers."""
    report, curves, latencies = gather(admin, settings, profile, dashboard_url, mlflow_url)
    out = settings.data_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    page = out / "index.html"
    page.write_text(render_html(report, curves, latencies))
    return page, report
