"""Versioned event schemas (pydantic v2). JSON Schema files for other languages live in ``schemas/json/``."""
