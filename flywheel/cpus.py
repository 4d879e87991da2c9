"""Keep Flywheel's own processes off the cores vLLM's CPU worker is pinned to.

vLLM's CPU backend binds its worker's OpenMP threads to chosen cores (on a 2-core machine: core 0,
every thread). Every other process on the machine floats over all cores, so the scheduler also puts the
gateway, the broker and the load on that core; each time it does, the worker's forward pass waits. On
this 2-core host that cut the gateway's throughput over vLLM to a third of direct at 32 connections
(p99 2.4-3.7 s against 0.3-0.6 s); the same gateway kept on the other core served 80-98 % of direct
with the same p99 as direct (`flywheel bench gateway`, docs/benchmarks.md).

So `flywheel up` (and the gateway bench) read which cores vLLM's threads are pinned to once it is up,
and run everything else on the rest: the children get ``FLYWHEEL_CPUS`` and pin themselves at start (the
threads they have, thread by thread; later ones inherit it), and processes already running (the broker)
are moved the same way.
vLLM's other threads float: the API server and the engine core, whose loop busy-polls the worker's
shared-memory queue while a batch runs (~0.7 of a core on this host). Kept on the proxies' cores at
normal priority, that poller took the CPU from the gateway on every wake-up: through the gateway, vLLM
served 13-76 req/s against 141-162 direct at 32 connections (p99 2.3-2.5 s); with vLLM's floating
threads at nice 10, 125-138 against 151-169 (p99 0.27-0.41 s), and direct was no slower. So once vLLM
is up, :func:`lower_floating_threads` lowers their priority (``VLLMServer.wait_ready`` calls it).

Linux only (``os.sched_setaffinity``); elsewhere, and when vLLM pinned nothing, nothing changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil

__all__ = [
    "FLOATING_NICENESS",
    "cpus_besides",
    "format_cpu_list",
    "lower_floating_threads",
    "move_tree",
    "parse_cpu_list",
    "pin_this_process",
    "pinned_cpus",
]

FLOATING_NICENESS = 10  # a CFS weight ~10x below normal: they still run whenever the core is free


def parse_cpu_list(text: str) -> frozenset[int]:
    """'1' / '0,2-3' (the kernel's cpulist format) → the CPU numbers; ValueError when malformed."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. '1' or '0,2-3')")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"not a CPU list: {text!r} (range {part} runs backwards)")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def available_cpus() -> frozenset[int]:
    """The cores this process may run on (empty where the platform cannot say)."""
    return frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def _tree_thread_ids(pid: int) -> Iterator[int]:
    """Thread ids of ``pid`` and its descendants; processes that end meanwhile are skipped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            yield from (thread.id for thread in proc.threads())
        except psutil.Error:
            continue


def pinned_cpus(pid: int) -> frozenset[int]:
    """Cores the threads of ``pid``'s process tree are pinned to (threads narrower than the machine)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    every = available_cpus()
    pinned: set[int] = set()
    for tid in _tree_thread_ids(pid):
        try:
            mask = frozenset(os.sched_getaffinity(tid))
        except OSError:  # the thread ended meanwhile
            continue
        if mask < every:
            pinned |= mask
    return frozenset(pinned)


def cpus_besides(taken: frozenset[int]) -> frozenset[int] | None:
    """The cores this process may use minus ``taken``; None when nothing is taken or nothing would be left."""
    rest = available_cpus() - taken
    return rest if taken and rest else None


def pin_this_process(cpus: frozenset[int]) -> None:
    """Run this process on ``cpus``: the threads it has (numerical libraries start pools at import)
    and, since threads inherit their creator's mask, every thread it starts later."""
    move_tree(os.getpid(), cpus)


def move_tree(pid: int, cpus: frozenset[int]) -> None:
    """Move a running process tree, thread by thread (threads do not follow their process), onto ``cpus``."""
    if not hasattr(os, "sched_setaffinity"):
        return
    for tid in _tree_thread_ids(pid):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, cpus)


def lower_floating_threads(pid: int, niceness: int = FLOATING_NICENESS) -> int:
    """Lower the priority of the threads of ``pid``'s tree that float, when some of its threads are
    pinned (vLLM's CPU worker); returns how many were lowered. Pinned threads keep theirs, and a
    thread already at a lower priority is left as it is (raising one needs privileges)."""
    if not hasattr(os, "setpriority") or not pinned_cpus(pid):
        return 0
    every = available_cpus()
    lowered = 0
    for tid in _tree_thread_ids(pid):
        try:
            if frozenset(os.sched_getaffinity(tid)) < every or os.getpriority(os.PRIO_PROCESS, tid) >= niceness:
                continue
            os.setpriority(os.PRIO_PROCESS, tid, niceness)  # Linux: a thread id names one thread
        except OSError:  # the thread ended meanwhile
            continue
        lowered += 1
    return lowered
