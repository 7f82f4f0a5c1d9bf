"""Data sets: the dataset object, the synthetic IFC generator and published-data loaders."""
from .base import GroundTruth, IFCDataset, resolve_channels

__all__ = ["IFCDataset", "GroundTruth", "resolve_channels"]
