"""Data: dataset tables, loaders for each layout, transforms and the Lightning DataModule."""

from lookalike.data.table import ImageTable, Splits

__all__ = ["ImageTable", "Splits"]
