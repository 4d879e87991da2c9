"""The grounding stage of the request path: retrieve, condense to numbered sources, add to the prompt.

Retrieval returns ~120-word chunks. The seed policy learned to answer from a ``Sources:`` block of
short numbered sentences (``policies.seed.corpus.sources_block``), and a small model degrades on
prompts much longer than it was trained on, so each retrieved chunk is condensed to the sentences that
share the most content words with the question. That selection is a few lines of set arithmetic,
hand-written because no library call does "the sentences of this passage that overlap the query".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.grounding.retriever import Hit, Retriever
from safety.chain import message_text

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9][a-z0-9\-]*")
_STOP = frozenset(
    "a an and are as at be by can do does for from how i if in is it my of on or our so that the this to "
    "what when where which who why will with you your me we us".split()
)


@dataclass(frozen=True)
class Citation:
    index: int
    doc_id: str
    title: str
    chunk_id: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "doc_id": self.doc_id, "title": self.title, "chunk_id": self.chunk_id,
                "score": round(self.score, 6)}  # fmt: skip


@dataclass(frozen=True)
class Grounding:
    messages: list[dict[str, Any]]
    citations: list[Citation]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def condense(hit: Hit, query_words: set[str], max_sentences: int) -> str:
    """The hit's sentences that overlap the question most, in their original order."""
    sentences = [s.strip(" -*#|") for s in _SENTENCE.split(hit.text) if len(s.strip()) > 3]
    if not sentences:
        return hit.text.strip()
    ranked = sorted(range(len(sentences)), key=lambda i: -len(_words(sentences[i]) & query_words))
    keep = sorted(ranked[:max_sentences])
    return " ".join(sentences[i] for i in keep)


class GroundingStage:
    def __init__(self, retriever: Retriever, top_k: int, sentences_per_source: int = 1) -> None:
        self.retriever = retriever
        self.top_k = top_k
        self.sentences_per_source = sentences_per_source

    def ground(self, messages: list[dict[str, Any]]) -> Grounding:
        """Messages with a ``Sources:`` block added to the system message, and the citations behind it."""
        # The last user message's text, whether a string or a list of content parts (the SDKs send both).
        query = next((message_text(m) for m in reversed(messages) if m["role"] == "user" and m.get("content")), "")
        if not query.strip():
            return Grounding(messages, [])
        hits = self.retriever.search(query, k=self.top_k)
        if not hits:
            return Grounding(messages, [])
        query_words = _words(query)
        lines, citations = [], []
        for i, hit in enumerate(hits, start=1):
            lines.append(f"[{i}] {condense(hit, query_words, self.sentences_per_source)}")
            citations.append(Citation(i, hit.doc_id, hit.title, hit.chunk_id, hit.score))
        block = "Sources:\n" + "\n".join(lines)
        grounded = [dict(m) for m in messages]
        if grounded and grounded[0]["role"] == "system" and isinstance(grounded[0].get("content"), str):
            grounded[0]["content"] = f"{grounded[0]['content']}\n{block}"
        else:
            grounded.insert(0, {"role": "system", "content": block})
        return Grounding(grounded, citations)
