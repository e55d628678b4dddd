"""Reading exports back: the MANIFEST.txt format, verified access to an export directory or zip
archive, and loading its collections into a store (`embed-collections upload`).

A zip is read in place, nothing is extracted: every entry name is checked (no absolute paths, no
`..`, no symlinks) and every file the manifest lists is matched against its size and SHA-256
before anything is loaded. Only listed files are ever read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
import zipfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from embed_collections.corpus.chunks import Chunk
from embed_collections.errors import ArchiveError, ShardDamagedError, UsageError
from embed_collections.stores.base import PointBatch, StorageOptions, Store, VectorLayout

log = logging.getLogger(__name__)

MANIFEST_FILE = "MANIFEST.txt"
EXPORT_FORMAT = "embed-collections-export/1"
STATS_SUFFIX = "_stats.json"
UPLOAD_BATCH = 1024
RULE = "=" * 80
SHA256 = re.compile("[0-9a-f]{64}")
READ_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)
LINE_FORMAT = (
    '# Each line under FILES is "  <path>  <size> <unit>  <bytes>  <sha256>": the relative POSIX\n'
    "# path, its size for people, its exact size in bytes and the SHA-256 of its content.\n"
    "# Split a line from the right (the path may hold spaces)."
)


def human_size(size: int) -> str:
    """`12.34 MB`: the manifest's size column (always two tokens)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ManifestEntry:
    """One file of an export: relative POSIX path, size in bytes, SHA-256 hex of its content."""

    path: str
    size: int
    sha256: str


def render_manifest(entries: list[ManifestEntry], generated: str, compression: str) -> str:
    """The original MANIFEST.txt layout, with exact bytes and a SHA-256 on each file line."""
    width = max([60, *(len(e.path) for e in entries)])
    head = ["EMBEDDING ARCHIVE MANIFEST", RULE, f"Generated: {generated}"]
    head += [f"Compression: {compression}", LINE_FORMAT, RULE, "", "FILES:", ""]
    files = [
        f"  {e.path.ljust(width)}  {human_size(e.size):>12}  {e.size}  {e.sha256}" for e in entries
    ]
    total = human_size(sum(e.size for e in entries))
    tail = ["", RULE, "SUMMARY:", f"  Total files: {len(entries)}", f"  Total size: {total}", RULE]
    return "\n".join([*head, *files, *tail, ""])


