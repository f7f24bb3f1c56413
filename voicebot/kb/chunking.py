"""Markdown and plain text cut into records a phone call can speak, along headings and paragraphs.

A Markdown section's paragraphs are joined up to MAX_CHUNK_CHARS (about 20 seconds of speech), and a
longer paragraph is split between sentences; each record's question is the heading path above it (or
its first sentence), and its line is where it starts. Code blocks are left out, list items and table
rows become sentences of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from voicebot.kb.models import Record

# About 20 seconds of speech: longer sections are split so one hit is one spoken answer.
MAX_CHUNK_CHARS = 320


# Markdown and text chunking. A block is one paragraph with the heading path above it.

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}")
_SPOKEN_STOPS = (".", "!", "?", ":", ";")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # link -> its words
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<!\w)[*_](.+?)[*_](?!\w)"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
]


@dataclass
class _Block:
    headings: tuple[str, ...]
    line: int
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.parts)


def chunk_text(text: str, *, markdown: bool) -> list[Record]:
    """Split a document into phone-answer sized records, one section's paragraphs at a time."""
    records: list[Record] = []
    for headings, blocks in _sections(_blocks(text, markdown=markdown)):
        path = " > ".join(headings)
        # Paragraphs under one heading share a topic and may be joined; without one, each stands alone.
        groups = [blocks] if headings else [[block] for block in blocks]
        for group in groups:
            records.extend(_chunk_record(path, line, chunk) for line, chunk in _pack(group))
    return records


def _chunk_record(path: str, line: int, chunk: str) -> Record:
    question = path or _first_sentence(chunk)
    return Record(question, chunk, line, {"section": path} if path else {})


def _blocks(text: str, *, markdown: bool) -> Iterator[_Block]:
    headings: list[tuple[int, str]] = []
    block: _Block | None = None
    in_fence = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if markdown and _FENCE.match(raw):
            # Code is not something to read out on the phone.
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(raw) if markdown else None
        ends_block = not raw.strip() or heading or (markdown and _RULE.match(raw))
        if ends_block:
            if block and block.parts:
                yield block
            block = None
            if heading:
                level = len(heading.group(1))
                headings = [(lvl, title) for lvl, title in headings if lvl < level]
                headings.append((level, _clean_inline(heading.group(2))))
            continue
        content = _clean_line(raw) if markdown else raw.strip()
        if not content:
            continue
        if block is None:
            block = _Block(tuple(title for _, title in headings), number)
        starts_item = markdown and bool(_LIST_ITEM.match(raw) or raw.lstrip().startswith("|"))
        _append_part(block, content, starts_item=starts_item)
    if block and block.parts:
        yield block


def _append_part(block: _Block, content: str, *, starts_item: bool) -> None:
    # List items and table rows become sentences of their own, or the spoken answer runs them together.
    if starts_item and block.parts:
        block.parts[-1] = _join_sentences(block.parts[-1], content)
    else:
        block.parts.append(content)


def _clean_line(raw: str) -> str:
    line = raw.strip()
    if _TABLE_SEPARATOR.match(line) and set(line) <= set("|:- "):
        return ""
    line = re.sub(r"^(>\s?)+", "", line)
    line = _LIST_ITEM.sub("", line)
    if line.startswith("|"):
        line = ", ".join(cell.strip() for cell in line.strip("|").split("|") if cell.strip())
    return _clean_inline(line)


def _clean_inline(text: str) -> str:
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def _sections(blocks: Iterable[_Block]) -> Iterator[tuple[tuple[str, ...], list[_Block]]]:
    current: list[_Block] = []
    for block in blocks:
        if current and block.headings != current[0].headings:
            yield current[0].headings, current
            current = []
        current.append(block)
    if current:
        yield current[0].headings, current


def _pack(blocks: list[_Block]) -> Iterator[tuple[int, str]]:
    """Join whole paragraphs up to MAX_CHUNK_CHARS; split longer paragraphs between sentences."""
    line, chunk = 0, ""
    for block in blocks:
        for piece in _pieces(block.text):
            if chunk and len(chunk) + 1 + len(piece) > MAX_CHUNK_CHARS:
                yield line, chunk
                chunk = ""
            if not chunk:
                line = block.line
            chunk = _join_sentences(chunk, piece) if chunk else piece
    if chunk:
        yield line, chunk


def _join_sentences(first: str, second: str) -> str:
    return f"{first} {second}" if first.endswith(_SPOKEN_STOPS) else f"{first}. {second}"


def _pieces(paragraph: str) -> list[str]:
    if len(paragraph) <= MAX_CHUNK_CHARS:
        return [paragraph]
    return [sentence for sentence in _SENTENCE_END.split(paragraph) if sentence]


def _first_sentence(text: str, limit: int = 200) -> str:
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + "…"
