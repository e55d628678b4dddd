"""A small chunk tree shaped like the real corpus: documents whose chunks carry document_id,
chunk_index (with a gap), section_path, start_char/end_char and overlapping text, and one
document with no metadata at all (read in record order)."""

from __future__ import annotations

import json
from pathlib import Path

OVERLAP = 12  # characters a chunk repeats from the end of the one before it
GUIDE = [  # (section path, text, whether it starts with the last OVERLAP characters before it)
    (["Install"], "## Install\n\nInstall the package with pip install garden-tools today.", False),
    (["Install", "Requirements"], "Python 3.10 or newer is required for garden-tools.", False),
    (["Pruning"], "## Pruning\n\nPrune roses in late winter above an outward bud.", False),
    (["Pruning"], " Use sharp secateurs and remove dead wood first of all.", True),
    (["Pruning"], " Example: cut 5 mm above the bud at an angle.", True),
    (["Watering"], "## Watering\n\nWater young trees deeply once a week in summer.", False),
    (["Watering"], "Caveat: never water roses on their leaves in the evening sun.", False),
]


def guide_records() -> list[dict]:
    """The guide's records with offsets into the document text they were cut from."""
    records: list[dict] = []
    end = -2
    for index, (section, text, overlaps) in enumerate(GUIDE):
        start = end + 2  # two newlines between chunks, as a chunker strips
        if overlaps:
            text = records[-1]["text"][-OVERLAP:] + text
            start = end - OVERLAP
        chunk_index = index + (1 if index >= 5 else 0)  # a gap: chunk 5 was dropped upstream
        records.append(
            {
                "text": text,
                "metadata": {
                    "chunk_id": f"guide-{chunk_index:04d}",
                    "document_id": "doc-guide",
                    "chunk_index": chunk_index,
                    "section_path": section,
                    "heading_text": section[-1],
                    "start_char": start,
                    "end_char": start + len(text),
                    "lang": "en",
                },
            }
        )
        end = start + len(text)
    return records


def guide_text(first: int, last: int) -> str:
    """The guide's records first..last (by record index) as one text, overlaps said once."""
    parts = []
    for index in range(first, last + 1):
        _, text, overlaps = GUIDE[index]
        parts.append(text if overlaps and parts else ("\n\n" if parts else "") + text)
    return "".join(parts)


NOTES = [
    "Bake the bread at 220 degrees for thirty minutes until golden.",
    "Knead the dough for ten minutes, then let it rise for an hour.",
    "Sourdough needs time and warmth to rise.",
    "Bake the bread at 220 degrees for thirty minutes until golden.",
]


def write_context_corpus(chunked: Path) -> Path:
    """Garden/guide_chunks.json (rich metadata) and Kitchen/notes_chunks.json (bare texts)."""
    guide = chunked / "Garden" / "guide_chunks.json"
    guide.parent.mkdir(parents=True, exist_ok=True)
    guide.write_text(json.dumps(guide_records()), encoding="utf-8")
    notes = chunked / "Kitchen" / "notes_chunks.json"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text(json.dumps(NOTES), encoding="utf-8")
    return chunked
