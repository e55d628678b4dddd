"""`run --export`: per-collection files streamed batch by batch, the run's MANIFEST.txt, and the
verified zip of `--create-zip`. Files are written under hidden temporary names and renamed when
complete, so a crash never leaves a half file that looks finished.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embed_collections.archive import upload as reading
from embed_collections.archive import upload_script
from embed_collections.archive.upload import MANIFEST_FILE, STATS_SUFFIX, ManifestEntry, human_size
from embed_collections.archive.upload_script import fill_config
from embed_collections.atomic import write_json_atomic, write_text_atomic
from embed_collections.engine import SPARSE_VECTOR_NAME
from embed_collections.errors import ArchiveError
from embed_collections.record.files import SUMMARY_FILE
from embed_collections.record.summary import CollectionResult, RunSummary
from embed_collections.stores.base import PointBatch, VectorLayout

if TYPE_CHECKING:
    from embed_collections.corpus.chunks import Chunk
    from embed_collections.record.config import RunConfig
    from embed_collections.record.run_record import RunRecord

log = logging.getLogger(__name__)

ZIP_MODES = {"deflated": zipfile.ZIP_DEFLATED, "stored": zipfile.ZIP_STORED}
DISK_MARGIN = 64 * 1024 * 1024
STREAMED = ("_embeddings.npy", "_sparse.jsonl", "_metadata.json", "_texts.json")


def export_files(collection: str, layout: VectorLayout) -> dict[str, Any]:
    """The file names of a collection's export (relative to its folder), by role."""
    return {
        "embeddings": {
            name: f"{collection}_{name + '_' if name else ''}embeddings.npy"
            for name in layout.dense
        },
        "metadata": f"{collection}_metadata.json",
        "texts": f"{collection}_texts.json",
        "sparse": f"{collection}_sparse.jsonl" if layout.sparse else None,
        "stats": f"{collection}{STATS_SUFFIX}",
        "upload_script": f"{collection}_upload_script.py",
    }


def listed_files(files: dict[str, Any]) -> list[str]:
    """Every file name of `export_files`, flattened; the streamed ones first."""
    names = list(files["embeddings"].values())
    names += [files[k] for k in ("metadata", "texts", "sparse", "stats", "upload_script")]
    return [name for name in names if name]


