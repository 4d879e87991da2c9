"""The live half of `flywheel bench soak`: an open-loop chat + feedback driver and an RSS sampler.

Open loop: request ``i`` starts at ``i / rate`` seconds whether or not earlier ones have finished, and
its latency counts from that scheduled time, so a server that falls behind shows up as growing latency
(not as a politely slower client). Chat goes through the official ``openai`` SDK and ratings through
``POST /v1/feedback`` with the token the answer carried (the simulation's :class:`GatewayClient`, with
retries off: a soak counts every failure instead of hiding it). Requests still running when the
backlog cap is reached are not piled higher; the skipped ones are counted as ``backlog`` errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from flywheel.bench.soak_analysis import RequestRecord, RssSample
from flywheel.simulate.client import ChatOptions, GatewayClient, error_kind
from flywheel.simulate.questions import QuestionBank
from policies.vllm_server import API_SERVER_MODULE


@dataclass(frozen=True)
class DriveConfig:
    rate: float  # chat requests per second
    duration_s: float
    feedback_ratio: float
    max_tokens: int = 32
    max_backlog: int = 256
    timeout_s: float = 60.0
    users: int = 500  # the feedback limiter is per user: spread ratings over many
    seed: int = 0


def classify(proc: psutil.Process) -> str | None:
    """Which part of the stack a direct child of this process is, from its command line."""
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if argv and argv[0].endswith("tansu"):
        return "broker"
    if API_SERVER_MODULE in argv:
        return "vllm"
    if "flywheel.cli" in argv and "serve" in argv:
        return "gateway"
    if "flywheel.cli" in argv and "consume" in argv:
        return "consumer"
    return None


def stack_processes() -> dict[str, psutil.Process]:
    """The soak's own children by role (each started in its own session, but still our child)."""
    found: dict[str, psutil.Process] = {}
    for child in psutil.Process().children():
        role = classify(child)
        if role and role not in found:
            found[role] = child
    return found


def tree_rss(proc: psutil.Process) -> int | None:
    """RSS of ``proc`` plus every descendant (vLLM's engine core, any workers); None once it is gone."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Driver:
    """Runs the schedule, records every request, and samples RSS every ``sample_s`` seconds."""

    def __init__(
        self, url: str, api_key: str, config: DriveConfig, processes: dict[str, psutil.Process], sample_s: float
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.config = config
        self.processes = processes
        self.sample_s = sample_s
        self.records: list[RequestRecord] = []
        self.samples: list[RssSample] = []
        self.accepted_ratings = 0
        self._bank = QuestionBank.from_fact_sheet()
        self._rng = random.Random(config.seed)
        self._t0 = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    async def _one(self, client: GatewayClient, i: int, t: float, options: ChatOptions) -> None:
        user = f"soak-user-{i % self.config.users}"
        question = self._bank.sample(self._rng).text
        rate_it = self._rng.random() < self.config.feedback_ratio
        try:
            answer = await client.ask(question, user, options)
        except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
            self.records.append(RequestRecord("chat", t, None, error_kind(exc)))
            return
        self.records.append(RequestRecord("chat", t, self.elapsed() - t))
        if not rate_it:
            return
        started = self.elapsed()
        try:
            await client.rate(answer, "up" if i % 3 else "down", user, f"soak-{i}")
        except Exception as exc:  # noqa: BLE001
            self.records.append(RequestRecord("feedback", started, None, error_kind(exc)))
            return
        self.accepted_ratings += 1
        self.records.append(RequestRecord("feedback", started, self.elapsed() - started))

    async def _sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rss = await asyncio.to_thread(self._rss_now)
            self.samples.append(RssSample(self.elapsed(), rss))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.sample_s)
            except TimeoutError:
                pass

    def _rss_now(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, proc in self.processes.items():
            value = tree_rss(proc)
            if value is not None:
                out[name] = value
        return out

    async def run(self, on_progress: Callable[[Driver], None] | None = None) -> None:
        """Drive for ``duration_s``; then wait (up to the request timeout) for what is still in flight."""
        cfg = self.config
        client = GatewayClient(self.url, self.api_key, timeout_s=cfg.timeout_s, max_connections=cfg.max_backlog,
                               max_retries=0)  # fmt: skip
        options = ChatOptions(max_tokens=cfg.max_tokens, temperature=0.8)
        tasks: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        self._t0 = time.monotonic()
        sampler = asyncio.create_task(self._sample(stop))
        try:
            i = 0
            while (t := i / cfg.rate) < cfg.duration_s:
                delay = t - self.elapsed()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= cfg.max_backlog:
                    self.records.append(RequestRecord("chat", t, None, "backlog"))
                else:
                    task = asyncio.create_task(self._one(client, i, t, options))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if on_progress is not None and i % max(1, round(cfg.rate * 10)) == 0:
                    on_progress(self)
                i += 1
            if tasks:
                await asyncio.wait(set(tasks), timeout=cfg.timeout_s + 5)
        finally:
            stop.set()
            await sampler
            for task in list(tasks):  # still running after the drain: a failure too, not a silent drop
                task.cancel()
                self.records.append(RequestRecord("chat", cfg.duration_s, None, "unfinished"))
            await client.aclose()
