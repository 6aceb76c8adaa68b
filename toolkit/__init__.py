"""reembed: re-embed a live pgvector column with a new model and swap it in without downtime."""

__version__ = "0.1.0"
