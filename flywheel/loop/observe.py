"""What the loop reads back from the stack: the registry through the operator API, the store through SQL.

Reads only. The store is the one the consumer writes (``FLYWHEEL_DATABASE_URL``); waiting on it is how
the loop knows that the ratings it posted went through Kafka and were materialised before it exports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

from feedback.store_models import FeedbackRow, InteractionRow
from flywheel.db import session_factory


class LoopError(RuntimeError):
    """The loop cannot go on (stack unreachable, events never reached the store); one line for the CLI."""


@dataclass(frozen=True)
class VersionInfo:
    id: str
    status: str
    weight: float
    kind: str
    artifact_path: str | None


class Operator:
    """The operator API calls the loop makes besides registration (which trainer.artifacts owns)."""

    def __init__(self, url: str, key: str) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def close(self) -> None:
        self._http.close()

    def versions(self) -> list[VersionInfo]:
        try:
            resp = self._http.get("/admin/policies")
        except httpx.HTTPError as exc:
            raise LoopError(f"operator API unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise LoopError(f"GET /admin/policies: HTTP {resp.status_code}: {resp.text[:200]}")
        return [VersionInfo(v["id"], v["status"], float(v["weight"]), v["kind"], v.get("artifact_path"))
                for v in resp.json()["data"]]  # fmt: skip

    def version(self, version_id: str) -> VersionInfo:
        found = next((v for v in self.versions() if v.id == version_id), None)
        if found is None:
            raise LoopError(f"version {version_id} is not in the registry")
        return found

    def stable(self) -> VersionInfo:
        found = next((v for v in self.versions() if v.status == "stable"), None)
        if found is None:
            raise LoopError("the registry has no stable version")
        return found

    def canaries(self) -> list[VersionInfo]:
        return [v for v in self.versions() if v.status == "canary"]


class StoreReader:
    """Counts and reward samples from the feedback store."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def counts(self, since: datetime) -> tuple[int, int]:
        """(interactions, ratings) stored with event time at or after ``since``."""
        with self._sessions() as s:
            interactions = s.scalar(select(func.count()).select_from(InteractionRow).where(InteractionRow.time >= since))
            ratings = s.scalar(select(func.count()).select_from(FeedbackRow).where(FeedbackRow.time >= since))
        return int(interactions or 0), int(ratings or 0)

    def wait_for(self, since: datetime, interactions: int, ratings: int, timeout_s: float) -> tuple[int, int]:
        """Block until the consumer has stored at least this many events since ``since``."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.counts(since)
            if seen[0] >= interactions and seen[1] >= ratings:
                return seen
            if time.monotonic() > deadline:
                raise LoopError(f"after {timeout_s:.0f}s the store has {seen[0]}/{interactions} interactions and "
                                f"{seen[1]}/{ratings} ratings: is the consumer (`flywheel consume`) running?")
            time.sleep(0.5)

    def rewards(self, since: datetime) -> dict[str, list[float]]:
        """Reward of each served (chosen) answer per version, where best-of-n scored it."""
        out: dict[str, list[float]] = {}
        query = select(InteractionRow.policy_version, InteractionRow.candidates, InteractionRow.chosen_index).where(
            InteractionRow.time >= since)
        with self._sessions() as s:
            for version, candidates, chosen in s.execute(query):
                reward = _chosen_reward(candidates, chosen)
                if version and reward is not None:
                    out.setdefault(version, []).append(reward)
        return out


def _chosen_reward(candidates: list[dict[str, Any]] | None, chosen: int) -> float | None:
    if not candidates or not 0 <= chosen < len(candidates):
        return None
    reward = candidates[chosen].get("reward")
    return float(reward) if reward is not None else None
