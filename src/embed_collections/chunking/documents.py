"""Read one source file as text to chunk: Markdown and MDX, reStructuredText, plain text and
source code as they are; HTML and Jupyter notebooks converted to Markdown here; PDF, DOCX and
other office formats through markitdown (the `documents` extra). A file that cannot be used
raises `DocumentError` with the reason, and is skipped."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from embed_collections.chunking.structure import strip_mdx
from embed_collections.errors import EmbedCollectionsError

MARKDOWN = {".md", ".markdown", ".mdx", ".mdown", ".mkd"}
RST = {".rst", ".rest"}
HTML = {".html", ".htm", ".xhtml"}
NOTEBOOK = {".ipynb"}
CONVERTED = {".pdf", ".docx", ".pptx", ".xlsx", ".epub"}  # through markitdown
CODE = {
    ".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".kt", ".scala", ".c",
    ".h", ".cc", ".cpp", ".hpp", ".cs", ".rb", ".php", ".swift", ".sh", ".bash", ".sql", ".r",
    ".jl", ".lua", ".toml", ".yaml", ".yml", ".json", ".css", ".scss", ".vue", ".svelte",
}  # fmt: skip
# A NUL byte in the first block is how git and grep tell a binary file.
BINARY_PROBE = 8192
MAX_FILE_BYTES = 64 * 1024 * 1024


class DocumentError(EmbedCollectionsError):
    """A source file cannot be chunked (unreadable, binary, undecodable, unsupported)."""


@dataclass(frozen=True)
class Document:
    """A source file as text, and how its structure is read: markdown, rst, text or code."""

    text: str
    kind: str
    language: str = ""  # a code file's language, from its extension


def document_kind(path: Path) -> str:
    """How a file is read, from its extension; anything unknown is tried as plain text."""
    suffix = path.suffix.lower()
    if suffix in MARKDOWN or suffix in HTML or suffix in NOTEBOOK or suffix in CONVERTED:
        return "markdown"
    if suffix in RST:
        return "rst"
    if suffix in CODE:
        return "code"
    return "text"


def read_document(path: Path) -> Document:
    """The file's text in the form it is chunked in; raises DocumentError saying why not."""
    suffix = path.suffix.lower()
    if suffix in CONVERTED:
        return Document(convert_with_markitdown(path), "markdown")
    raw = read_bytes(path)
    if b"\0" in raw[:BINARY_PROBE]:
        raise DocumentError("binary file (a NUL byte in its first 8 KB)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "convert it to UTF-8"
        ) from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if suffix in HTML:
        text = html_to_markdown(text)
    elif suffix in NOTEBOOK:
        text = notebook_to_markdown(text)
    elif suffix == ".mdx":
        text = strip_mdx(text)
    kind = document_kind(path)
    return Document(text, kind, suffix.lstrip(".") if kind == "code" else "")


def read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DocumentError(
                f"{size // (1024 * 1024)} MiB, over the {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                "limit for one document (split it)"
            )
        return path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read file: {exc.strerror or exc}") from exc


def notebook_to_markdown(text: str) -> str:
    """A notebook's Markdown cells as they are and its code cells as fenced blocks (outputs,
    which are often images or long logs, are left out)."""
    try:
        notebook = json.loads(text)
        cells = notebook["cells"]
        language = (notebook.get("metadata", {}).get("kernelspec") or {}).get("language", "")
        parts = []
        for cell in cells:
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            if not source.strip():
                continue
            if cell.get("cell_type") == "code":
                parts.append(f"```{language}\n{source.rstrip()}\n```")
            else:
                parts.append(source.strip())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DocumentError(f"not a Jupyter notebook ({type(exc).__name__}: {exc})") from exc
    return "\n\n".join(parts) + "\n"


def convert_with_markitdown(path: Path) -> str:
    """PDF, DOCX, PPTX, XLSX or EPUB as Markdown, offline, by markitdown."""
    try:
        converter = markitdown_converter()
    except ImportError as exc:
        raise DocumentError(
            f"{path.suffix} files need the documents extra: "
            "pip install 'embed-collections[documents]'"
        ) from exc
    try:
        result = converter.convert_local(str(path))
    except Exception as exc:  # a converter's failure, whatever its library raises, skips one file
        raise DocumentError(f"cannot convert ({type(exc).__name__}: {exc})") from exc
    text = (result.text_content or "").replace("\r\n", "\n")
    if not text.strip():
        raise DocumentError("no text found (a scanned PDF needs OCR first)")
    return text


@lru_cache(maxsize=1)
def markitdown_converter() -> Any:
    """One markitdown converter for the process (its import takes ~1.4 s, building it more)."""
    from markitdown import MarkItDown

    return MarkItDown(enable_plugins=False)


_BLOCKS = {"p", "div", "section", "article", "table", "tr", "br", "ul", "ol", "blockquote"}
_SKIPPED = {"script", "style", "head", "nav", "noscript", "template", "svg"}


class _MarkdownWriter(HTMLParser):
    """Headings as `#` lines, list items as `- `, `pre` as fenced code, other text as
    paragraphs: enough structure for chunking, with the text kept word for word."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "pre":
            self.pre += 1
            self.out.append("\n\n```\n")
        elif tag in ("td", "th"):
            self.out.append(" | ")
        elif tag in _BLOCKS:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.out.append("\n```\n\n")
        elif re.fullmatch(r"h[1-6]", tag) or tag in _BLOCKS:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_markdown(text: str) -> str:
    """An HTML page's readable text with its headings, lists and code blocks, as Markdown."""
    writer = _MarkdownWriter()
    writer.feed(text)
    writer.close()
    lines, fenced = [], False
    for line in "".join(writer.out).split("\n"):
        if line.strip() == "```":
            fenced = not fenced
        lines.append(line.rstrip() if fenced else line.strip())  # code keeps its indentation
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
