"""One exception family, so the CLI can turn every expected failure into a one-line message."""


class EmbedCollectionsError(Exception):
    """Base of every error the library raises on purpose; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(EmbedCollectionsError):
    """The command line or configuration asks for something impossible."""

    exit_code = 2


class DiscoveryError(EmbedCollectionsError):
    """The chunked directory cannot be scanned or holds no collection."""


class ChunkFileError(EmbedCollectionsError):
    """A chunk file cannot be read or has an unknown shape (its collection records it)."""


class ModelError(EmbedCollectionsError):
    """A model cannot be resolved or loaded."""


class LeaseTimeoutError(EmbedCollectionsError):
    """The exclusive device lease could not be acquired in time."""


class StoreError(EmbedCollectionsError):
    """The vector store is unreachable, incompatible or refused a write."""


class StoreInUseError(StoreError):
    """Another process holds the store (or one of its collections) open for writing."""


class ShardDamagedError(StoreError):
    """A collection exists on disk but the engine cannot open it (rebuild it from the cache)."""


class DiskFullError(EmbedCollectionsError):
    """A target filesystem has (or will have) too little free space for the run."""


class ArchiveError(EmbedCollectionsError):
    """An export directory or archive is incomplete, tampered with or unsafe."""
