"""Scheduler adapters: pure argv builders and output parsers, one module per batch system."""
