"""Embedding providers: one small interface (base.Embedder), one module per provider."""
