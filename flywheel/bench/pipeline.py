"""`flywheel bench pipeline`: what the request stages cost.

1. Safety + grounding per request, measured in-process on the stage objects the gateway builds
   (same encoder, same KB, same filters) over the shipped QA questions: input chain, retrieval,
   condensing, output chain on a typical answer.
2. Best-of-n latency for n = 1, 2, 4, 8 end to end through a real gateway and real vLLM (one vLLM call
   with n=k, then reward scoring), side by side in one run. Each question is asked once unmeasured
   first (it pays the question's cold caches), then once per k in an order rotated per question, so no
   k is systematically first.
3. Retrieval latency over 10,000 chunks (``flywheel.bench.retrieval``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from flywheel.bench.gateway import pick_seed_model
from flywheel.bench.options import int_list
from flywheel.bench.report import write_section
from flywheel.bench.services import start_flywheel, start_vllm
from flywheel.settings import Settings
from gateway.grounding.encoder import Encoder

QA_PATH = Path(__file__).resolve().parents[2] / "gateway" / "grounding" / "kb" / "eval" / "qa.jsonl"
ANSWER = "The Personal plan costs $6 per month and includes 1 TB of storage for up to 3 devices [1]."


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stage_costs(settings: Settings, encoder: Encoder, rounds: int) -> dict[str, dict[str, float]]:
    """Per-request milliseconds of each stage, p50/p99, on the gateway's own stage objects."""
    from gateway.chat.pipeline import RequestPipeline
    from gateway.grounding.retriever import Retriever
    from gateway.grounding.stage import GroundingStage
    from safety.chain import SafetyChain
    from safety.classifier import ensure_trained

    ensure_trained(settings.safety_classifier_dir, encoder)  # as `flywheel up` does: the chain as deployed
    pipeline = RequestPipeline(
        SafetyChain.from_settings(settings.model_copy(update={"safety_classifier_required": True}), encoder=encoder),
        GroundingStage(Retriever.from_settings(settings, encoder=encoder), settings.grounding_top_k),
        None, grounding_default=True, best_of_n_default=1, max_best_of_n=8,
    )  # fmt: skip
    questions = [json.loads(line)["question"] for line in QA_PATH.read_text().splitlines() if line.strip()]
    times: dict[str, list[float]] = {"input safety": [], "grounding": [], "output safety": [], "total": []}
    for _ in range(rounds):
        for question in questions:
            messages = [{"role": "user", "content": question}]
            encoder.clear_cache()  # each request pays for its own embeddings, as a new question would
            pipeline.safety.classifier_filters and _clear_classifier_cache(pipeline.safety)
            t0 = time.perf_counter()
            checked = pipeline.safety.check_input(messages)
            t1 = time.perf_counter()
            pipeline.grounding.ground(checked.messages or messages)  # type: ignore[union-attr]
            t2 = time.perf_counter()
            pipeline.check_output(ANSWER)
            t3 = time.perf_counter()
            for name, value in (("input safety", t1 - t0), ("grounding", t2 - t1), ("output safety", t3 - t2),
                                ("total", t3 - t0)):  # fmt: skip
                times[name].append(value * 1000)
    return {k: {"p50": statistics.median(v), "p99": _pct(v, 0.99), "n": len(v)} for k, v in times.items()}


def _clear_classifier_cache(chain: object) -> None:
    for flt in getattr(chain, "classifier_filters", []):
        cache = getattr(getattr(flt, "classifier", None), "_cache", None)
        if cache is not None:
            cache.clear()


def request_order(ks: list[int], i: int) -> list[int]:
    """The order of the k values for the ``i``-th measured question: ``ks`` rotated by ``i``, so each k
    goes first (and follows each other k) equally often, give or take one."""
    r = i % len(ks)
    return ks[r:] + ks[:r]


def timed_best_of_n(
    ask: Callable[[str, int], None], questions: list[str], ks: list[int], requests: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, list[float]]:  # fmt: skip
    """Milliseconds of each timed request, per k. Per question, one unmeasured request at the largest k
    comes first: it pays what a new question costs the first time (embedding and classifier caches,
    retrieval, vLLM's prefix cache), which would otherwise land on whichever k is asked first. Then one
    timed request per k, in :func:`request_order`."""
    samples: dict[int, list[float]] = {k: [] for k in ks}
    for i in range(requests):
        question = questions[i % len(questions)]
        ask(question, max(ks))  # the question's warm-up, not measured
        for k in request_order(ks, i):  # interleaved, so load from elsewhere hits every k alike
            t0 = clock()
            ask(question, k)
            samples[k].append((clock() - t0) * 1000)
    return samples


