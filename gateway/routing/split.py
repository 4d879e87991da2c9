"""Pick the policy version for a request: sticky per user, weighted, and moving few users on change.

Scheme: a key (the request's ``user`` or ``X-Session-Id``) hashes to a point ``u`` in [0, 1)
(blake2b, so every gateway process agrees). Each canary owns a *lane*, a fixed band of that interval
whose width is its weight; the stable owns what no lane covers. Lanes sit at the two ends:
canaries with an odd registration number grow up from 0, the others grow down from 1, older canaries
outermost. A request without a key draws ``u`` at random, so it follows the same weights.

Why not weighted rendezvous (HRW) hashing? With HRW every version competes for every key, and the
stable's weight is the remainder: raising canary A lowers the stable's score, so some keys leave the
stable for canary B, and some of B's keys go to A — users churn between versions whose weights did
not change. With lanes, changing the weight of the innermost canary on its side from w to w' moves
exactly the keys in the band between the old and the new lane edge, |w' - w| of all users, and all
of them between that canary and the stable (the minimum any scheme can move). Two canaries with
consecutive registration numbers (the usual case: the candidate, perhaps the next one) sit on opposite
sides, each innermost, so every weight change is minimal. Two canaries on the same side (v1 and v3
after v2 retired) are not: a change to v1's weight shifts v3's lane, moving some users between v3 and
the stable. No fixed layout can do that for three canaries at once: with
weights (½, ½, 0), (½, 0, ½) and (0, ½, ½) all allowed, lane A(½) would have to be the complement
of both B(½) and C(½), which would then coincide although they must be disjoint. Here a change to
an outer canary shifts only the canaries inside it on the same side.
"""

from __future__ import annotations

import hashlib
import random

from policies.registry_models import RouteEntry, RoutingTable

__all__ = ["RouteEntry", "RoutingTable", "pick", "point", "lanes"]

_SCALE = float(1 << 64)


def point(sticky_key: str) -> float:
    """The key's fixed place in [0, 1): the same in every process and across restarts."""
    digest = hashlib.blake2b(sticky_key.encode("utf-8"), digest_size=8, person=b"flywheel-route").digest()
    return int.from_bytes(digest, "big") / _SCALE


def lanes(table: RoutingTable) -> list[tuple[float, float, RouteEntry]]:
    """Each canary's band ``[start, end)`` in [0, 1); the stable owns the rest."""
    low = [c for c in table.canaries if c.seq % 2 == 1]
    high = [c for c in table.canaries if c.seq % 2 == 0]
    bands: list[tuple[float, float, RouteEntry]] = []
    edge = 0.0
    for entry in sorted(low, key=lambda e: e.seq):
        width = max(0.0, entry.weight)
        bands.append((edge, min(1.0, edge + width), entry))  # clamped: float sums may pass 1 by an ulp
        edge += width
    edge = 1.0
    for entry in sorted(high, key=lambda e: e.seq):
        width = max(0.0, entry.weight)
        bands.append((max(0.0, edge - width), edge, entry))  # clamped: float sums may pass 0 by an ulp
        edge -= width
    return bands


def pick(table: RoutingTable, sticky_key: str | None, rng: random.Random | None = None) -> RouteEntry:
    """The version that answers: the key's lane owner, or the stable; no key → random by weight."""
    u = point(sticky_key) if sticky_key else (rng.random() if rng is not None else random.random())
    for start, end, entry in lanes(table):
        if start <= u < end:
            return entry
    return table.stable
