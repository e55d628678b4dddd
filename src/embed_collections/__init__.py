"""embed-collections: embed trees of pre-chunked documents with a model ensemble into Qdrant."""

__version__ = "0.1.0"
