"""The loop's report: ``reports/<timestamp>/`` with summary.md, loop.json and four PNG plots.

Plots (matplotlib, Agg backend, no display): thumbs-up rate per version over time, reward distribution
per version, canary weight timeline with the controller's decisions marked, pairs collected by source
per round. Every number in summary.md comes from the ``LoopRecord``; nothing is computed twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from flywheel.loop.runner import LoopRecord

PLOTS = ("thumbs_up.png", "rewards.png", "canary_weights.png", "pairs_by_source.png")
_MARKERS = {"start": "o", "promote_step": "^", "promote": "*", "rollback": "X", "hold": "."}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def write_report(record: LoopRecord, out: Path) -> Path:
    """Write everything under ``out`` (created); returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.json").write_text(json.dumps(record.to_dict(), indent=2, default=str))
    _plot_thumbs(record, out / PLOTS[0])
    _plot_rewards(record, out / PLOTS[1])
    _plot_weights(record, out / PLOTS[2])
    _plot_pairs(record, out / PLOTS[3])
    summary = out / "summary.md"
    summary.write_text(render_summary(record))
    return summary


def render_summary(record: LoopRecord) -> str:
    cfg = record.config
    lines = [
        f"# Flywheel loop — {record.started_at}",
        "",
        f"{len(record.rounds)} round(s) of {cfg['algo'].upper()}, preference `{cfg['preferences']}`, "
        f"{cfg['interactions_per_round']} rated interactions collected per round; wall time {record.wall_s:.0f} s.",
        f"Seed version `{record.seed_version}`; stable at the end: `{record.final_stable}`.",
        "",
        "## Rounds",
        "",
        "| round | parent | canary | outcome | pairs (train/held-out) | by source | reward-model acc. | "
        "gate win rate | gate KL | collect s | train s | rollout s | rollout requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record.rounds:
        by_source = ", ".join(f"{k} {v}" for k, v in sorted(r.pairs_by_source.items())) or "-"
        acc = "-" if r.reward_accuracy is None else f"{r.reward_accuracy:.2f}"
        win = r.gates.get("reward_win_rate")
        kl = r.gates.get("kl")
        lines.append(
            f"| {r.round} | {r.parent} | {r.candidate or '-'} | {r.outcome} | {r.pairs}/{r.heldout_pairs} | {by_source} | "
            f"{acc} | {_pct(win)} | {'-' if kl is None else f'{kl:.2f}'} | {r.seconds.get('collect', 0):.0f} | "
            f"{r.seconds.get('train', 0):.0f} | {r.seconds.get('rollout', 0):.0f} | {r.rollout_interactions} |"
        )
    if record.error:
        lines += ["", f"**The run stopped on an error**: {record.error}", ""]
        for r in record.rounds:
            if r.outcome == "failed":
                canary = f"; canary `{r.candidate}`: {r.cleanup}" if r.candidate else ""
                lines.append(f"- round {r.round} failed: {r.error}{canary}")
        if not any(r.outcome == "failed" for r in record.rounds):
            lines.append("- it stopped outside a round (the evaluation of a version); the rounds above finished")
    failed = [(r.round, line) for r in record.rounds for line in r.gate_failures]
    if failed:
        lines += ["", "Gate failures (the version is kept on disk, not registered):", ""]
        lines += [f"- round {n}: {line}" for n, line in failed]
    if record.evaluation:
        rules = sorted({name for ev in record.evaluation.values() for name in ev.get("rule_rates", {})})
        lines += [
            "",
            "## Fresh simulated users (held-out topics, each version pinned)",
            "",
            "| version | answers | thumbs-up rate | preference rate | safety-block rate | mean words | "
            + " | ".join(rules) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(rules),
        ]
        for version, ev in record.evaluation.items():
            block = ev["safety_blocks"] / ev["answers"] if ev["answers"] else None
            rates = " | ".join(_pct(ev["rule_rates"].get(name)) for name in rules)
            words = "-" if ev["mean_words"] is None else f"{ev['mean_words']:.1f}"
            lines.append(f"| {version} | {ev['answers']} | {_pct(ev['thumbs_up_rate'])} | {_pct(ev['preference_rate'])} | "
                         f"{_pct(block)} | {words} | {rates} |")  # fmt: skip
        lines += ["", "The rule columns are the behaviour rates: the share of answers where each rule of the "
                      "preference held (among the answers it applies to)."]  # fmt: skip
    decisions = [t for t in record.ticks if t.action not in ("hold", "none")]
    if decisions:
        lines += ["", "## Controller decisions", "", "| t (s) | round | version | action | weight after | why |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {t.t:.0f} | {t.round} | {t.version} | {t.action} | {t.weight:.0%} | {t.reason} |" for t in decisions]
    lines += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in PLOTS]
    lines += ["", "## Configuration", "", "```json", json.dumps(record.config, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_thumbs(record: LoopRecord, path: Path) -> None:
    """Cumulative thumbs-up rate per version, one point per batch of simulated traffic."""
    plt, fig, ax = _figure()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in record.thumbs:
        totals[p.version][0] += p.ups
        totals[p.version][1] += p.rated
        ups, rated = totals[p.version]
        if rated:
            series[p.version].append((p.t, ups / rated))
    for version, points in series.items():
        ax.plot([t for t, _ in points], [r for _, r in points], marker="o", markersize=3, label=version)
    ax.set(xlabel="seconds since the loop started", ylabel="thumbs-up rate (cumulative)", ylim=(0, 1),
           title="Thumbs-up rate per version")  # fmt: skip
    if series:
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def _plot_rewards(record: LoopRecord, path: Path) -> None:
    plt, fig, ax = _figure()
    versions = [v for v, rewards in record.rewards.items() if rewards]
    if versions:
        ax.boxplot([record.rewards[v] for v in versions], tick_labels=versions, showmeans=True)
    else:
        ax.text(0.5, 0.5, "no scored answers (best-of-n off)", ha="center", va="center", transform=ax.transAxes)
    ax.set(ylabel="reward of the served answer", title="Reward distribution per version")
    _save(plt, fig, path)


def _plot_weights(record: LoopRecord, path: Path) -> None:
    plt, fig, ax = _figure()
    by_version: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for tick in record.ticks:
        by_version[tick.version].append(tick)
    for version, ticks in by_version.items():
        (line,) = ax.step([t.t for t in ticks], [t.weight for t in ticks], where="post", label=version)
        for tick in ticks:
            if tick.action in _MARKERS and tick.action != "hold":
                ax.plot(tick.t, tick.weight, marker=_MARKERS[tick.action], color=line.get_color(), markersize=10)
                ax.annotate(tick.action, (tick.t, tick.weight), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set(xlabel="seconds since the loop started", ylabel="canary weight", ylim=(-0.05, 1.1),
           title="Canary weight and controller decisions")  # fmt: skip
    if by_version:
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def _plot_pairs(record: LoopRecord, path: Path) -> None:
    plt, fig, ax = _figure()
    sources = sorted({s for r in record.rounds for s in r.pairs_by_source})
    bottom = [0] * len(record.rounds)
    labels = [f"round {r.round}" for r in record.rounds]
    for source in sources:
        counts = [r.pairs_by_source.get(source, 0) for r in record.rounds]
        ax.bar(labels, counts, bottom=bottom, label=source)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set(ylabel="preference pairs", title="Pairs collected by source")
    if sources:
        ax.legend(fontsize=8)
    _save(plt, fig, path)
