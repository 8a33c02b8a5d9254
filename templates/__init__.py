"""Batch-script templates shipped with hpcbridge (Jinja)."""
