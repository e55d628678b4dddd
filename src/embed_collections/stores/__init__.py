"""Vector stores behind one small interface: embedded Qdrant Edge and a Qdrant server."""

from embed_collections.stores.base import (
    Hit,
    PointBatch,
    PointLookup,
    SearchQuery,
    Store,
    VectorLayout,
)

__all__ = ["Hit", "PointBatch", "PointLookup", "SearchQuery", "Store", "VectorLayout"]
