"""CPU lists and affinity: parsing, what a pinned child reports, moving a running process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from flywheel.cpus import (
    cpus_besides, format_cpu_list, lower_floating_threads, move_tree, parse_cpu_list, pinned_cpus,
)  # fmt: skip
from flywheel.settings import Settings

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2+ CPUs"
)


@pytest.mark.parametrize(
    ("text", "cpus"), [("1", {1}), ("0,2-3", {0, 2, 3}), (" 4 - 5 , 1", {1, 4, 5}), ("3-3", {3})]
)
def test_cpu_lists_parse_like_the_kernels(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(frozenset(cpus))) == cpus


@pytest.mark.parametrize("text", ["", "a", "1,", "3-1", "-2", "1-"])
def test_a_malformed_cpu_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpu_list(text)


def test_settings_check_the_cpu_list_at_start_up() -> None:
    assert Settings(cpus="0-1").cpu_set == {0, 1}
    assert Settings().cpu_set is None
    with pytest.raises(ValueError, match="not a CPU list"):
        Settings(cpus="one")


def _sleeper() -> subprocess.Popen[bytes]:
    # a thread besides the main one, so that moving "the tree" must move threads one by one
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\ntime.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code])


def _threads_ready(pid: int) -> None:
    import psutil

    deadline = time.monotonic() + 10
    while psutil.Process(pid).num_threads() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)


@needs_two_cpus
def test_a_pinned_process_is_seen_and_a_tree_is_moved_thread_by_thread() -> None:
    import psutil

    every = frozenset(os.sched_getaffinity(0))
    first = min(every)
    child = _sleeper()
    try:
        _threads_ready(child.pid)
        assert pinned_cpus(child.pid) == frozenset()  # floats over every core: nothing pinned
        move_tree(child.pid, frozenset({first}))
        assert all(os.sched_getaffinity(t.id) == {first} for t in psutil.Process(child.pid).threads())
        assert pinned_cpus(child.pid) == {first}
        assert cpus_besides(frozenset({first})) == every - {first}
    finally:
        child.kill()
        child.wait()


def test_nothing_to_avoid_or_nothing_left_means_no_pinning() -> None:
    every = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
    assert cpus_besides(frozenset()) is None
    assert cpus_besides(every) is None
    assert pinned_cpus(2**22 + 12345) == frozenset()  # no such process: nothing pinned, no error


@needs_two_cpus
def test_pinning_a_process_moves_the_threads_it_already_has_and_those_it_starts_later() -> None:
    first = min(os.sched_getaffinity(0))
    code = f"""
import os, threading, time
from flywheel.cpus import pin_this_process
early = threading.Thread(target=time.sleep, args=(5,), daemon=True); early.start()  # like a BLAS pool at import
pin_this_process(frozenset({{{first}}}))
late = threading.Thread(target=time.sleep, args=(5,), daemon=True); late.start()
masks = {{tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}}
print(sorted(masks))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == str([(first,)])


@needs_two_cpus
def test_the_floating_threads_of_a_tree_with_pinned_ones_are_lowered() -> None:
    import psutil

    first = min(os.sched_getaffinity(0))
    # a "worker" thread pinned to one core (as vLLM's CPU worker) beside the floating main thread
    code = f"""
import os, threading, time
def worker():
    os.sched_setaffinity(0, {{{first}}})
    time.sleep(60)
threading.Thread(target=worker, daemon=True).start()
time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        _threads_ready(child.pid)
        deadline = time.monotonic() + 10
        while not pinned_cpus(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        base = os.getpriority(os.PRIO_PROCESS, 0)  # what the child inherited
        lower = min(base + 7, 19)
        assert lower_floating_threads(child.pid, niceness=lower) == 1
        nice = {t.id: os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(child.pid).threads()}
        assert nice == {child.pid: lower, **{tid: base for tid in nice if tid != child.pid}}
        assert lower_floating_threads(child.pid, niceness=lower) == 0  # already there: nothing to do
    finally:
        child.kill()
        child.wait()


def test_a_tree_with_nothing_pinned_keeps_its_priority() -> None:
    child = _sleeper()
    try:
        _threads_ready(child.pid)
        assert lower_floating_threads(child.pid) == 0
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        child.kill()
        child.wait()