class CollectionExporter:
    """Streams one collection's export: `add` per upload batch, `finish` once at the end.

    Vectors go to raw temporary files as they arrive and get their .npy header at `finish`, so
    memory stays flat however large the collection is.
    """

    def __init__(
        self, output_dir: Path, collection: str, record: RunRecord, layout: VectorLayout
    ) -> None:
        self.collection, self.record, self.layout = collection, record, layout
        self.directory = Path(output_dir) / collection
        self.started = time.perf_counter()
        self.count = self.sparse_rows = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self.abort()  # temporary files of an export that crashed
        self.files = export_files(collection, layout)
        self.norms = {name: [np.inf, 0.0, -np.inf] for name in layout.dense}  # min, sum, max
        streamed = listed_files(self.files)[:-2]  # stats and script are written at finish
        self._handles = {name: self._temp(name).open("wb") for name in streamed}
        self._handles[self.files["metadata"]].write(b"[")
        self._handles[self.files["texts"]].write(b"[")

    def __enter__(self) -> CollectionExporter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()

    def _temp(self, name: str) -> Path:
        return self.directory / f".{name}.tmp"

    def add(self, chunks: list[Chunk] | tuple[Chunk, ...], batch: PointBatch) -> None:
        """Append one batch of points (aligned with their chunks) to every export file."""
        if len(chunks) != len(batch):
            raise ArchiveError(f"{self.collection}: {len(batch)} points for {len(chunks)} chunks")
        for name, file in self.files["embeddings"].items():
            rows = np.ascontiguousarray(batch.dense[name], dtype="<f4")
            if rows.shape != (len(batch), self.layout.dense[name]):
                raise ArchiveError(
                    f"{self.collection}: vectors {name!r} have shape {rows.shape}, "
                    f"expected ({len(batch)}, {self.layout.dense[name]})"
                )
            self._handles[file].write(rows.tobytes())
            if len(rows):
                norms = np.linalg.norm(rows.astype(np.float64), axis=1)
                low, total, high = self.norms[name]
                self.norms[name] = [
                    min(low, norms.min()),
                    total + norms.sum(),
                    max(high, norms.max()),
                ]
        metadata, texts = self._handles[self.files["metadata"]], self._handles[self.files["texts"]]
        for i, (chunk, point) in enumerate(zip(chunks, batch.ids)):
            sep = b",\n  " if self.count + i else b"\n  "
            meta: dict[str, Any] = {"point_id": point, "chunk_id": chunk.chunk_id}
            meta["doc_id"] = chunk.doc_id
            meta |= {"source_file": chunk.source_file, "metadata": chunk.metadata}
            metadata.write(sep + _json(meta))
            texts.write(sep + _json(chunk.text))
        sparse = batch.sparse.get(SPARSE_VECTOR_NAME)
        if self.files["sparse"] and sparse is not None:
            for point, (indices, values) in zip(batch.ids, sparse):
                row = {"point_id": point, "indices": np.asarray(indices, int).tolist()}
                row["values"] = np.asarray(values, float).tolist()
                self._handles[self.files["sparse"]].write(_json(row) + b"\n")
            self.sparse_rows += len(sparse)
        self.count += len(batch)

    def finish(self, result: CollectionResult) -> Path:
        """Complete every file, write stats and the upload script, rename; returns the folder."""
        self._handles[self.files["metadata"]].write(b"\n]\n")
        self._handles[self.files["texts"]].write(b"\n]\n")
        for handle in self._handles.values():
            handle.close()
        if self.files["sparse"] and self.sparse_rows != self.count:
            self.abort()
            raise ArchiveError(
                f"{self.collection}: {self.sparse_rows} sparse vectors for {self.count} points"
            )
        for name, file in self.files["embeddings"].items():
            self._add_npy_header(file, self.layout.dense[name])
        write_json_atomic(self._temp(self.files["stats"]), self.stats(result))
        script = render_upload_script(self.collection, self.layout, self.files)
        self._temp(self.files["upload_script"]).write_text(script, encoding="utf-8")
        wanted = listed_files(self.files)
        for name in wanted:
            os.replace(self._temp(name), self.directory / name)
        # Files of an earlier export with another layout (other vector names, no sparse).
        for old in self.directory.glob(f"{glob.escape(self.collection)}_*"):
            if old.name not in wanted and old.name.endswith(STREAMED) and old.is_file():
                old.unlink()
        log.info("Exported %d points of %s to %s", self.count, self.collection, self.directory)
        return self.directory

    def abort(self) -> None:
        """Close and delete the temporary files (the collection failed)."""
        for handle in getattr(self, "_handles", {}).values():
            handle.close()
        for stale in self.directory.glob(f".{glob.escape(self.collection)}_*.tmp"):
            stale.unlink(missing_ok=True)

    def _add_npy_header(self, file: str, dim: int) -> None:
        """Turn the raw rows into a .npy file (header, then the rows copied after it)."""
        raw, target = self._temp(file), self.directory / f".{file}.npy.tmp"
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.count, dim)}
        with target.open("wb") as out, raw.open("rb") as rows:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(rows, out, 1 << 20)
        os.replace(target, raw)

    def stats(self, result: CollectionResult) -> dict[str, Any]:
        """The `<collection>_stats.json` content."""
        record, layout, count = self.record, self.layout, self.count
        models = [asdict(model) for model in record.models]
        counts = {"points": count, "sparse_vectors": self.sparse_rows, "chunk_files": result.files}
        for key in ("unique_texts", "records", "skipped_records", "duplicate_ids"):
            counts[key] = getattr(result, key)
        timings = result_timings(result)
        timings["store_and_export_seconds"] = round(time.perf_counter() - self.started, 3)
        return {
            "format": reading.EXPORT_FORMAT,
            "collection": self.collection,
            "created": datetime.now().isoformat(),
            "counts": counts,
            "dimension": layout.dense[""] if set(layout.dense) == {""} else dict(layout.dense),
            "combine": record.combine,
            "models": models,
            "weights": record.weights,
            "prefixes": {
                m["name"]: {"document": m["document_prefix"], "query": m["query_prefix"]}
                for m in models
            },
            "vector_norms": {
                name: {"min": low, "mean": total / count, "max": high} if count else None
                for name, (low, total, high) in self.norms.items()
            },
            "timings": timings,
            "layout": layout.to_json(),
            "sparse": asdict(record.sparse) if record.sparse else None,
            "files": self.files,
        }


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")


