"""study-embed: keep question embeddings correct inside PostgreSQL."""

__version__ = "0.1.0"
