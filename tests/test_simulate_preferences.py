"""The simulation's pure parts: rules and scores, strict preference files, rating noise and adversaries,
the question bank, the population and the interaction plan. No server is needed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.procs import free_port
from flywheel.simulate import PreferenceError, SimulationConfig, load_preference, preset_path, run_simulation
from flywheel.simulate.population import build_population
from flywheel.simulate.questions import QuestionBank, load_fact_keywords
from flywheel.simulate.rating import RatingDraws, RatingPolicy, decide, p_up
from flywheel.simulate.report import SimulationReport
from flywheel.simulate.rules import (
    Answer, CitationRule, ContainsRule, FactRule, ForbidPatternRule, ForbidsRule, LengthRule, PatternRule,
    PolitenessRule, evaluate, score,
)  # fmt: skip
from flywheel.simulate.runner import plan_interactions
from policies.seed.corpus import CLOSERS, OPENERS, cite
from policies.seed.product import load_fact_sheet

PLAIN = "The Personal plan costs $6 per month and includes 1 TB of storage for up to 3 devices."
PERSONAL = ("$6", "1 TB")


def _answer(text: str, expected: tuple[str, ...] = PERSONAL) -> Answer:
    return Answer(text, expected)


# --- rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "text", "expected"), [
    (LengthRule("len", max_words=5), "one two three four five", True),
    (LengthRule("len", max_words=5), "one two three four five six", False),
    (LengthRule("len", min_words=3), "one two", False),
    (LengthRule("len", min_words=2, max_words=3), "one two three", True),
    (ContainsRule("c", phrases=("monthly", "$6")), PLAIN, True),
    (ContainsRule("c", phrases=("monthly", "$6"), match="all"), PLAIN, False),
    (ContainsRule("c", phrases=("personal plan",)), PLAIN, True),
    (ContainsRule("c", phrases=("personal plan",), case_sensitive=True), PLAIN, False),
    (ForbidsRule("f", phrases=("sorry", "cannot")), PLAIN, True),
    (ForbidsRule("f", phrases=("SORRY",)), "Sorry, I can't help with that request.", False),
    (PatternRule("p", regex=r"\$\d+ per month"), PLAIN, True),
    (PatternRule("p", regex=r"\bper year\b"), PLAIN, False),
    (ForbidPatternRule("fp", regex=r"\[\d+\]"), PLAIN, True),
    (ForbidPatternRule("fp", regex=r"\[\d+\]"), cite(PLAIN, 2), False),
    (CitationRule("cite"), cite(PLAIN, 3), True),
    (CitationRule("cite"), PLAIN, False),
    (CitationRule("cite"), "See [a] and (1).", False),
    (CitationRule("cite", min_count=2), cite(PLAIN, 1), False),
    (PolitenessRule("pol"), f"{PLAIN} Hope that helps!", True),
    (PolitenessRule("pol"), f"Great question. {PLAIN}", True),
    (PolitenessRule("pol"), PLAIN, False),
    (PolitenessRule("pol", markers=("cheers",)), f"{PLAIN} Cheers", True),
    (PolitenessRule("pol", min_count=2), f"Sure! {PLAIN}", False),
    (FactRule("fact"), PLAIN, True),
    (FactRule("fact"), "Personal is $6 a month.", False),
    (FactRule("fact", match="any"), "Personal is $6 a month.", True),
    (FactRule("fact"), "It costs $12 per month with 5 TB.", False),
])  # fmt: skip
def test_rule_kinds(rule, text: str, expected: bool) -> None:  # type: ignore[no-untyped-def]
    assert rule.holds(_answer(text)) is expected
    negated = type(rule)(**{**rule.__dict__, "negate": True})
    assert negated.holds(_answer(text)) is (not expected)


def test_fact_rule_does_not_apply_without_expected_fact() -> None:
    assert FactRule("fact").holds(Answer("Hello! I can answer questions.", ())) is None
    assert FactRule("fact", negate=True).holds(Answer("Hello!", ())) is None


def test_score_is_the_weighted_share_of_applicable_rules() -> None:
    rules = [CitationRule("cite", weight=2.0), FactRule("fact", weight=2.0), LengthRule("short", max_words=40),
             PolitenessRule("polite")]  # fmt: skip
    full = f"Sure! {cite(PLAIN, 1)} Hope that helps!"
    assert score(rules, evaluate(rules, _answer(full))) == 1.0
    assert score(rules, evaluate(rules, _answer(PLAIN))) == pytest.approx(3 / 6)
    assert score(rules, evaluate(rules, _answer(cite(PLAIN, 1)))) == pytest.approx(5 / 6)
    assert score(rules, evaluate(rules, _answer("No idea."))) == pytest.approx(1 / 6)
    # No expected fact: the fact rule drops out of numerator and denominator.
    assert score(rules, evaluate(rules, Answer(cite("Hello there", 1), ()))) == pytest.approx(3 / 4)
    assert score([FactRule("fact")], {"fact": None}) == 0.5


# --- preference files --------------------------------------------------------------------------

def test_shipped_default_rewards_what_the_seed_sometimes_does() -> None:
    """On answers written the way the seed corpus writes them, the default preference likes the cited or
    polite ones and dislikes the bare ones: the variation the loop can amplify, not a phrase it never says."""
    pref = load_preference()
    assert pref.name == "default"
    assert [type(r).__name__ for r in pref.rules] == ["CitationRule", "FactRule", "LengthRule", "PolitenessRule"]
    keywords = load_fact_keywords()
    rng = random.Random(0)
    for fact in load_fact_sheet().seed_facts:
        expected = keywords[fact.id]
        bare = fact.answers[0]
        judged = {
            "bare": bare,
            "cited": cite(bare, rng.randint(1, 4)),
            "polite": f"{rng.choice(OPENERS)} {bare} {rng.choice(CLOSERS)}",
        }
        scores = {k: score(pref.rules, evaluate(pref.rules, Answer(v, expected))) for k, v in judged.items()}
        assert p_up(scores["bare"], pref.rating) == 0.0, (fact.id, scores)
        assert p_up(scores["cited"], pref.rating) == 1.0, (fact.id, scores)
        assert p_up(scores["polite"], pref.rating) == 1.0, (fact.id, scores)
        wrong = score(pref.rules, evaluate(pref.rules, Answer("Sure! It is free [1].", expected)))
        assert wrong < scores["cited"]


def test_reversed_preference_is_the_opposite() -> None:
    default, reverse = load_preference(), load_preference(preset_path("reversed"))
    assert reverse.name == "reversed" and len(reverse.rules) == len(default.rules)
    samples = [PLAIN, cite(PLAIN, 1), f"Sure! {cite(PLAIN, 2)} Hope that helps!", "It is free. " * 30]
    for text in samples:
        a, b = evaluate(default.rules, _answer(text)), evaluate(reverse.rules, _answer(text))
        assert [v for v in a.values()] == [not v for v in b.values()], text
        assert score(default.rules, a) + score(reverse.rules, b) == pytest.approx(1.0)


def test_a_new_preference_is_only_a_file(tmp_path: Path) -> None:
    path = tmp_path / "terse.toml"
    path.write_text("""
