"""The pure half of `flywheel bench soak`: turn raw request records and RSS samples into per-window
figures, growth and drift after warm-up, and verdicts against the issue's targets.

Nothing here starts a process or reads a clock, so the judgement can be unit-tested on made-up data.
Time is seconds since the driver started; windows are ``[k * window_s, (k + 1) * window_s)``, the last
one absorbing a short tail, and a window that starts before the end of warm-up counts as warm-up.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from flywheel.bench.feedback_load import percentile

TARGET_RSS_GROWTH_PCT = 10.0
TARGET_ERRORS = 0
TARGET_P99_DRIFT_PCT = 20.0


@dataclass(frozen=True)
class RequestRecord:
    """One chat or feedback request: when it was scheduled, how long it took, and how it failed (if it did)."""

    kind: str  # "chat" | "feedback"
    t: float  # scheduled start, seconds since the driver started
    latency_s: float | None  # None when it failed
    error: str | None = None


@dataclass(frozen=True)
class RssSample:
    t: float
    rss: dict[str, int]  # process group name -> bytes (the process plus all its descendants)


@dataclass
class Window:
    index: int
    start: float
    end: float
    warmup: bool
    chat: int = 0
    feedback: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    chat_p50_ms: float | None = None
    chat_p99_ms: float | None = None
    feedback_p50_ms: float | None = None
    feedback_p99_ms: float | None = None
    rss_median: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    measure: str
    measured: str
    target: str
    met: bool | None  # None: not measurable (e.g. no window after warm-up)


@dataclass
class SoakSummary:
    windows: list[Window]
    rss_growth_pct: dict[str, float | None]
    p99_drift_pct: float | None
    errors_total: Counter[str]
    errors_after_warmup: Counter[str]
    requests: Counter[str]
    verdicts: list[Verdict]


def window_count(duration_s: float, window_s: float) -> int:
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    return max(1, int(duration_s // window_s))


def window_index(t: float, window_s: float, count: int) -> int:
    """The window ``t`` falls in; times past the last full window belong to it (a short tail)."""
    return min(max(0, int(t // window_s)), count - 1)


def growth_pct(first: float | None, last: float | None) -> float | None:
    """``last`` relative to ``first`` in percent; None when either is missing or ``first`` is not positive."""
    if first is None or last is None or first <= 0:
        return None
    return (last - first) / first * 100.0


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def build_windows(
    records: list[RequestRecord], samples: list[RssSample], duration_s: float, window_s: float, warmup_s: float
) -> list[Window]:
    count = window_count(duration_s, window_s)
    windows = [
        Window(k, k * window_s, duration_s if k == count - 1 else (k + 1) * window_s, warmup=k * window_s < warmup_s)
        for k in range(count)
    ]
    latencies: dict[tuple[int, str], list[float]] = {}
    for r in records:
        w = windows[window_index(r.t, window_s, count)]
        setattr(w, r.kind, getattr(w, r.kind) + 1)
        if r.error is not None:
            w.errors[f"{r.kind}:{r.error}"] += 1
        elif r.latency_s is not None:
            latencies.setdefault((w.index, r.kind), []).append(r.latency_s)
    rss: dict[tuple[int, str], list[int]] = {}
    for s in samples:
        k = window_index(s.t, window_s, count)
        for name, value in s.rss.items():
            rss.setdefault((k, name), []).append(value)
    for w in windows:
        chat, fb = latencies.get((w.index, "chat"), []), latencies.get((w.index, "feedback"), [])
        w.chat_p50_ms, w.chat_p99_ms = _ms(percentile(chat, 50)), _ms(percentile(chat, 99))
        w.feedback_p50_ms, w.feedback_p99_ms = _ms(percentile(fb, 50)), _ms(percentile(fb, 99))
        w.rss_median = {name: statistics.median(v) for (k, name), v in rss.items() if k == w.index}
    return windows


def summarise(
    records: list[RequestRecord], samples: list[RssSample], duration_s: float, window_s: float, warmup_s: float
) -> SoakSummary:
    """Windows, growth of each process group and chat p99 drift (last window vs first after warm-up),
    error counts, and the verdicts."""
    windows = build_windows(records, samples, duration_s, window_s, warmup_s)
    after = [w for w in windows if not w.warmup]
    first, last = (after[0], after[-1]) if after else (None, None)
    names = sorted({name for s in samples for name in s.rss})
    growth = {
        name: growth_pct(first.rss_median.get(name), last.rss_median.get(name)) if first and last else None
        for name in names
    }
    drift = growth_pct(first.chat_p99_ms, last.chat_p99_ms) if first and last else None
    errors_total: Counter[str] = Counter()
    errors_after: Counter[str] = Counter()
    for w in windows:
        errors_total.update(w.errors)
        if not w.warmup:
            errors_after.update(w.errors)
    requests = Counter(r.kind for r in records)
    return SoakSummary(windows, growth, drift, errors_total, errors_after, requests,
                       verdicts(growth, drift, errors_total, len(after)))  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def verdicts(
    growth: dict[str, float | None], drift: float | None, errors: Counter[str], windows_after_warmup: int
) -> list[Verdict]:
    """One line per target: every process group's RSS growth, total errors, chat p99 drift."""
    span = "" if windows_after_warmup > 1 else " (one window after warm-up: nothing to compare)"
    out = [
        Verdict(f"RSS growth after warm-up: {name}{span}", _pct(g), f"≤ +{TARGET_RSS_GROWTH_PCT:.0f} %",
                None if g is None or windows_after_warmup < 2 else g <= TARGET_RSS_GROWTH_PCT)
        for name, g in growth.items()
    ]  # fmt: skip
    total = sum(errors.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
    out.append(Verdict("errors (whole run)", f"{total}" + (f" ({detail})" if detail else ""), f"= {TARGET_ERRORS}",
                       total <= TARGET_ERRORS))  # fmt: skip
    drift_met = None if drift is None or windows_after_warmup < 2 else drift < TARGET_P99_DRIFT_PCT
    out.append(Verdict(f"chat p99 drift, last window vs first after warm-up{span}", _pct(drift),
                       f"< +{TARGET_P99_DRIFT_PCT:.0f} %", drift_met))  # fmt: skip
    return out
