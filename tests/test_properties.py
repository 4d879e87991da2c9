"""Property tests (Hypothesis, pure logic, no servers): the router, the feedback token signer, PII
redaction and the preference export.

Each property states what must hold for *any* input of its kind; the example-based suites
(test_routing.py, test_pii.py, test_export.py, test_feedback_api.py) pin specific cases.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import re
import string
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from feedback.export import is_heldout
from feedback.pairs import ExportConfig, InteractionRecord, RatingRecord, _norm, build_pairs, prompt_hash
from feedback.tokens import FeedbackTokenSigner, InvalidToken
from gateway.routing.split import RouteEntry, RoutingTable, lanes, pick
from safety.pii import iban_valid, luhn_valid, redact

USERS = [f"user-{i}" for i in range(3000)]


# --- router ------------------------------------------------------------------------------------
def routing_table(weights: list[float], seqs: list[int]) -> RoutingTable:
    pairs = zip(weights, seqs, strict=True)
    canaries = tuple(RouteEntry(f"v{s}", f"flywheel-v{s}", None, "canary", w, s) for w, s in pairs)
    stable = RouteEntry("seed", "seed", None, "stable", max(0.0, 1.0 - sum(weights)), 0)
    return RoutingTable(stable=stable, canaries=canaries)


@st.composite
def tables(draw: st.DrawFn, max_canaries: int = 3) -> tuple[list[float], list[int]]:
    """Canary weights that sum to at most 1 (gaps between sorted cut points) and distinct seqs."""
    k = draw(st.integers(1, max_canaries))
    cuts = sorted(draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k)))
    weights = [(b - a) / 1000 for a, b in zip([0, *cuts], cuts, strict=False)]
    seqs = draw(st.lists(st.integers(1, 12), min_size=k, max_size=k, unique=True))
    return weights, seqs


def assignment(table: RoutingTable) -> dict[str, str]:
    return {u: pick(table, u).version_id for u in USERS}


@settings(max_examples=60, deadline=None)
@given(tables())
def test_lanes_partition_the_unit_interval_by_weight(spec: tuple[list[float], list[int]]) -> None:
    weights, seqs = spec
    table = routing_table(weights, seqs)
    bands = sorted((start, end) for start, end, _ in lanes(table))
    for (_, end), (start, _) in zip(bands, bands[1:], strict=False):
        assert end <= start + 1e-9, bands  # lanes never overlap
    assert all(0.0 <= s <= e <= 1.0 + 1e-9 for s, e in bands)
    for start, end, entry in lanes(table):
        assert end - start == pytest.approx(entry.weight, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(tables())
def test_split_fractions_follow_the_weights(spec: tuple[list[float], list[int]]) -> None:
    weights, seqs = spec
    table = routing_table(weights, seqs)
    got = Counter(assignment(table).values())
    rng = random.Random(0)
    unkeyed = Counter(pick(table, None, rng).version_id for _ in USERS)
    for entry in table.entries():
        # 5 binomial standard deviations: a correct split fails this about once in 3.5 million checks
        tolerance = 5 * (entry.weight * (1 - entry.weight) / len(USERS)) ** 0.5 + 1e-9
        assert abs(got[entry.version_id] / len(USERS) - entry.weight) <= tolerance, (entry, got)
        assert abs(unkeyed[entry.version_id] / len(USERS) - entry.weight) <= tolerance, (entry, unkeyed)


@settings(max_examples=60, deadline=None)
@given(tables(), st.lists(st.text(min_size=1), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_the_same_user_always_gets_the_same_version(
    spec: tuple[list[float], list[int]], keys: list[str], shuffle: random.Random
) -> None:
    weights, seqs = spec
    table = routing_table(weights, seqs)
    # A rebuilt table (new revision, canaries listed in another order) routes every key the same way.
    order = list(range(len(weights)))
    shuffle.shuffle(order)
    rebuilt = RoutingTable(table.stable, tuple(table.canaries[i] for i in order), revision=table.revision + 1)
    for key in keys:
        first = pick(table, key).version_id
        assert all(pick(table, key).version_id == first for _ in range(3))
        assert pick(rebuilt, key).version_id == first
    assert assignment(rebuilt) == assignment(table)


def _innermost(seqs: list[int]) -> list[int]:
    """Indexes of the canaries with no younger canary on their side (odd seqs low, even seqs high)."""
    return [i for i, s in enumerate(seqs) if not any(t > s and t % 2 == s % 2 for t in seqs)]


def _reweigh(
    data: st.DataObject, weights: list[float], seqs: list[int], candidates: list[int]
) -> tuple[int, float, dict[str, str], dict[str, str]]:
    """Give one of ``candidates`` (canary indexes) a new weight that keeps the sum <= 1: (index, new
    weight, assignment before, assignment after)."""
    index = data.draw(st.sampled_from(candidates))
    room = 1.0 - sum(weights) + weights[index]
    new = data.draw(st.integers(0, int(room * 1000))) / 1000
    changed = [new if i == index else w for i, w in enumerate(weights)]
    return index, new, assignment(routing_table(weights, seqs)), assignment(routing_table(changed, seqs))


@settings(max_examples=60, deadline=None)
@given(tables(max_canaries=4), st.data())
def test_a_weight_change_moves_users_only_between_that_canary_and_the_stable(
    spec: tuple[list[float], list[int]], data: st.DataObject
) -> None:
    """Minimal movement for a canary innermost on its side (any two canaries of different parity).

    Not for two canaries on one side (v1 and v3 once v2 is gone): the inner one's lane shifts when
    the outer one's weight changes, so some users move between the inner canary and the stable.
    """
    weights, seqs = spec
    index, new, before, after = _reweigh(data, weights, seqs, _innermost(seqs))
    changed = f"v{seqs[index]}"
    moved = [(before[u], after[u]) for u in USERS if before[u] != after[u]]
    grew = new > weights[index]
    for old, now in moved:
        assert (old, now) == (("seed", changed) if grew else (changed, "seed")), (old, now, weights, new)
    tolerance = 5 * (abs(new - weights[index]) / len(USERS)) ** 0.5 + 1e-9
    assert abs(len(moved) / len(USERS) - abs(new - weights[index])) <= tolerance


@settings(max_examples=60, deadline=None)
@given(tables(max_canaries=4), st.data())
def test_a_weight_change_leaves_the_other_side_and_outer_canaries_alone(
    spec: tuple[list[float], list[int]], data: st.DataObject
) -> None:
    """Any number of canaries: only the changed canary and the ones inside it on its side move."""
    weights, seqs = spec
    index, new, before, after = _reweigh(data, weights, seqs, list(range(len(weights))))
    seq = seqs[index]
    may_move = {"seed", f"v{seq}"} | {f"v{s}" for s in seqs if s % 2 == seq % 2 and s > seq}
    for user in USERS:
        if before[user] != after[user]:
            assert before[user] in may_move and after[user] in may_move, (user, before[user], after[user])
            if new > weights[index]:
                assert before[user] != f"v{seq}", "a canary whose weight grew lost a user"
            else:
                assert after[user] != f"v{seq}", "a canary whose weight shrank gained a user"


# --- feedback token signer ---------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ids = st.text(min_size=1, max_size=64)  # versions, and response ids presented by a client
response_ids = ids.filter(lambda s: "|" not in s)  # those the gateway issues tokens for: never a "|"
secrets = st.binary(min_size=1, max_size=64)
NOW = 1_750_000_000.0


@settings(max_examples=200)
@given(secrets, response_ids, ids, st.integers(1, 10**7))
def test_token_round_trip(secret: bytes, response_id: str, version: str, ttl: int) -> None:
    clock = Clock(NOW)
    signer = FeedbackTokenSigner(secret, ttl, clock)
    claims = signer.verify(signer.issue(response_id, version), response_id)
    assert (claims.response_id, claims.policy_version, claims.expires_at) == (response_id, version, int(NOW) + ttl)
    clock.now = NOW + ttl  # still valid at its last second
    assert signer.verify(signer.issue(response_id, version), response_id).policy_version == version


@settings(max_examples=300)
@given(secrets, response_ids, ids, st.data())
def test_a_token_with_any_character_changed_is_rejected(
    secret: bytes, response_id: str, version: str, data: st.DataObject
) -> None:
    signer = FeedbackTokenSigner(secret, 3600, Clock(NOW))
    parts = signer.issue(response_id, version).split(".")
    # A part, then a place in it: Hypothesis then tries each part's first and last characters often.
    part = data.draw(st.integers(0, len(parts) - 1))
    at = data.draw(st.integers(0, len(parts[part]) - 1))
    other = data.draw(st.characters(codec="ascii").filter(lambda c: c != parts[part][at]))
    parts[part] = parts[part][:at] + other + parts[part][at + 1 :]
    with pytest.raises(InvalidToken):
        signer.verify(".".join(parts), response_id)


@settings(max_examples=200)
@given(secrets, response_ids, ids, ids)
def test_a_token_is_bound_to_its_response(secret: bytes, response_id: str, version: str, other: str) -> None:
    assume(other != response_id)
    signer = FeedbackTokenSigner(secret, 3600, Clock(NOW))
    with pytest.raises(InvalidToken):
        signer.verify(signer.issue(response_id, version), other)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


# Short ids over few characters (the MAC's field separator among them), so that collisions get tried.
near_ids = st.text("ab|1.", min_size=1, max_size=6)
near_response_ids = st.text("ab1.", min_size=1, max_size=6)


@settings(max_examples=300)
@given(secrets, near_response_ids, near_ids, near_ids, near_ids)
def test_a_token_relabelled_to_another_version_verifies_for_no_response(
    secret: bytes, response_id: str, version: str, other_id: str, other_version: str
) -> None:
    """Rewriting the version inside a token (an attacker can) must not make it valid for any response."""
    assume(other_version != version)
    signer = FeedbackTokenSigner(secret, 3600, Clock(NOW))
    prefix, expiry, _, mac = signer.issue(response_id, version).split(".")
    relabelled = ".".join([prefix, expiry, _b64(other_version), mac])
    for presented_for in (response_id, other_id):
        with pytest.raises(InvalidToken):
            signer.verify(relabelled, presented_for)


@settings(max_examples=100)
@given(secrets, response_ids, ids, ids)
def test_claims_that_read_alike_do_not_share_a_token(secret: bytes, a: str, b: str, c: str) -> None:
    """Response ``a|b`` of version ``c`` and response ``a`` of version ``b|c`` are different claims.

    Both spell the same MAC input, so the signer must refuse ``|`` in a response id on both sides: it
    issues no token for ``a|b``, and a token issued for ``a`` of version ``b|c`` (versions may hold ``|``),
    relabelled to version ``c``, does not verify for response ``a|b``."""
    signer = FeedbackTokenSigner(secret, 3600, Clock(NOW))
    with pytest.raises(ValueError):
        signer.issue(f"{a}|{b}", c)
    prefix, expiry, _, mac = signer.issue(a, f"{b}|{c}").split(".")
    with pytest.raises(InvalidToken):
        signer.verify(".".join([prefix, expiry, _b64(c), mac]), f"{a}|{b}")


@settings(max_examples=200)
@given(secrets, secrets, response_ids, ids)
def test_a_token_from_another_secret_is_rejected(secret: bytes, other: bytes, response_id: str, version: str) -> None:
    assume(other.rstrip(b"\0") != secret.rstrip(b"\0"))  # HMAC pads short keys with NULs: those are one key
    token = FeedbackTokenSigner(other, 3600, Clock(NOW)).issue(response_id, version)
    with pytest.raises(InvalidToken):
        FeedbackTokenSigner(secret, 3600, Clock(NOW)).verify(token, response_id)


@settings(max_examples=200)
@given(secrets, response_ids, ids, st.integers(1, 10**6), st.floats(0.001, 10**6))
def test_an_expired_token_is_rejected(secret: bytes, response_id: str, version: str, ttl: int, late: float) -> None:
    clock = Clock(NOW)
    signer = FeedbackTokenSigner(secret, ttl, clock)
    token = signer.issue(response_id, version)
    clock.now = NOW + ttl + late
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token, response_id)


# --- PII redaction -----------------------------------------------------------------------------
LOWER = string.ascii_lowercase
ALNUM = string.ascii_letters + string.digits
# Plain words; "bearer"/"basic" would (rightly) make the next word look like a credential.
words = st.text(LOWER, min_size=1, max_size=10).filter(lambda w: w not in ("bearer", "basic"))
filler = st.lists(words, max_size=6).map(" ".join)


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text(string.digits, min_size=n, max_size=n)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text(ALNUM + "._%+-", min_size=1, max_size=20).filter(lambda s: s[0].isalnum()))
    labels = draw(st.lists(st.text(LOWER + string.digits + "-", min_size=1, max_size=12), min_size=1, max_size=3))
    tld = draw(st.text(LOWER, min_size=2, max_size=6))
    return f"{local}@{'.'.join(labels)}.{tld}"


US_SHAPES = ["({a}) {e}-{l}", "{a}-{e}-{l}", "{a}.{e}.{l}", "1-{a}-{e}-{l}", "+1 ({a}) {e}-{l}"]


@st.composite
def phones(draw: st.DrawFn) -> str:
    style = draw(st.sampled_from(["intl", "us", "national"]))
    if style == "intl":
        cc = draw(st.integers(1, 999))
        groups = draw(st.lists(st.integers(2, 4).flatmap(_digits), min_size=2, max_size=4))
        assume(7 <= len(str(cc)) + sum(map(len, groups)) <= 15)
        return f"+{cc} " + draw(st.sampled_from([" ", "-"])).join(groups)  # "+1 10.10.10.10" is an IP too
    if style == "us":
        # NANP: area code and exchange start with 2-9 ("1-000-…" would read as "1-" and an "00" prefix)
        area, exchange = (draw(st.integers(200, 999)) for _ in range(2))
        line = draw(_digits(4))
        return draw(st.sampled_from(US_SHAPES)).format(a=area, e=exchange, l=line)
    # Groups of 2 or 4 digits, none starting "00": a 3-3-4 tail reads as a US number and "00" as an
    # international prefix, and either would be redacted without the trunk group ("01 [PHONE]").
    trunk = "0" + draw(st.integers(1, 4).flatmap(_digits))
    groups = draw(st.lists(st.sampled_from([2, 4]).flatmap(_digits), min_size=1, max_size=4))
    assume(9 <= len(trunk) + sum(map(len, groups)) <= 12)
    assume(not any(g.startswith("00") for g in groups))
    return " ".join([trunk, *groups])


# (issuer prefix, length): Visa, Mastercard (old and 2-series), Amex, Diners, Discover
CARD_BRANDS = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("22", 16), ("34", 15), ("37", 15), ("36", 14),
               ("6011", 16)]  # fmt: skip


def luhn_complete(partial: str) -> str:
    """Append the check digit that makes ``partial`` Luhn-valid."""
    digit = next(d for d in string.digits if luhn_valid(partial + d))
    return partial + digit


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(CARD_BRANDS))
    number = luhn_complete(prefix + draw(_digits(length - len(prefix) - 1)))
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.text(string.ascii_uppercase, min_size=2, max_size=2))
    bban = draw(st.text(string.ascii_uppercase + string.digits, min_size=11, max_size=28))
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    compact = f"{country}{check:02d}{bban}"
    assert iban_valid(compact)
    if draw(st.booleans()):
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


ipv4s = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6s = st.integers(1, 2**128 - 1).flatmap(
    lambda n: st.sampled_from([ipaddress.IPv6Address(n).compressed, ipaddress.IPv6Address(n).exploded])
)


@st.composite
def api_keys(draw: st.DrawFn) -> str:
    body = st.text(ALNUM, min_size=40, max_size=40)
    shape = draw(st.sampled_from(["sk", "stripe", "aws", "github", "slack", "google", "gitlab", "kv", "bearer"]))
    b = draw(body)
    return {
        "sk": f"sk-{b[: draw(st.integers(16, 40))]}",
        "stripe": f"sk_live_{b[:24]}",
        "aws": f"AKIA{b.upper()[:16]}",
        "github": f"ghp_{b[:36]}",
        "slack": f"xoxb-{b[:24]}",
        "google": f"AIza{b[:35]}",
        "gitlab": f"glpat-{b[:20]}",
        "kv": f"api_key={b[:20]}",
        "bearer": f"Bearer {b[:32]}",
    }[shape]


PII = {
    "email": emails(), "phone": phones(), "card": cards(), "iban": ibans(), "ipv4": ipv4s, "ipv6": ipv6s,
    "key": api_keys(),
}  # fmt: skip


PLACEHOLDER = re.compile(r"\[(?:SECRET|EMAIL|IBAN|CARD|IP|PHONE)\]")


@pytest.mark.parametrize("kind", list(PII))
def test_embedded_pii_never_survives_and_the_words_around_it_do(kind: str) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(filler, PII[kind], filler)
    def check(before: str, pii: str, after: str) -> None:
        if kind == "iban":  # "…56Y ab cd" may itself be a valid IBAN ending in groups "ab cd": ambiguous
            follow = after.split()
            assume(not any(iban_valid("".join([pii, *follow[:k]]).replace(" ", "")) for k in range(1, len(follow) + 1)))
        text = " ".join(part for part in (before, pii, after) if part)
        out = redact(text)
        words = out.text.split()
        head, tail = len(before.split()), len(after.split())
        assert words[:head] == before.split() and words[len(words) - tail :] == after.split(), (text, out.text)
        # Where the PII stood: placeholders, perhaps a name ("api_key=") or punctuation, no letter or digit of it.
        middle = PLACEHOLDER.sub("", " ".join(words[head : len(words) - tail]))
        left = re.sub(r"[^0-9A-Za-z]", "", middle.removeprefix("Bearer").removeprefix("api_key="))
        assert not left, f"{pii!r} left {left!r} in {out.text!r}"
        assert out.found

    check()


@settings(max_examples=300)
@given(st.text(LOWER + string.ascii_uppercase + " .,!?'\n-", max_size=200))
def test_text_without_pii_is_unchanged(text: str) -> None:
    assume(not any(w.lower() in ("bearer", "basic") for w in text.split()))
    out = redact(text)
    assert out.text == text and not out.found


@settings(max_examples=300)
@given(st.lists(st.tuples(words, st.integers(0, 999)), max_size=12))
def test_prose_with_small_numbers_is_unchanged(parts: list[tuple[str, int]]) -> None:
    text = " ".join(f"{word} {number}" for word, number in parts)
    out = redact(text)
    assert out.text == text and not out.found


# --- preference export -------------------------------------------------------------------------
PROMPTS = ["How do I restore?", "What does it cost?", "how do I  RESTORE?", "Is my data encrypted?"]
ANSWERS = ["Use restore.", "use RESTORE.", "It costs 5.", "Yes.", "No.", "Ask support.", "Click Restore now."]
RATERS = ["alice", "bob", "carol", "dave", None]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@st.composite
def interactions(draw: st.DrawFn, n: int) -> list[InteractionRecord]:
    records = []
    for i in range(n):
        candidates = draw(
            st.lists(st.tuples(st.sampled_from(ANSWERS), st.none() | st.floats(-1, 1)), min_size=1, max_size=4)
        )
        records.append(
            InteractionRecord(
                response_id=f"r{i}",
                messages=[{"role": "user", "content": draw(st.sampled_from(PROMPTS))}],
                candidates=candidates,
                chosen_index=draw(st.integers(0, len(candidates) - 1)),
                policy_version=draw(st.sampled_from(["seed", "v1"])),
                user_hash=draw(st.sampled_from(RATERS)),
            )
        )
    return records


@st.composite
def stores(draw: st.DrawFn) -> tuple[list[InteractionRecord], list[RatingRecord], ExportConfig]:
    records = draw(interactions(draw(st.integers(1, 14))))
    # Distinct times: which of one rater's ratings of one response is the latest must be decidable.
    times = draw(st.lists(st.integers(0, 1000), max_size=30, unique=True))
    ratings = [
        RatingRecord(
            response_id=draw(st.sampled_from([r.response_id for r in records] + ["unknown"])),
            rating=draw(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])),
            user_hash=draw(st.sampled_from(RATERS)),
            time=T0 + timedelta(seconds=t),
        )
        for t in times
    ]
    cfg = ExportConfig(
        min_reward_margin=draw(st.sampled_from([0.0, 0.3, 0.5])),
        max_pairs_per_user=draw(st.integers(1, 6)),
        max_pairs_per_prompt=draw(st.integers(1, 20)),
    )
    return records, ratings, cfg


@settings(max_examples=200, deadline=None)
@given(stores())
def test_preference_pairs_are_sound(store: tuple[list[InteractionRecord], list[RatingRecord], ExportConfig]) -> None:
    records, ratings, cfg = store
    result = build_pairs(records, ratings, cfg)
    answers_by_prompt: dict[str, set[str]] = {}
    for r in records:
        answers_by_prompt.setdefault(prompt_hash(r.messages), set()).update(_norm(t) for t, _ in r.candidates)
    per_user: Counter[str] = Counter()
    for p in result.pairs:
        assert _norm(p.chosen) != _norm(p.rejected), p
        assert p.prompt_hash == prompt_hash(p.prompt), p
        # no pair crosses prompts: both sides were answers to this very prompt
        assert {_norm(p.chosen), _norm(p.rejected)} <= answers_by_prompt[p.prompt_hash], p
        per_user.update(p.users)
    assert all(n <= cfg.max_pairs_per_user for n in per_user.values()), per_user
    keys = {p.key for p in result.pairs}
    assert len(keys) == len(result.pairs), "a duplicate pair survived"
    assert not any((h, rej, ch) in keys for h, ch, rej in keys), "a pair and its reverse both survived"


def _kept(records: list[InteractionRecord], ratings: list[RatingRecord], cfg: ExportConfig) -> set[tuple]:
    """The exported pairs with their attribution (which users the cap charged for each)."""
    return {(p.pair_id, p.source, p.weight, p.users) for p in build_pairs(records, ratings, cfg).pairs}


@settings(max_examples=100, deadline=None)
@given(stores(), st.randoms(use_true_random=False))
def test_preference_pairs_do_not_depend_on_arrival_order(
    store: tuple[list[InteractionRecord], list[RatingRecord], ExportConfig], rng: random.Random
) -> None:
    records, ratings, cfg = store
    shuffled_records, shuffled_ratings = records[:], ratings[:]
    rng.shuffle(shuffled_records)
    rng.shuffle(shuffled_ratings)
    assert _kept(records, ratings, cfg) == _kept(shuffled_records, shuffled_ratings, cfg)


@settings(max_examples=100, deadline=None)
@given(stores(), st.floats(0, 1), st.floats(0, 1))
def test_heldout_split_is_disjoint_by_prompt_and_grows_with_the_fraction(
    store: tuple[list[InteractionRecord], list[RatingRecord], ExportConfig], fraction: float, more: float
) -> None:
    records, ratings, cfg = store
    pairs = build_pairs(records, ratings, cfg).pairs
    train = {p.prompt_hash for p in pairs if not is_heldout(p, fraction)}
    held = {p.prompt_hash for p in pairs if is_heldout(p, fraction)}
    assert not train & held
    assert train | held == {p.prompt_hash for p in pairs}
    larger = max(fraction, more)
    assert held <= {p.prompt_hash for p in pairs if is_heldout(p, larger)}