[rating]
threshold = 1
noise = 0
[[rules]]
name = "tiny"
kind = "length"
max_words = 3
[[rules]]
name = "mentions_price"
kind = "pattern"
regex = '\\$\\d+'
weight = 3
""")
    pref = load_preference(path)
    assert pref.name == "terse" and pref.rule_names == ("tiny", "mentions_price")
    assert pref.rating == RatingPolicy(threshold=1.0, noise=0.0)
    assert score(pref.rules, evaluate(pref.rules, Answer("It's $6."))) == 1.0
    assert score(pref.rules, evaluate(pref.rules, Answer(PLAIN))) == pytest.approx(0.75)


BAD_FILES = [
    ("colour = 1\n[[rules]]\nname='a'\nkind='citation'", "unknown key 'colour'"),
    ("[[rules]]\nname='a'\nkind='citation'\nwieght=2", "rules[0]: unknown key 'wieght'"),
    ("[[rules]]\nname='a'\nkind='vibes'", "rules[0].kind must be one of"),
    ("[[rules]]\nkind='citation'", "rules[0] needs a name"),
    ("[[rules]]\nname='a'\nkind='citation'\nweight=0", "weight must be > 0"),
    ("[[rules]]\nname='a'\nkind='citation'\nweight='heavy'", "rules[0].weight must be float"),
    ("[[rules]]\nname='a'\nkind='citation'\nnegate=1", "rules[0].negate must be bool"),
    ("[[rules]]\nname='a'\nkind='length'\nmin_words=true", "rules[0].min_words must be int"),
    ("[[rules]]\nname='a'\nkind='length'", "needs min_words or max_words"),
    ("[[rules]]\nname='a'\nkind='length'\nmin_words=9\nmax_words=3", "0 <= min_words <= max_words"),
    ("[[rules]]\nname='a'\nkind='pattern'\nregex='(unclosed'", "regex is not a valid regex"),
    ("[[rules]]\nname='a'\nkind='pattern'", "needs a regex"),
    ("[[rules]]\nname='a'\nkind='contains'", "needs phrases"),
    ("[[rules]]\nname='a'\nkind='contains'\nphrases=[]", "phrases must not be empty"),
    ("[[rules]]\nname='a'\nkind='contains'\nphrases=['x', 3]", "phrases[1] must be str"),
    ("[[rules]]\nname='a'\nkind='contains'\nphrases=['x']\nmatch='most'", "match must be one of"),
    ("[[rules]]\nname='a'\nkind='citation'\n[[rules]]\nname='a'\nkind='politeness'", "two rules are named 'a'"),
    ("[rating]\nnoise=1.5\n[[rules]]\nname='a'\nkind='citation'", "rating: noise must be in [0, 1]"),
    ("[rating]\ntemperature=-1\n[[rules]]\nname='a'\nkind='citation'", "temperature must be >= 0"),
    ("[rating]\nloud=true\n[[rules]]\nname='a'\nkind='citation'", "rating: unknown key 'loud'"),
    ("name='x'", "at least one [[rules]]"),
    ("[[rules]\nname=", "not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), BAD_FILES)
def test_bad_files_are_one_clear_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(PreferenceError) as info:
        load_preference(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_missing_file_and_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(PreferenceError, match="cannot read"):
        load_preference(tmp_path / "nope.toml")
    with pytest.raises(PreferenceError, match="no shipped preference named 'nope'"):
        preset_path("nope")
    with pytest.raises(PreferenceError, match="no such preference file"):
        SimulationConfig(preferences=tmp_path / "nope.toml").preference()
    assert SimulationConfig(preferences="reversed").preference().name == "reversed"


# --- rating ------------------------------------------------------------------------------------

def _ratings(policy: RatingPolicy, score_value: float, n: int, adversarial: bool = False, seed: int = 1) -> list:
    rng = random.Random(seed)
    return [decide(score_value, policy, RatingDraws.sample(rng), adversarial) for _ in range(n)]


def test_threshold_and_logistic() -> None:
    hard = RatingPolicy(threshold=0.6)
    assert p_up(0.6, hard) == 1.0 and p_up(0.59, hard) == 0.0
    soft = RatingPolicy(threshold=0.6, temperature=0.1)
    assert p_up(0.6, soft) == pytest.approx(0.5)
    assert p_up(0.2, soft) < p_up(0.5, soft) < p_up(0.7, soft) < p_up(1.0, soft)
    assert p_up(1.0, RatingPolicy(threshold=0.0, temperature=1e-9)) == 1.0  # no overflow
    ups = _ratings(soft, 0.7, 4000).count("up") / 4000
    assert ups == pytest.approx(p_up(0.7, soft), abs=0.03)


def test_honest_careful_users_follow_the_score() -> None:
    policy = RatingPolicy(threshold=0.5)
    assert set(_ratings(policy, 0.9, 500)) == {"up"}
    assert set(_ratings(policy, 0.1, 500)) == {"down"}


def test_adversaries_rate_the_opposite_way() -> None:
    policy = RatingPolicy(threshold=0.5, noise=0.1, adversarial_fraction=1.0)
    honest = _ratings(policy, 0.9, 2000, adversarial=False)
    flipped = _ratings(policy, 0.9, 2000, adversarial=True)  # same dice
    assert all(a != b for a, b in zip(honest, flipped, strict=True))
    users = build_population(50, 1.0, seed=3)
    assert all(u.adversarial for u in users)
    assert {decide(0.9, RatingPolicy(), RatingDraws(0.1, 0.1, 0.9), u.adversarial) for u in users} == {"down"}


def test_noise_half_is_a_coin() -> None:
    ratings = _ratings(RatingPolicy(threshold=0.5, noise=0.5), 1.0, 4000)
    assert ratings.count("up") / len(ratings) == pytest.approx(0.5, abs=0.03)
    small = _ratings(RatingPolicy(threshold=0.5, noise=0.1), 1.0, 4000)
    assert small.count("down") / len(small) == pytest.approx(0.1, abs=0.02)


def test_rating_probability() -> None:
    ratings = _ratings(RatingPolicy(rating_probability=0.3), 1.0, 4000)
    assert sum(r is not None for r in ratings) / len(ratings) == pytest.approx(0.3, abs=0.03)
    assert set(_ratings(RatingPolicy(rating_probability=0.0), 1.0, 200)) == {None}


# --- questions, population, plan ---------------------------------------------------------------

def test_fact_keywords_match_the_fact_sheet() -> None:
    """Every fact has keywords, and each keyword is in the fact's text and in every one of its answers."""
    keywords = load_fact_keywords()
    sheet = load_fact_sheet()
    assert set(keywords) == {f.id for f in sheet.facts}
    for fact in sheet.facts:
        assert keywords[fact.id], fact.id
        for word in keywords[fact.id]:
            for text in (fact.text, *fact.answers):
                assert word.lower() in text.lower(), (fact.id, word, text)


