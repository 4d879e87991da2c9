"""Run a simulated population against a gateway: ask, judge, rate, count.

Everything random is planned before the first request (who asks, what, the rating dice, the
sampling seed), so a run is a function of its config and of the answers it gets back, whatever
order concurrent requests finish in. Failures are counted by kind and never end the run: a
simulation is also how we watch the gateway under load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.simulate.client import ChatAnswer, ChatOptions, GatewayClient, error_kind
from flywheel.simulate.population import SimUser, build_population
from flywheel.simulate.preferences import Preference, PreferenceError, load_preference, preset_path
from flywheel.simulate.questions import Part, Question, QuestionBank
from flywheel.simulate.rating import RatingDraws, RatingPolicy, Thumb, decide, p_up
from flywheel.simulate.report import InteractionRecord, SimulationReport, VersionStats
from flywheel.simulate.rules import Answer, evaluate, score, word_count

ROUTED_MODEL = "flywheel"
Progress = Callable[[], None]


@dataclass
class SimulationConfig:
    """Every knob of a run; ``to_dict()`` is saved in the report.

    preferences: a preference file, the name of a shipped one (``default``, ``reversed``), a loaded
    ``Preference``, or None for ``default``. rating_probability / noise / adversarial_fraction
    override the file's [rating] values when set. model: ``flywheel`` (routed: stable or canary,
    sticky per user) or a version id to evaluate that version alone. questions: ``all``, or the
    ``train`` / ``heldout`` part (split by fact) so that fresh users can get unseen topics.
    post_feedback=False judges answers without posting ratings (evaluation that leaves no trace).
    keep_records: also keep every answer, its verdicts and rating in ``report.records``.
    """

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    preferences: Path | str | Preference | None = None
    users: int = 20
    interactions: int = 100
    concurrency: int = 8
    seed: int = 0
    model: str = ROUTED_MODEL
    rating_probability: float | None = None
    noise: float | None = None
    adversarial_fraction: float | None = None
    questions: Part = "all"
    heldout_fraction: float = 0.2
    question_pool: int | None = None  # ask only this many questions (drawn by seed), each many times
    include_kb_only: bool = True
    user_prefix: str = "sim"
    max_tokens: int = 128
    temperature: float | None = 0.8
    best_of_n: int | None = None
    grounding: bool | None = None
    post_feedback: bool = True
    keep_records: bool = False
    timeout_s: float = 120.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("users", "interactions", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("rating_probability", "noise", "adversarial_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.question_pool is not None and self.question_pool < 1:
            raise ValueError(f"question_pool must be at least 1, got {self.question_pool}")
        if self.questions not in ("all", "train", "heldout"):
            raise ValueError(f"questions must be all, train or heldout, got {self.questions!r}")

    def preference(self) -> Preference:
        """The preference to judge by (raises PreferenceError for a missing or bad file)."""
        value = self.preferences
        if isinstance(value, Preference):
            return value
        if value is None:
            return load_preference(preset_path("default"))
        path = Path(value)
        if not path.exists() and path.suffix == "" and path.parent == Path("."):
            return load_preference(preset_path(str(value)))
        if not path.is_file():
            raise PreferenceError(f"{path}: no such preference file")
        return load_preference(path)

    def rating_policy(self, preference: Preference) -> RatingPolicy:
        overrides = {k: v for k in ("rating_probability", "noise", "adversarial_fraction")
                     if (v := getattr(self, k)) is not None}  # fmt: skip
        return dataclasses.replace(preference.rating, **overrides)

    def chat_options(self) -> ChatOptions:
        return ChatOptions(model=self.model, max_tokens=self.max_tokens, temperature=self.temperature,
                           best_of_n=self.best_of_n, grounding=self.grounding)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "api_key"}
        prefs = self.preferences
        if isinstance(prefs, Preference):
            out["preferences"] = prefs.source or prefs.name
        else:
            out["preferences"] = "default" if prefs is None else str(prefs)
        return out


@dataclass(frozen=True)
class Planned:
    """One interaction, decided before it runs."""

    index: int
    user: SimUser
    question: Question
    draws: RatingDraws
    request_seed: int


def plan_interactions(users: list[SimUser], bank: QuestionBank, n: int, seed: int) -> list[Planned]:
    """Who asks what, with which dice: the schedule RNG picks users, each user's RNG the rest."""
    schedule = random.Random(f"{seed}:schedule")
    planned = []
    for i in range(n):
        user = schedule.choice(users)
        question = bank.sample(user.rng)
        planned.append(Planned(i, user, question, RatingDraws.sample(user.rng), user.rng.randrange(2**31)))
    return planned


