"""Turn Markdown and text files into documents and overlapping chunks.

Chunks are what retrieval ranks and what the policy reads, so each one carries its document's title
and the heading path of its section: a passage cut out of "Error codes > Connection errors" still says
what it is about, for BM25, for the encoder and for the citation shown to the user.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DOC_SUFFIXES = frozenset({".md", ".markdown", ".txt"})
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_SLUG = re.compile(r"[^a-z0-9]+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_WORD_WITH_SPACE = re.compile(r"\S+\s*")


class DocumentError(ValueError):
    """A file cannot be ingested (unsupported type, unreadable, empty)."""


@dataclass(frozen=True)
class Document:
    """One source file. ``doc_id`` is stable for a path, ``sha256`` changes with the content."""

    doc_id: str
    title: str
    path: str
    text: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A retrievable passage: ``chunk_id`` is ``<doc_id>#<ordinal>``."""

    chunk_id: str
    doc_id: str
    ordinal: int
    title: str
    section: str  # heading path inside the document, " > "-joined; "" before the first heading
    text: str
    path: str = ""

    @property
    def index_text(self) -> str:
        """What BM25 and the encoder see: title and section give a short passage its topic."""
        if not self.section:
            head = self.title
        elif self.section.startswith(self.title):
            head = self.section
        else:
            head = f"{self.title} > {self.section}"
        return f"{head}\n{self.text}"


def slugify(value: str) -> str:
    return _SLUG.sub("-", value.lower()).strip("-") or "doc"


def doc_id_for(path: Path, root: Path | None = None) -> str:
    """A doc id from the path relative to the ingest root (``kb/restore.md`` → ``restore``).

    Stable across runs and machines, so re-adding an edited file replaces it instead of duplicating it.
    """
    rel = path.resolve().relative_to(root.resolve()) if root else Path(path.name)
    return "/".join(slugify(part) for part in rel.with_suffix("").parts)


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    """Parse a minimal ``key: value`` front-matter block (no YAML dependency for a handful of keys)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            meta[key.strip().lower()] = value.strip().strip("\"'")
    return meta, text[match.end():]


def load_document(path: Path, root: Path | None = None) -> Document:
    """Read one file; the title is front-matter ``title``, else the first heading, else the file name."""
    if path.suffix.lower() not in DOC_SUFFIXES:
        raise DocumentError(f"{path}: unsupported file type (want one of {sorted(DOC_SUFFIXES)})")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{path}: cannot read ({exc})") from exc
    meta, body = _front_matter(raw.replace("\r\n", "\n"))
    if not body.strip():
        raise DocumentError(f"{path}: empty document")
    title = meta.pop("title", "")
    if not title and path.suffix.lower() != ".txt":
        for line in body.splitlines():
            heading = _HEADING.match(line)
            if heading:
                title = heading.group(2)
                break
    title = title or path.stem.replace("_", " ").replace("-", " ").strip().capitalize()
    doc_id = meta.pop("id", "") or doc_id_for(path, root)
    return Document(
        doc_id=doc_id,
        title=title,
        path=str(path.resolve()),
        text=body,
        sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
        metadata=meta,
    )


def iter_document_files(paths: Iterable[Path]) -> Iterator[tuple[Path, Path | None]]:
    """Expand files and directories (recursively) into ``(file, ingest_root)`` pairs, sorted, deduplicated.

    A directory is the root of the files under it; a file given directly is its own root's child.
    """
    seen: set[Path] = set()
    for given in paths:
        if given.is_dir():
            found = [(p, given) for p in sorted(given.rglob("*")) if p.is_file() and p.suffix.lower() in DOC_SUFFIXES]
        elif given.is_file():
            found = [(given, None)]
        else:
            raise DocumentError(f"{given}: no such file or directory")
        for file, root in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                yield file, root


def _sections(body: str, markdown: bool) -> list[tuple[str, str]]:
    """Split a body into ``(heading path, text)`` blocks; plain text is one block."""
    if not markdown:
        return [("", body)]
    stack: list[tuple[int, str]] = []
    blocks: list[tuple[str, list[str]]] = [("", [])]
    in_fence = False
    for line in body.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            stack = [(lvl, name) for lvl, name in stack if lvl < level] + [(level, heading.group(2))]
            blocks.append((" > ".join(name for _, name in stack), []))
        else:
            blocks[-1][1].append(line)
    return [(path, "\n".join(lines)) for path, lines in blocks if "\n".join(lines).strip()]


def _windows(words: list[str], size: int, overlap: int) -> Iterator[list[str]]:
    """Word windows of ``size`` that share ``overlap`` words, so a fact cut at a boundary is whole in one."""
    step = size - overlap
    start = 0
    while True:
        yield words[start:start + size]
        if start + size >= len(words):
            return
        start += step


def chunk_document(doc: Document, max_words: int = 120, overlap: int = 30) -> list[Chunk]:
    """Chunk each section separately (a chunk never straddles two headings) into overlapping word windows.

    Words are whitespace tokens, kept with the whitespace after them so line breaks (lists, table rows)
    survive in the passage the policy reads; table rule lines (``| --- |``) carry nothing and are dropped.
    Words are close enough to encoder tokens for sizing (MiniLM reads 256 word pieces,
    about 180 words) and independent of any tokenizer, so chunk ids do not move when the encoder changes.
    """
    if max_words < 1 or not 0 <= overlap < max_words:
        raise ValueError("need max_words >= 1 and 0 <= overlap < max_words")
    markdown = Path(doc.path).suffix.lower() != ".txt"
    chunks: list[Chunk] = []
    for section, text in _sections(doc.text, markdown):
        kept = "\n".join(line for line in text.splitlines() if not _TABLE_RULE.match(line))
        words = _WORD_WITH_SPACE.findall(kept.strip())
        for window in _windows(words, max_words, overlap):
            ordinal = len(chunks)
            chunks.append(
                Chunk(
                    chunk_id=f"{doc.doc_id}#{ordinal}",
                    doc_id=doc.doc_id,
                    ordinal=ordinal,
                    title=doc.title,
                    section=section,
                    text="".join(window).strip(),
                    path=doc.path,
                )
            )
    return chunks