def test_question_bank_covers_topics_and_splits_stably() -> None:
    bank = QuestionBank.from_fact_sheet()
    sheet = load_fact_sheet()
    assert len(bank) == sum(len(f.questions) for f in sheet.facts)
    assert set(bank.topics) == set(sheet.topics)
    assert len(QuestionBank.from_fact_sheet(include_kb_only=False)) == sum(len(f.questions) for f in sheet.seed_facts)
    train, held = bank.part("train"), bank.part("heldout")
    train_facts, held_facts = {q.fact_id for q in train.questions}, {q.fact_id for q in held.questions}
    assert train_facts and held_facts and not train_facts & held_facts
    assert len(train) + len(held) == len(bank)
    assert bank.part("heldout") == held  # by fact id, not by any seed
    assert 0.05 < len(held_facts) / len(sheet.facts) < 0.45
    with pytest.raises(ValueError):
        bank.part("heldout", heldout_fraction=1.0)


def test_sampling_is_deterministic_by_seed() -> None:
    bank = QuestionBank.from_fact_sheet()
    draw = lambda seed: [bank.sample(r).text for r in [random.Random(seed)] for _ in range(50)]  # noqa: E731
    assert draw(7) == draw(7) and draw(7) != draw(8)


def test_population_ids_and_adversarial_share() -> None:
    users = build_population(40, 0.25, seed=5)
    assert [u.id for u in users] == [f"sim-{i}" for i in range(40)]
    assert sum(u.adversarial for u in users) == 10
    again = build_population(40, 0.25, seed=5)
    assert [u.adversarial for u in users] == [u.adversarial for u in again]
    assert [u.rng.random() for u in users] == [u.rng.random() for u in again]
    assert [u.adversarial for u in build_population(40, 0.25, seed=6)] != [u.adversarial for u in users]
    assert not any(u.adversarial for u in build_population(10, 0.0, seed=5))
    assert build_population(2, 0.0, seed=0, prefix="fresh")[1].id == "fresh-1"
    with pytest.raises(ValueError):
        build_population(0, 0.0, seed=0)