def result_timings(result: CollectionResult) -> dict[str, Any]:
    """A collection's timings; `processing_time` is final only after the pipeline's finish."""
    return {"processing_time": result.processing_time, "embedded_now": dict(result.embedded_now)}


def render_upload_script(collection: str, layout: VectorLayout, files: dict[str, Any]) -> str:
    """The standalone upload script of a collection: its constants filled into the template."""
    config: dict[str, Any] = {"collection": collection, "dense": dict(layout.dense)}
    config |= {"sparse": list(layout.sparse), "sparse_idf": layout.sparse_idf}
    config |= {"embeddings": files["embeddings"], "metadata": files["metadata"]}
    config |= {"texts": files["texts"], "sparse_file": files["sparse"]}
    return fill_config(Path(upload_script.__file__).read_text(encoding="utf-8"), config)


def finish_export(config: RunConfig, summary: RunSummary) -> Path | None:
    """Write MANIFEST.txt over the summary and the exported collections, and the zip if asked."""
    output_dir, stamp = Path(config.output_dir), datetime.now()
    archive = output_dir / f"embeddings_{stamp:%Y-%m-%d_%H-%M-%S}.zip"
    summary.extra.export = {
        "manifest": MANIFEST_FILE,
        "archive": archive.name if config.create_zip else None,
    }
    write_json_atomic(output_dir / SUMMARY_FILE, summary.to_json())
    paths = [SUMMARY_FILE]
    for name, result in summary.results.items():
        if not result.export_dir:
            continue
        folder = Path(result.export_dir)
        stats = json.loads((folder / f"{name}{STATS_SUFFIX}").read_text(encoding="utf-8"))
        # processing_time is measured after the exporter finished; record the final one.
        stats["timings"] |= result_timings(result)
        write_json_atomic(folder / f"{name}{STATS_SUFFIX}", stats)
        relative = folder.relative_to(output_dir).as_posix()
        paths += [f"{relative}/{file}" for file in listed_files(stats["files"])]
    entries = [file_entry(output_dir, path) for path in paths]
    compression = config.zip_compression if config.create_zip else "none"
    manifest = reading.render_manifest(entries, stamp.isoformat(), compression)
    write_text_atomic(output_dir / MANIFEST_FILE, manifest)
    log.info("Manifest of %d files written to %s", len(entries), output_dir / MANIFEST_FILE)
    if not config.create_zip:
        return None
    created = create_archive(archive, entries, compression)
    for old in output_dir.glob("embeddings_*.zip"):  # one archive per export: the newest
        if old != created:
            old.unlink(missing_ok=True)
    return created


def file_entry(output_dir: Path, path: str) -> ManifestEntry:
    """The manifest line of one exported file, hashed from disk."""
    with (output_dir / path).open("rb") as handle:
        size, sha256 = reading.hash_stream(handle)
    return ManifestEntry(path, size, sha256)


def create_archive(target: Path, entries: list[ManifestEntry], compression: str) -> Path:
    """Zip MANIFEST.txt, then every file it lists; verify, or delete the archive and raise."""
    output_dir, manifest = target.parent, target.parent / MANIFEST_FILE
    total = manifest.stat().st_size + sum(e.size for e in entries)
    free, needed = shutil.disk_usage(output_dir).free, total + max(DISK_MARGIN, total // 20)
    if free < needed:
        raise ArchiveError(
            f"Not enough free disk in {output_dir} for the archive: {human_size(needed)} needed, "
            f"{human_size(free)} free (free space, or use --export without --create-zip)"
        )
    temp = output_dir / f".{target.name}.tmp"
    try:
        with zipfile.ZipFile(temp, "w", ZIP_MODES[compression], strict_timestamps=False) as archive:
            archive.write(manifest, MANIFEST_FILE)
            for entry in entries:
                archive.write(output_dir / entry.path, entry.path)
        reading.verify_archive(temp, manifest.read_bytes(), [e.path for e in entries])
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ArchiveError(f"Writing the archive {target} failed: {error}") from error
        raise
    os.replace(temp, target)
    packed = target.stat().st_size
    ratio, saved = 100.0 * packed / max(total, 1), human_size(max(0, total - packed))
    log.info(
        "Archive %s: %d files, %s packed from %s (compression ratio %.1f%%, %s saved)",
        *(target, len(entries) + 1, human_size(packed), human_size(total), ratio, saved),
    )
    return target