def parse_manifest(text: str, source: str) -> list[ManifestEntry]:
    """The file lines of a MANIFEST.txt; ArchiveError naming `source` when it is malformed."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "EMBEDDING ARCHIVE MANIFEST" or "FILES:" not in lines:
        raise ArchiveError(f"{source}: {MANIFEST_FILE} is not an embedding archive manifest")
    entries: list[ManifestEntry] = []
    declared = None
    for line in lines[lines.index("FILES:") + 1 :]:
        if line.startswith("  Total files:"):
            declared = line.split(":", 1)[1].strip()
        if not line.strip() or line.startswith(("=", "#", "SUMMARY:", "  Total")):
            continue
        parts = line.strip().rsplit(None, 4)
        if len(parts) != 5 or not parts[3].isdigit() or not SHA256.fullmatch(parts[4]):
            raise ArchiveError(f"{source}: {MANIFEST_FILE} has a malformed line: {line.strip()!r}")
        entries.append(ManifestEntry(parts[0], int(parts[3]), parts[4]))
    if declared != str(len(entries)):
        raise ArchiveError(
            f"{source}: {MANIFEST_FILE} lists {len(entries)} files but its summary says "
            f"{declared} (the manifest is truncated or edited)"
        )
    return entries


def check_relative(name: str, source: str) -> None:
    """Refuse a path that could escape the export: absolute, drive, backslash or `..` parts."""
    parts = name.removesuffix("/").split("/")  # a trailing "/" marks a folder entry
    if name.startswith("/") or any(c in name for c in "\\:\x00") or {"", ".", ".."} & set(parts):
        raise ArchiveError(f"{source}: unsafe entry {name!r} (absolute or leaving the archive)")


def hash_stream(handle: IO[bytes]) -> tuple[int, str]:
    """(bytes read, SHA-256 hex) of a stream."""
    digest = hashlib.sha256()
    size = 0
    while block := handle.read(1 << 20):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


class ExportSource:
    """A verified export, a directory or a zip, readable only through its manifest's paths."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.entries: dict[str, ManifestEntry] = {}

    def __enter__(self) -> ExportSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raw_open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def _size(self, name: str) -> int:
        """A file's size without reading it (a zip entry's declared size bounds its reading)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the archive file."""

    def _verify(self, manifest_text: str) -> None:
        """Check every listed path, then every file's size and SHA-256 against the manifest."""
        for entry in parse_manifest(manifest_text, self.source):
            check_relative(entry.path, self.source)
            if entry.path in self.entries or entry.path == MANIFEST_FILE:
                raise ArchiveError(f"{self.source}: {entry.path} is listed twice in the manifest")
            self.entries[entry.path] = entry
        for entry in self.entries.values():
            try:
                size, sha256 = self._size(entry.path), ""
                if size == entry.size:
                    with self._raw_open(entry.path) as handle:
                        size, sha256 = hash_stream(handle)
            except READ_ERRORS as exc:
                raise ArchiveError(
                    f"{self.source}: {entry.path} cannot be read ({exc}); the export is "
                    "incomplete or damaged"
                ) from exc
            if size != entry.size:
                raise ArchiveError(
                    f"{self.source}: {entry.path} is {size} bytes but {MANIFEST_FILE} says "
                    f"{entry.size} (truncated or modified; export or download it again)"
                )
            if sha256 != entry.sha256:
                raise ArchiveError(
                    f"{self.source}: {entry.path} fails its checksum (sha256 {sha256[:12]}..., "
                    f"{MANIFEST_FILE} says {entry.sha256[:12]}...; the file was modified)"
                )

    def open(self, name: str) -> IO[bytes]:
        """A verified file, opened for reading; ArchiveError when the manifest does not list it."""
        if name not in self.entries:
            raise ArchiveError(f"{self.source}: {name} is needed but not listed in {MANIFEST_FILE}")
        return self._raw_open(name)

    def read_json(self, name: str) -> Any:
        with self.open(name) as handle:
            try:
                return json.loads(handle.read().decode("utf-8"))
            except ValueError as exc:
                raise ArchiveError(f"{self.source}: {name} is not valid JSON ({exc})") from exc

    def collections(self) -> list[str]:
        """The exported collections: folders holding `<name>/<name>_stats.json`."""
        split = (path.split("/") for path in self.entries)
        return sorted(p[0] for p in split if len(p) == 2 and p[1] == f"{p[0]}{STATS_SUFFIX}")


class DirectorySource(ExportSource):
    """An export directory (a run's --output-dir), refusing symlinks inside it."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.root = root
        if not (root / MANIFEST_FILE).is_file():
            raise ArchiveError(
                f"{root}: {MANIFEST_FILE} is missing (not an export; `embed-collections run "
                "--export` writes one)"
            )
        self._verify((root / MANIFEST_FILE).read_text(encoding="utf-8", errors="replace"))

    def _raw_open(self, name: str) -> IO[bytes]:
        path = self.root
        for part in name.split("/"):
            path = path / part
            if path.is_symlink():
                raise ArchiveError(f"{self.source}: {name} goes through a symlink (refused)")
        return path.open("rb")

    def _size(self, name: str) -> int:
        return (self.root / name).stat().st_size


class ZipSource(ExportSource):
    """A zip archive read in place: entry names checked, symlink and duplicate entries refused."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ArchiveError(
                f"{path}: not a readable zip archive ({exc}); it is truncated or damaged, "
                "download or create it again"
            ) from exc
        try:
            seen: set[str] = set()
            for info in self.zip.infolist():
                check_relative(info.filename, self.source)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ArchiveError(f"{path}: entry {info.filename!r} is a symlink (refused)")
                if info.filename in seen:
                    raise ArchiveError(f"{path}: entry {info.filename!r} appears twice")
                seen.add(info.filename)
            if MANIFEST_FILE not in seen:
                raise ArchiveError(f"{path}: {MANIFEST_FILE} is missing (not an export archive)")
            self._verify(self.zip.read(MANIFEST_FILE).decode("utf-8", errors="replace"))
        except BaseException:
            self.zip.close()
            raise

    def _raw_open(self, name: str) -> IO[bytes]:
        try:
            return self.zip.open(name)
        except KeyError as exc:
            raise ArchiveError(
                f"{self.source}: {name} is listed in {MANIFEST_FILE} but missing from the archive"
            ) from exc

    def _size(self, name: str) -> int:
        self._raw_open(name).close()  # ArchiveError naming the file when it is missing
        return self.zip.getinfo(name).file_size

    def close(self) -> None:
        self.zip.close()


