"""`flywheel loop`: simulate → export → train → gate → register canary → controller decides, N rounds.

Each round starts from whatever is stable. Simulated users rate the stable's answers; the ratings go
through the gateway, Kafka and the consumer into the store; the store is exported into preference
pairs; a reward model is fitted on them (the gates' judge, and PPO's reward); DPO or PPO trains a LoRA
on the stable; a version that passes its gates is registered at weight 0 and the canary controller
(the same ``CanaryController`` as `flywheel canary watch`, ticked here between batches of simulated
traffic, so the rollout moves as fast as evidence arrives) steps it up, promotes or rolls it back.
Everything observed goes into a ``LoopRecord`` that report.py turns into Markdown and plots.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from flywheel.loop.config import LoopConfig
from flywheel.loop.observe import LoopError, Operator, StoreReader
from flywheel.settings import Settings
from flywheel.simulate.preferences import Preference
from flywheel.simulate.report import SimulationReport
from flywheel.simulate.runner import SimulationConfig, run_simulation
from policies.registry_models import utcnow


@dataclass
class ThumbPoint:
    """Ratings per version from one batch of simulated traffic."""

    t: float
    round: int
    phase: str  # collect | rollout
    version: str
    rated: int
    ups: int


@dataclass
class Tick:
    """One controller decision (and the weight it left the canary at)."""

    t: float
    round: int
    version: str
    action: str
    reason: str
    weight: float
    status: str


@dataclass
class RoundRecord:
    round: int
    parent: str
    algo: str
    outcome: str = "pending"  # promoted | rolled_back | gate_failed | undecided | no_pairs | failed
    candidate: str | None = None
    run_dir: str | None = None
    pairs: int = 0
    heldout_pairs: int = 0
    pairs_by_source: dict[str, int] = field(default_factory=dict)
    reward_accuracy: float | None = None
    gates: dict[str, Any] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)
    collected: dict[str, Any] = field(default_factory=dict)
    rollout_interactions: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why the round failed (outcome "failed")
    cleanup: str | None = None  # what the loop did with the round's canary after the failure


@dataclass
class LoopRecord:
    """Everything a loop run observed, JSON-able."""

    config: dict[str, Any]
    started_at: str
    seed_version: str
    rounds: list[RoundRecord] = field(default_factory=list)
    thumbs: list[ThumbPoint] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=dict)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    final_stable: str = ""
    errors: int = 0  # failed chat or feedback calls of simulated users (all phases)
    wall_s: float = 0.0
    error: str | None = None  # what stopped the run early (the failed round has it too), None: it finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Loop:
    """One `flywheel loop` run against a running stack."""

    def __init__(self, config: LoopConfig, settings: Settings, preference: Preference,
                 console: Console | None = None, collect_preference: Preference | None = None) -> None:  # fmt: skip
        """``preference``: how simulated users rate; ``collect_preference``: how they rate the answers
        the training data comes from, when that differs (a test's deliberately wrong data set)."""
        from flywheel.db import create_schema, make_engine

        self.config, self.settings, self.preference = config, settings, preference
        self.collect_preference = collect_preference or preference
        self.console = console or Console(stderr=True)
        self.engine = make_engine(settings.effective_database_url)
        create_schema(self.engine)
        self.store = StoreReader(self.engine)
        self.operator = Operator(config.url, config.admin_key)
        self.began = time.monotonic()
        self.started = utcnow()
        self.stamp = self.started.strftime("%Y%m%d-%H%M%S")
        self.record = LoopRecord(config.to_dict(), self.started.isoformat(), self.operator.stable().id)
        self._current: RoundRecord | None = None  # the round under way, until it is in self.record.rounds
        self._controller = self._build_controller()

    def close(self) -> None:
        self._controller.admin.close()
        self.operator.close()
        self.engine.dispose()

    # --- the loop ---------------------------------------------------------------------------------
    def run(self, work_dir: Path) -> LoopRecord:
        """All rounds. On any failure (Ctrl-C included) ``self.record`` still holds the rounds so far, the
        failed one marked with its error, and a canary the failed round registered is rolled back; then
        the exception goes on to the caller, which writes the report."""
        if self.operator.canaries():
            raise LoopError(f"canaries {[v.id for v in self.operator.canaries()]} are live; finish them first")
        try:
            return self._run(work_dir)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _run(self, work_dir: Path) -> LoopRecord:
        if self.config.eval_interactions:  # now, while the starting stable still serves (retired ones do not)
            self.evaluate(self.record.seed_version)
        for n in range(1, self.config.rounds + 1):
            round_dir = work_dir / f"round-{n}"
            round_dir.mkdir(parents=True, exist_ok=True)
            record = self.round(n, round_dir)
            self.record.rounds.append(record)
            self._current = None
            self.console.print(f"[bold]round {n}[/]: {record.outcome} ({record.candidate or 'no canary'})")
            if record.outcome == "undecided":  # the canary stays live for an operator: no next round
                self.console.print(f"[yellow]{record.candidate} waits for an operator; stopping after round {n}[/]")
                break
        self.record.final_stable = self.operator.stable().id
        self.record.rewards = self.store.rewards(self.started)
        if self.config.eval_interactions and self.record.final_stable != self.record.seed_version:
            self.evaluate(self.record.final_stable)
        self.record.wall_s = self._t()
        return self.record

    def round(self, n: int, round_dir: Path) -> RoundRecord:
        stable = self.operator.stable()
        if self.operator.canaries():
            raise LoopError(f"canaries {[v.id for v in self.operator.canaries()]} are live; finish them first")
        record = self._current = RoundRecord(round=n, parent=stable.id, algo=self.config.algo)
        began = time.monotonic()
        since = utcnow()
        interactions = math.ceil(self.config.interactions_per_round / max(self.preference.rating.rating_probability, 1e-6))
        collected = self._traffic(n, "collect", interactions, seed=self.config.seed * 1000 + n,
                                  pool=self.config.question_pool)
        record.collected = {v: s.to_dict() for v, s in collected.versions.items()}
        record.seconds["collect"] = time.monotonic() - began
        mark = time.monotonic()
        pairs = self._export(since, stable.id, round_dir, record)
        if record.pairs == 0:
            record.outcome = "no_pairs"
            return record
        run = self._train(n, stable.id, stable.artifact_path, pairs, record)
        record.seconds["train"] = time.monotonic() - mark
        if run is None:
            return record
        mark = time.monotonic()
        self._rollout(n, record)
        record.seconds["rollout"] = time.monotonic() - mark
        record.seconds["total"] = time.monotonic() - began
        return record

    # --- steps ------------------------------------------------------------------------------------
    def _traffic(self, n: int, phase: str, interactions: int, seed: int, pool: int | None = None) -> SimulationReport:
        """Simulated users on the routed model; returns once the store holds what they produced."""
        since = utcnow()
        report = run_simulation(SimulationConfig(
            url=self.config.url, api_key=self.config.chat_key,
            preferences=self.collect_preference if phase == "collect" else self.preference,
            users=self.config.users, interactions=interactions, concurrency=self.config.concurrency, seed=seed,
            questions="train", question_pool=pool, user_prefix=f"loop{self.config.seed}-u",
        ))  # fmt: skip
        totals = report.totals
        self.record.errors += report.error_count
        if totals.answers == 0:
            raise LoopError(f"no answers from {self.config.url}: {dict(report.errors) or 'no errors recorded'}")
        self.store.wait_for(since, totals.answers, totals.rated, self.config.ingest_timeout_s)
        t = self._t()
        for version, stats in report.versions.items():
            self.record.thumbs.append(ThumbPoint(t, n, phase, version, stats.rated, stats.ups))
        return report

    def _export(self, since: datetime, stable_id: str, round_dir: Path, record: RoundRecord) -> Path:
        from feedback.export import export_pairs
        from feedback.pairs import ExportConfig

        out = round_dir / "pairs.jsonl"
        result = export_pairs(self.engine, "dpo", out, ExportConfig(
            since=since, policy_version=stable_id, heldout_fraction=self.config.heldout_fraction),
                              self.engine.url.render_as_string(hide_password=True))  # fmt: skip
        record.pairs, record.heldout_pairs = result.train, result.heldout
        record.pairs_by_source = dict(Counter(p.source for p in result.pairs.pairs))
        self.console.print(f"exported {result.train} train + {result.heldout} held-out pairs "
                           f"({record.pairs_by_source})")  # fmt: skip
        return out

    def _train(self, n: int, parent: str, parent_path: str | None, pairs: Path, record: RoundRecord) -> Any:
        """Reward model on the round's pairs (the gates' judge; PPO's reward), then DPO or PPO on the stable."""
        from trainer.artifacts import register_canary
        from trainer.gates import GateConfig
        from trainer.reward import RewardConfig, train_reward

        name = f"loop-{self.stamp}-r{n}"
        reward = train_reward(RewardConfig(data=pairs, run_name=f"{name}-reward", quiet=True), self.settings)
        record.reward_accuracy = reward.metrics.get("heldout_accuracy")
        gates = GateConfig(min_reward_win_rate=self.config.min_win_rate, min_human_accuracy=self.config.min_human_accuracy,
                           samples_per_prompt=self.config.gate_samples_per_prompt)
        policy = Path(parent_path) if parent_path else None
        if self.config.algo == "dpo":
            from trainer.dpo import DPOConfig, train_dpo

            run = train_dpo(DPOConfig(
                data=pairs, policy=policy, parent=parent, reward_model=reward.path, beta=self.config.dpo_beta,
                learning_rate=self.config.dpo_learning_rate, epochs=self.config.dpo_epochs, lora_r=self.config.lora_r,
                loss_weights=[1.0, self.config.dpo_sft_weight],
                run_name=f"{name}-dpo", quiet=True,
            ), self.settings, gates)  # fmt: skip
        else:
            from trainer.ppo import PPOConfig, train_ppo

            prompts = pairs.with_name("prompts.jsonl")
            write_prompts(pairs, prompts)
            run = train_ppo(PPOConfig(
                prompts=prompts, policy=policy, parent=parent, reward_model=reward.path,
                iterations=self.config.ppo_iterations, lora_r=self.config.lora_r, run_name=f"{name}-ppo", quiet=True,
            ), self.settings, gates)  # fmt: skip
        record.run_dir = str(run.path)
        record.gates = run.manifest.get("gates", {}).get("metrics", {})
        if not run.passed:
            record.outcome = "gate_failed"
            record.gate_failures = run.failure_lines()
            self.console.print(f"[yellow]{run.path.name} failed its gates[/]: {'; '.join(record.gate_failures)}")
            return None
        version = register_canary(run.path, 0.0, self.config.url, self.config.admin_key, parent=parent,
                                  notes=f"flywheel loop round {n} ({self.config.algo})")  # fmt: skip
        record.candidate = version["id"]
        self.console.print(f"registered {version['id']} as a canary; the controller takes it from here")
        return run

    def _rollout(self, n: int, record: RoundRecord) -> None:
        """Batches of routed traffic, a controller tick after each, until the canary is decided."""
        vid = record.candidate
        assert vid is not None
        self._tick(n, vid)  # starts the rollout at the plan's first weight
        batch = 0
        while True:
            status = self.operator.version(vid)
            if status.status != "canary":
                record.outcome = "promoted" if status.status == "stable" else status.status
                return
            if record.rollout_interactions >= self.config.max_rollout_interactions:
                record.outcome = "undecided"
                return
            batch += 1
            report = self._traffic(n, "rollout", self.config.rollout_batch, seed=self.config.seed * 1000 + n * 100 + batch)
            record.rollout_interactions += report.totals.answers
            if self._tick(n, vid) == "needs_operator":
                record.outcome = "undecided"
                return

    def _tick(self, n: int, vid: str) -> str:
        result = next((r for r in self._controller.tick() if r.version_id == vid), None)
        after = self.operator.version(vid)
        action = result.action if result else "none"
        reason = result.reason if result else "no report"
        self.record.ticks.append(Tick(self._t(), n, vid, action, reason, after.weight, after.status))
        self.console.print(f"  controller: {action} — {reason} (weight {after.weight:.0%}, {after.status})",
                           highlight=False)  # fmt: skip
        if action == "hold" and ("an operator decides" in reason or "paused" in reason):
            return "needs_operator"  # deploy/canary/analysis.py's wording for both
        return action

    def evaluate(self, version: str) -> None:
        """Fresh users on held-out topics ask ``version`` (pinned), ratings judged but not posted.
        The same users, questions and dice for every version, so versions compare side by side."""
        report = run_simulation(SimulationConfig(
            url=self.config.url, api_key=self.config.chat_key, preferences=self.preference, model=version,
            users=self.config.users, interactions=self.config.eval_interactions, concurrency=self.config.concurrency,
            seed=self.config.seed + 7919, questions="heldout", user_prefix="fresh", post_feedback=False,
        ))  # fmt: skip
        stats = report.versions.get(version)
        if stats is None:
            raise LoopError(f"evaluating {version}: no answers from it ({dict(report.totals.errors)})")
        self.record.evaluation[version] = stats.to_dict()

    # --- failure --------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        """Record ``exc`` on the run and on the round under way, and leave that round's canary safe."""
        what = _describe(exc)
        self.record.error = what
        self.record.wall_s = self._t()
        record, self._current = self._current, None
        if record is not None:
            record.outcome, record.error = "failed", what
            self.record.rounds.append(record)
            if record.candidate:
                record.cleanup = self._retire_canary(record.candidate, what)
                self.console.print(f"[yellow]round {record.round} failed; {record.candidate}: {record.cleanup}[/]")
        try:
            self.record.final_stable = self.operator.stable().id
        except Exception as err:  # the stack may be what failed: the report says so rather than guess
            self.record.final_stable = f"unknown ({_describe(err)})"

    def _retire_canary(self, vid: str, why: str) -> str:
        """Roll back ``vid`` if it is still an undecided canary: this loop registered it and can no longer
        watch it, so it must not keep serving users. Returns what happened, for the report."""
        try:
            if self.operator.version(vid).status != "canary":
                return "already decided; left as it is"
            self._controller.admin.rollback(vid, "flywheel loop failed while the canary was live",
                                            {"error": why[:500]})  # fmt: skip
            return "rolled back by the loop"
        except Exception as err:
            return f"NOT rolled back ({_describe(err)}): roll it back with `flywheel policy rollback {vid}`"

    # --- helpers ----------------------------------------------------------------------------------
    def _t(self) -> float:
        return round(time.monotonic() - self.began, 2)

    def _build_controller(self) -> Any:
        from deploy.canary.admin_client import AdminClient
        from deploy.canary.controller import CanaryController
        from deploy.canary.live import CanaryAnalyzer
        from deploy.canary.metrics import GatewayCounters, StoreMetrics
        from policies.registry import PolicyRegistry

        counters = GatewayCounters(self.settings.canary_gateway_metrics_urls or [f"{self.config.url.rstrip('/')}/metrics"])
        analyzer = CanaryAnalyzer(PolicyRegistry(self.engine), StoreMetrics(self.engine), counters, self.config.plan)
        return CanaryController(analyzer, AdminClient(self.config.url, self.config.admin_key))


def _describe(exc: BaseException) -> str:
    """One line naming the exception and its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_prompts(pairs: Path, out: Path) -> int:
    """PPO's prompts: the distinct prompts of the exported pairs."""
    seen: dict[str, list[dict[str, str]]] = {}
    for line in pairs.read_text().splitlines():
        if line.strip():
            prompt = json.loads(line)["prompt"]
            seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in seen.values()))
    return len(seen)