def best_of_n_latency(
    settings: Settings, work: Path, ks: list[int], requests: int, console: Console
) -> dict[int, dict[str, float]]:
    """Sequential chat requests with best_of_n=k through a real gateway; p50/p99 end-to-end latency."""
    questions = [json.loads(line)["question"] for line in QA_PATH.read_text().splitlines() if line.strip()]
    with contextlib.ExitStack() as stack:
        model_dir = pick_seed_model(settings, console)
        backend = start_vllm(stack, work / "vllm", model_dir, settings)
        classifier = {"FLYWHEEL_SAFETY_CLASSIFIER_PATH": str(settings.safety_classifier_dir.resolve()),
                      "FLYWHEEL_SAFETY_CLASSIFIER_REQUIRED": "true"}  # trained by stage_costs  # fmt: skip
        gateway = start_flywheel(stack, work / "gateway", backend, stages=True, extra_env=classifier)
        headers = {"Authorization": f"Bearer {gateway.api_key}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as http:
            for i in range(3):  # warm up every path once
                for k in ks:
                    _ask(http, questions[i], k)
            samples = timed_best_of_n(lambda question, k: _ask(http, question, k), questions, ks, requests)
        return {k: {"p50": statistics.median(v), "p99": _pct(v, 0.99), "n": len(v)} for k, v in samples.items()}


def order_text(ks: list[int]) -> str:
    """How the best-of-n requests were ordered, for the section: the ratio depends on it."""
    first, second = (", ".join(map(str, request_order(ks, i))) for i in (0, 1))
    return (f"Best-of-n order: each question is first asked once at n={max(ks)}, unmeasured (it pays the "
            "question's cold caches: embeddings, safety classifier, retrieval, vLLM's prefix cache); then once "
            f"per n, timed, the order rotated by one place per question ({first}, then {second}, …), so every n "
            "is first equally often, give or take one.")


def _ask(http: httpx.Client, question: str, k: int) -> None:
    resp = http.post("/v1/chat/completions", json={
        "model": "flywheel", "messages": [{"role": "user", "content": question}], "max_tokens": 32,
        "temperature": 0.8, "best_of_n": k})  # fmt: skip
    resp.raise_for_status()
    if k > 1 and resp.json()["flywheel"].get("candidates") != k:
        raise RuntimeError(f"best_of_n={k} did not score {k} candidates: {resp.text[:300]}")


def run(
    ks: str = typer.Option("1,2,4,8", help="comma-separated best-of-n values"),
    requests: int = typer.Option(30, min=1, help="requests per best-of-n value"),
    rounds: int = typer.Option(2, min=1, help="passes over the QA questions for the stage costs"),
    chunks: int = typer.Option(10_000, min=1, help="index size for the retrieval latency"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `pipeline` section is rewritten"),
    write: bool = typer.Option(True, "--write/--no-write"),
) -> None:
    """Best-of-n latency (n=1,2,4,8), safety + grounding cost per request, retrieval over 10k chunks."""
    from flywheel.bench.retrieval import run_retrieval_bench

    levels = int_list(ks, "--ks")  # bad input first: one line, before anything starts
    settings = Settings()
    if max(levels) > settings.max_best_of_n:
        raise typer.BadParameter(f"{max(levels)} is above the gateway's max_best_of_n ({settings.max_best_of_n}, "
                                 "FLYWHEEL_MAX_BEST_OF_N)", param_hint="--ks")  # fmt: skip
    console = Console()
    work = settings.var_dir / "bench" / "pipeline"
    encoder = Encoder.from_settings(settings)  # one encoder, as in a gateway process
    costs = stage_costs(settings, encoder, rounds)
    retrieval = run_retrieval_bench(n_chunks=chunks, encoder=encoder)
    bon = best_of_n_latency(settings, work, levels, requests, console)

    table = Table(title="pipeline bench")
    table.add_column("measure")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    for name, v in costs.items():
        table.add_row(f"stage: {name}", f"{v['p50']:.2f}", f"{v['p99']:.2f}")
    for k, v in bon.items():
        table.add_row(f"best-of-{k} end to end", f"{v['p50']:.1f}", f"{v['p99']:.1f}")
    console.print(table)
    ratio = bon[4]["p50"] / bon[1]["p50"] if 4 in bon and 1 in bon else None
    console.print(f"retrieval over {retrieval.get('n_chunks')} chunks: {json.dumps(retrieval)[:400]}")
    if ratio is not None:
        console.print(f"best-of-4 / best-of-1 p50: {ratio:.2f}× (target ≤ 1.5×)")
    console.print(f"safety + grounding p50: {costs['total']['p50']:.2f} ms (target ≤ 10 ms)")
    if write:
        write_section(out, "pipeline", _markdown(costs, bon, retrieval, ratio))
        console.print(f"wrote the pipeline section of {out}")


def _markdown(costs: dict, bon: dict, retrieval: dict, ratio: float | None) -> str:
    from flywheel.bench.report import machine_line

    lines = ["## Request pipeline (`flywheel bench pipeline`)", "", machine_line(), "",
             "| measure | p50 ms | p99 ms | samples |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for name, v in costs.items():
        lines.append(f"| stage: {name} | {v['p50']:.2f} | {v['p99']:.2f} | {v['n']} |")
    for k, v in bon.items():
        lines.append(f"| best-of-{k}, end to end | {v['p50']:.1f} | {v['p99']:.1f} | {v['n']} |")
    lines += ["", f"Retrieval over {retrieval.get('n_chunks')} chunks: `{json.dumps(retrieval)}`", ""]
    lines += [order_text(list(bon)), ""]
    if ratio is not None:
        lines.append(f"- best-of-4 ÷ best-of-1 (p50): **{ratio:.2f}×** (target ≤ 1.5×)")
    lines.append(f"- safety + grounding per request (p50): **{costs['total']['p50']:.2f} ms** (target ≤ 10 ms)")
    return "\n".join(lines)
