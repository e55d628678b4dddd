"""A document's sections: where each heading starts one, its level and its path of headings.

Markdown headings are ATX lines (`## Title`) outside fenced code; reStructuredText headings are
a title line with an adornment line under it (and optionally over it), the levels in the order
the adornments first appear, as docutils ranks them. A line scan rather than a full parser:
splitting inside a section is semantic-text-splitter's (pulldown-cmark), and a markdown-it-py
parse of the whole page cost more than all the rest of chunking (docs/chunking.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}[ \t]*$")
_MDX_IMPORT = re.compile(r"^(import|export)\s")


@dataclass(frozen=True)
class Section:
    """Characters [start, end) of a document under one heading (level 0: before any heading)."""

    start: int
    end: int
    level: int
    heading: str
    path: tuple[str, ...]


def find_sections(text: str, kind: str) -> list[Section]:
    """The document cut at its headings; text before the first heading is a level-0 section."""
    if kind == "markdown":
        heads = _markdown_headings(text)
    elif kind == "rst":
        heads = _rst_headings(text)
    else:
        heads = []
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    starts = heads if heads and heads[0][0] == 0 else [(0, 0, ""), *heads]
    for index, (start, level, heading) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
        if level:
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
        section = Section(start, end, level, heading, tuple(h for _, h in path))
        if text[start:end].strip():
            sections.append(section)
    return sections


def _lines(text: str) -> list[tuple[int, str]]:
    """Every line with the offset it starts at."""
    offsets, position = [], 0
    for line in text.split("\n"):
        offsets.append((position, line))
        position += len(line) + 1
    return offsets


def _markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of every ATX heading outside fenced code."""
    heads = []
    fence = ""
    for offset, line in _lines(text):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            continue
        if opened:
            fence = opened.group(1)
            continue
        if not line.lstrip().startswith("#"):
            continue
        match = _ATX.match(line)
        if match:
            level = len(match.group(1) or match.group(3))
            title = _clean_title(match.group(2) or "")
            heads.append((offset, level, title))
    return heads


def _clean_title(title: str) -> str:
    """A heading's words without Markdown emphasis, code ticks or a trailing anchor `{#id}`."""
    title = re.sub(r"\s*\{#[^}]*\}\s*$", "", title)
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link keeps its words
    return re.sub(r"[*_`]", "", title).strip()


def _rst_headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of every reStructuredText section title."""
    lines = _lines(text)
    styles: list[tuple[str, bool]] = []  # (adornment character, has an overline), by rank
    heads = []
    index = 0
    while index + 1 < len(lines):
        offset, line = lines[index]
        under = lines[index + 1][1]
        over = lines[index - 1][1] if index else ""
        title = line.strip()
        if (
            title
            and not _RST_ADORNMENT.match(line)
            and _RST_ADORNMENT.match(under)
            and len(under.rstrip()) >= len(title)
        ):
            overlined = bool(_RST_ADORNMENT.match(over)) and over.strip()[0] == under.strip()[0]
            style = (under.strip()[0], overlined)
            if style not in styles:
                styles.append(style)
            start = lines[index - 1][0] if overlined else offset
            heads.append((start, styles.index(style) + 1, title))
            index += 2
            continue
        index += 1
    return heads


def strip_mdx(text: str) -> str:
    """An MDX page with its `import`/`export` lines blanked (same length, so offsets hold)."""
    lines = text.split("\n")
    return "\n".join(" " * len(line) if _MDX_IMPORT.match(line) else line for line in lines)
