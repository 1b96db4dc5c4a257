"""Backbone names, kept free of heavy imports (a re-export of the registry's torch-free table,
`pipeline.models.archs`, for code that imported it from here)."""
from pipeline.models.archs import ALIASES, ARCHS

# Backbones with a module of their own (their WSOL form, METHOD.md 1.3); every other name is a timm model.
WSOL_ARCHS = tuple(ARCHS)

__all__ = ["ALIASES", "WSOL_ARCHS"]