class _Run:
    """The state one run shares between its concurrent interactions."""

    def __init__(self, config: SimulationConfig, preference: Preference, policy: RatingPolicy,
                 client: GatewayClient, report: SimulationReport, progress: Progress | None) -> None:  # fmt: skip
        self.config, self.preference, self.policy = config, preference, policy
        self.options = config.chat_options()
        self.client, self.report, self.progress = client, report, progress
        self.slots = asyncio.Semaphore(config.concurrency)

    async def interact(self, item: Planned) -> None:
        async with self.slots:
            try:
                await self._interact(item)
            except Exception as exc:  # noqa: BLE001 - a bug in judging one answer must not end the run
                self.report.errors[f"simulate:{type(exc).__name__}"] += 1
            finally:
                if self.progress:
                    self.progress()

    async def _interact(self, item: Planned) -> None:
        try:
            answer = await self.client.ask(item.question.text, item.user.id, self.options, item.request_seed)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none ends the run
            pinned = self.config.model != ROUTED_MODEL
            errors = self.report.version(self.config.model).errors if pinned else self.report.errors
            errors[f"chat:{error_kind(exc)}"] += 1
            return
        stats = self.report.version(answer.policy_version)
        verdicts = evaluate(self.preference.rules, Answer(answer.text, item.question.expected))
        value = score(self.preference.rules, verdicts)
        stats.add_answer(verdicts, word_count(answer.text), value, p_up(value, self.policy),
                         blocked=answer.finish_reason == "content_filter")  # fmt: skip
        thumb = decide(value, self.policy, item.draws, item.user.adversarial)
        event_id = await self._rate(answer, thumb, item.user.id, stats) if thumb else None
        if self.config.keep_records:
            self.report.records.append(InteractionRecord(
                item.index, item.user.id, item.question.text, answer.response_id, answer.policy_version,
                answer.text, value, verdicts, thumb, event_id,
            ))  # fmt: skip

    async def _rate(self, answer: ChatAnswer, thumb: Thumb, user: str, stats: VersionStats) -> str | None:
        """Post the rating (unless the run only judges) and count it; failures are counted, not raised."""
        event_id = None
        if self.config.post_feedback:
            try:
                event_id = await self.client.rate(answer, thumb, user, idempotency_key=f"simulate:{answer.response_id}")
            except Exception as exc:  # noqa: BLE001
                stats.errors[f"feedback:{error_kind(exc)}"] += 1
                return None
        stats.add_rating(thumb)
        return event_id


async def simulate(config: SimulationConfig, progress: Progress | None = None) -> SimulationReport:
    """Run the population against the gateway at ``config.url``; ``progress`` is called per interaction."""
    preference = config.preference()
    policy = config.rating_policy(preference)
    bank = QuestionBank.from_fact_sheet(include_kb_only=config.include_kb_only)
    bank = bank.part(config.questions, config.heldout_fraction)
    if config.question_pool:
        bank = bank.pool(config.question_pool, config.seed)
    users = build_population(config.users, policy.adversarial_fraction, config.seed, config.user_prefix)
    planned = plan_interactions(users, bank, config.interactions, config.seed)
    report = SimulationReport(preference.name, preference.rule_names, config.interactions, config=config.to_dict())
    client = GatewayClient(config.url, config.api_key, timeout_s=config.timeout_s,
                           max_connections=config.concurrency, max_retries=config.max_retries)  # fmt: skip
    run = _Run(config, preference, policy, client, report, progress)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(run.interact(item) for item in planned))
    finally:
        await client.aclose()
    report.wall_s = time.perf_counter() - started
    report.records.sort(key=lambda r: r.index)
    return report


def run_simulation(config: SimulationConfig, progress: Progress | None = None) -> SimulationReport:
    """``simulate`` from synchronous code (a CLI, the training loop); inside a running event loop it
    runs on a thread of its own, since asyncio.run refuses to nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(simulate(config, progress))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, simulate(config, progress)).result()
