"""Transports: how commands and files reach the cluster side."""

from __future__ import annotations

from .base import Completed, Transport

__all__ = ["Completed", "Transport"]
