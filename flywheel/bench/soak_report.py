"""What `flywheel bench soak` shows and writes: the rich table, the PNG plot, the Markdown section."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from flywheel.bench.soak_analysis import RssSample, SoakSummary, Verdict

MIB = 1024 * 1024


def _met(v: Verdict) -> str:
    return "n/a" if v.met is None else ("yes" if v.met else "no")


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_tables(summary: SoakSummary, console: Console) -> None:
    windows = Table(title="per window (chat latency counted from the scheduled start)")
    for col in ("window s", "phase", "chat", "fb", "errors", "chat p50 ms", "chat p99 ms", "fb p99 ms",
                *(f"{n} MiB" for n in summary.rss_growth_pct)):  # fmt: skip
        windows.add_column(col, justify="right")
    for w in summary.windows:
        windows.add_row(
            f"{w.start:.0f}-{w.end:.0f}", "warm-up" if w.warmup else "", str(w.chat), str(w.feedback),
            str(sum(w.errors.values())), _num(w.chat_p50_ms), _num(w.chat_p99_ms), _num(w.feedback_p99_ms),
            *(_num(w.rss_median[n] / MIB if n in w.rss_median else None) for n in summary.rss_growth_pct),
        )  # fmt: skip
    console.print(windows)
    table = Table(title="flywheel bench soak: targets")
    for col in ("measure", "measured", "target", "met"):
        table.add_column(col)
    for v in summary.verdicts:
        table.add_row(v.measure, v.measured, v.target, _met(v))
    console.print(table)


def plot(summary: SoakSummary, samples: list[RssSample], warmup_s: float, path: Path, title: str) -> None:
    """Two panels on one time axis (minutes): RSS per process group, and chat p50/p99 per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(9, 7), dpi=100, sharex=True)
    for name in summary.rss_growth_pct:
        points = [(s.t / 60, s.rss[name] / MIB) for s in samples if name in s.rss]
        ax_rss.plot([t for t, _ in points], [v for _, v in points], label=name)
    ax_rss.set_yscale("log")  # a 20 MiB broker and a 3 GiB vLLM on one axis; equal growth, equal slope
    ax_rss.set(ylabel="RSS incl. children (MiB, log)", title=title)
    ax_rss.legend(fontsize=8, loc="upper left")
    mids = [(w.start + w.end) / 2 / 60 for w in summary.windows]
    for attr, label in (("chat_p50_ms", "chat p50"), ("chat_p99_ms", "chat p99"), ("feedback_p99_ms", "feedback p99")):
        ax_lat.plot(mids, [getattr(w, attr) for w in summary.windows], marker="o", markersize=3, label=label)
    ax_lat.set(xlabel="minutes since the driver started", ylabel="latency per window (ms)")
    ax_lat.legend(fontsize=8, loc="upper left")
    for ax in (ax_rss, ax_lat):
        ax.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(summary: SoakSummary, header: str, setup: str, plot_link: str, stored: str) -> str:
    lines = ["## Soak (`flywheel bench soak`)", "", header.rstrip(), "", setup.strip(), "",
             "| measure | measured | target | met |", "| --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {v.measure} | {v.measured} | {v.target} | {_met(v)} |" for v in summary.verdicts]
    lines += ["", f"Requests: {summary.requests.get('chat', 0)} chat, {summary.requests.get('feedback', 0)} "
                  f"feedback; ratings in the store / accepted: {stored}.", ""]  # fmt: skip
    names = list(summary.rss_growth_pct)
    lines += ["| window | chat | feedback | errors | chat p50 ms | chat p99 ms | feedback p99 ms | "
              + " | ".join(f"{n} MiB" for n in names) + " |",
              "| --- " * (7 + len(names)) + "|"]  # fmt: skip
    for w in summary.windows:
        rss = " | ".join(_num(w.rss_median[n] / MIB if n in w.rss_median else None) for n in names)
        phase = " (warm-up)" if w.warmup else ""
        latency = " | ".join(_num(v) for v in (w.chat_p50_ms, w.chat_p99_ms, w.feedback_p99_ms))
        lines.append(f"| {w.start:.0f}-{w.end:.0f} s{phase} | {w.chat} | {w.feedback} | {sum(w.errors.values())} "
                     f"| {latency} | {rss} |")
    lines += ["", f"![soak: RSS per process and latency over time]({plot_link})"]
    return "\n".join(lines)