def open_export(path: Path) -> ExportSource:
    """Open and verify an export directory or zip archive (ArchiveError when unusable)."""
    path = Path(path)
    if path.is_dir():
        return DirectorySource(path)
    if path.is_file():
        return ZipSource(path)
    raise ArchiveError(f"{path}: no such export directory or archive")


def verify_archive(path: Path, manifest: bytes, paths: list[str]) -> None:
    """A freshly written archive: testzip, MANIFEST.txt first and identical, the listed files in
    order, and every entry's SHA-256 re-read and compared with the manifest."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        names = archive.namelist()
        if bad is not None:
            raise ArchiveError(f"Archive verification failed: {bad} is corrupt in {path.name}")
        if names != [MANIFEST_FILE, *paths] or archive.read(MANIFEST_FILE) != manifest:
            raise ArchiveError(
                f"Archive verification failed: {path.name} holds {len(names)} entries, "
                f"expected {MANIFEST_FILE} and the {len(paths)} files it lists"
            )
    with ZipSource(path):
        pass


def vector_blocks(
    export: ExportSource, name: str, rows: int, dim: int, block: int = UPLOAD_BATCH
) -> Generator[np.ndarray, None, None]:
    """One .npy file of an export, shape-checked from its header and read `block` rows at a time
    (memory stays bounded however large the entry); a non-finite row is an ArchiveError."""
    with export.open(name) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, *READ_ERRORS) as exc:
            raise ArchiveError(f"{export.source}: {name} is not a NumPy .npy file ({exc})") from exc
        if dtype != np.dtype("<f4") or fortran or tuple(shape) != (rows, dim):
            raise ArchiveError(
                f"{export.source}: {name} holds {dtype} {tuple(shape)}, expected float32 "
                f"({rows}, {dim}) (export it again)"
            )
        for start in range(0, rows, block):
            count = min(block, rows - start)
            data = handle.read(count * dim * 4)
            if len(data) != count * dim * 4:
                raise ArchiveError(f"{export.source}: {name} is truncated (export it again)")
            array = np.frombuffer(data, dtype="<f4").reshape(count, dim)
            bad = ~np.isfinite(array).all(axis=1)
            if bad.any():
                raise ArchiveError(
                    f"{export.source}: {name} row {start + int(np.argmax(bad))} holds NaN or "
                    "infinity; nothing was loaded from it (export it again)"
                )
            yield array


def load_collection(
    export: ExportSource,
    folder: str,
    store: Store,
    recreate: bool,
    storage: StorageOptions | None = None,
) -> int:
    """Load one exported collection into the store in batches; returns the points sent.

    Vectors are streamed twice: once to check every row is finite before anything is written,
    once to upsert, so memory holds one batch of vectors at a time.
    """
    stats = export.read_json(f"{folder}/{folder}{STATS_SUFFIX}")
    where = f"{export.source}: {folder}"
    if not isinstance(stats, dict) or stats.get("format") != EXPORT_FORMAT:
        raise ArchiveError(f"{where}: stats file is not {EXPORT_FORMAT} (export it again)")
    collection, files = stats["collection"], stats["files"]
    layout = VectorLayout.from_json(stats["layout"])
    if storage is not None:
        layout = replace(layout, storage=storage)
    metadata = export.read_json(f"{folder}/{files['metadata']}")
    texts = export.read_json(f"{folder}/{files['texts']}")
    if not isinstance(metadata, list) or not isinstance(texts, list) or len(metadata) != len(texts):
        raise ArchiveError(f"{where}: metadata and texts are not aligned lists")
    ids = [m["point_id"] for m in metadata]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = ""
        for point in ids:
            if point in seen:
                repeated = point
                break
            seen.add(point)
        raise ArchiveError(
            f"{where}: {len(ids) - len(set(ids))} point ids occur twice (first {repeated}); "
            "one would overwrite the other (export the collection again)"
        )
    paths = {name: f"{folder}/{files['embeddings'][name]}" for name in layout.dense}
    for name, size in layout.dense.items():
        for _ in vector_blocks(export, paths[name], len(texts), size):
            pass
    sparse: list[tuple[list[int], list[float]]] = []
    if layout.sparse:
        with export.open(f"{folder}/{files['sparse']}") as handle:
            sparse = list(_sparse_rows(handle, metadata, where))
    try:
        store.ensure_collection(collection, layout, recreate=recreate)
    except ShardDamagedError as error:  # e.g. an upload stopped by a full disk mid-write
        log.warning("%s; replacing it with the export's points", error)
        store.ensure_collection(collection, layout, recreate=True)
    streams = {
        name: vector_blocks(export, paths[name], len(texts), size)
        for name, size in layout.dense.items()
    }
    for start in range(0, len(texts), UPLOAD_BATCH):
        stop = start + UPLOAD_BATCH
        batch = PointBatch(
            ids=[m["point_id"] for m in metadata[start:stop]],
            dense={name: next(stream) for name, stream in streams.items()},
            payloads=[_payload(t, m) for t, m in zip(texts[start:stop], metadata[start:stop])],
        )
        if layout.sparse:
            batch.sparse[layout.sparse[0]] = sparse[start:stop]
        store.upsert(collection, batch)
    for stream in streams.values():
        stream.close()
    store.finish(collection)
    total = store.count(collection)
    log.info('Loaded %d points into "%s" (%d in the store)', len(texts), collection, total)
    return len(texts)


def _payload(text: str, meta: dict) -> dict[str, Any]:
    """The payload the pipeline stores, rebuilt from the export."""
    fields = {key: meta[key] for key in ("chunk_id", "doc_id", "source_file", "metadata")}
    return Chunk(text=text, **fields).payload()


def _sparse_rows(
    handle: IO[bytes], metadata: list[dict], where: str
) -> Iterator[tuple[list[int], list[float]]]:
    rows = [json.loads(line) for line in handle if line.strip()]
    if [row["point_id"] for row in rows] != [m["point_id"] for m in metadata]:
        raise ArchiveError(f"{where}: sparse vectors are not aligned with the metadata")
    return ((list(row["indices"]), list(row["values"])) for row in rows)


def upload_export(
    path: Path,
    store: Store,
    collections: list[str] | None = None,
    recreate: bool = False,
    storage: StorageOptions | None = None,
) -> dict[str, int]:
    """Verify an export directory or zip, then load its collections; name -> points loaded.

    `storage` replaces the storage options the run recorded (None keeps them)."""
    with open_export(Path(path)) as export:
        available = export.collections()
        if not available:
            raise ArchiveError(f"{export.source}: the manifest lists no exported collection")
        chosen = collections or available
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise UsageError(
                f'Unknown collection "{unknown[0]}" in {export.source}. '
                f"Available: {', '.join(available)}"
            )
        store.check_writable()
        counts: dict[str, int] = {}
        for name in chosen:
            try:
                counts[name] = load_collection(export, name, store, recreate, storage)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ArchiveError(
                    f"{export.source}: {name} has malformed export files ({exc!r})"
                ) from exc
        return counts