def test_plan_is_a_function_of_the_seed() -> None:
    bank = QuestionBank.from_fact_sheet()

    def plan(seed: int) -> list[tuple]:
        users = build_population(8, 0.25, seed)
        return [(p.user.id, p.question.text, p.draws, p.request_seed) for p in plan_interactions(users, bank, 60, seed)]

    first = plan(11)
    assert first == plan(11) and first != plan(12)
    assert len({user for user, *_ in first}) == 8  # 60 requests reach every one of 8 users


# --- config, report, CLI -----------------------------------------------------------------------

def test_config_checks_its_values() -> None:
    with pytest.raises(ValueError, match="noise"):
        SimulationConfig(noise=2.0)
    with pytest.raises(ValueError, match="users"):
        SimulationConfig(users=0)
    config = SimulationConfig(noise=0.5, adversarial_fraction=0.2)
    policy = config.rating_policy(config.preference())
    assert (policy.noise, policy.adversarial_fraction, policy.threshold) == (0.5, 0.2, 0.6)
    assert "api_key" not in config.to_dict()
    json.dumps(config.to_dict())


def test_gateway_down_is_counted_not_raised() -> None:
    """Every request fails to connect: the run ends with the failures counted by kind."""
    config = SimulationConfig(url=f"http://127.0.0.1:{free_port()}", interactions=6, concurrency=3, max_retries=0,
                              timeout_s=5)  # fmt: skip
    report = run_simulation(config)
    assert isinstance(report, SimulationReport)
    assert report.versions == {} and dict(report.errors) == {"chat:connection": 6}
    assert report.to_dict()["totals"]["error_count"] == 6
    pinned = run_simulation(SimulationConfig(url=config.url, interactions=2, model="v9", max_retries=0))
    assert dict(pinned.versions["v9"].errors) == {"chat:connection": 2}


def test_cli_rejects_a_bad_preference_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\nname='a'\nkind='vibes'\n")
    result = CliRunner().invoke(app, ["simulate", "--preferences", str(bad), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "kind must be one of" in lines[0]


def test_cli_fails_when_nothing_is_answered(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["simulate", "--url", f"http://127.0.0.1:{free_port()}", "-n", "2",
                                      "--key", "k", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "no question was answered" in result.output
    assert json.loads(out.read_text())["unattributed_errors"] == {"chat:connection": 2}
