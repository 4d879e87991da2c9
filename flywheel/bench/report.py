"""Write one benchmark's section of docs/benchmarks.md, leaving every other section untouched.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; re-running
it replaces only that block, so benchmarks run at different times can share one page. Every section
records when, where (cores, CPU model) and with which exact command it was measured, because numbers
without their machine are not comparable.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

PAGE_HEADER = (
    "# Benchmarks\n\n"
    "Measured numbers only, each section written by its `flywheel bench …` command "
    "(re-run the command to refresh it).\n"
)


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name {name!r} must be letters, digits, '_', '.' or '-'")
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_section(page: str, name: str, markdown: str) -> str:
    """``page`` with the NAME block replaced by ``markdown`` (appended at the end if absent)."""
    start, end = _markers(name)
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(page):
        return pattern.sub(lambda _: block, page, count=1)
    base = page.rstrip() if page.strip() else PAGE_HEADER.rstrip()
    return f"{base}\n\n{block}\n"


def write_section(path: Path, name: str, markdown: str) -> None:
    """Replace (or add) the NAME section of the page at ``path``, creating the page if needed."""
    path = Path(path)
    page = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(replace_section(page, name, markdown))
    tmp.replace(path)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """Cores the process may use, CPU model, OS and Python: the context every number needs."""
    from policies.seed.config import native_bf16

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if native_bf16() else "no native bf16 (AVX2-class)"
    return (
        f"{cores} CPU cores ({cpu_model()}, {bf16}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def python_speed_us() -> float:
    """Microseconds for ``sum(range(10_000))`` (best of 5): one number that says how fast this host's
    cores run Python *now*. Hosts of one 'kind' differed ~3x in it (60-80 µs vs ~200 µs), which
    moved every figure here more than most code changes did."""
    import timeit

    timer = timeit.Timer("sum(range(10_000))")
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=loops)) / loops * 1e6


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``flywheel bench …``), quoted so that it can be pasted back."""
    args = list(sys.argv if argv is None else argv)
    prog = Path(args[0]).name if args else "flywheel"
    if prog in ("cli.py", "__main__.py", "-m") or prog.startswith("python"):
        prog = "flywheel"
    return shlex.join([prog, *args[1:]])


def provenance(argv: list[str] | None = None, now: dt.datetime | None = None) -> str:
    """The date / machine / command lines that head every section."""
    when = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on the machine skews every number
    return (
        f"- date: {when}\n- machine: {machine_line()}\n- load average (1/5/15 min) when written: {load}\n"
        f"- Python speed when written: `sum(range(10_000))` in {python_speed_us():.0f} µs (lower is faster)\n"
        f"- command: `{command_line(argv)}`\n"
    )
