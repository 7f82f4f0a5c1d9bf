"""pxpermute: which channels of an imaging-flow-cytometry experiment does a classifier need?

PXPermute (Shetab Boushehri et al., Cell Reports Methods 2024) permutes the pixels
inside one channel of every test image, k times, and measures the per-class drop
of a metric (F1 by default).  See :func:`pxpermute.channel_importance`.
"""
__version__ = "0.1.0"

from .datasets import GroundTruth, IFCDataset  # noqa: E402
from .importance import channel_importance  # noqa: E402
from .result import ImportanceResult  # noqa: E402

__all__ = ["IFCDataset", "GroundTruth", "channel_importance", "ImportanceResult", "__version__"]
