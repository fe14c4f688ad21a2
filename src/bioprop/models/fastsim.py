"""Moved to :mod:`bioprop.neurons.fastsim` (kept so that older imports keep working)."""

from ..neurons.fastsim import SimOptions  # noqa: F401

__all__ = ["SimOptions"]
