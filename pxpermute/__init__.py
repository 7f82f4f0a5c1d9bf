"""pxpermute: which channels of an imaging-flow-cytometry experiment does a classifier need?

PXPermute (Shetab Boushehri et al., Cell Reports Methods 2024) permutes the pixels
inside one channel of every test image, k times, and measures the per-class drop
of a metric (F1 by default).  See :func:`pxpermute.channel_importance`.

Training helpers (:mod:`pxpermute.training`, which needs skorch) and
:func:`~pxpermute.seed_agreement` (how often independent
seeds give the same ranking) are imported on first use, so ``import pxpermute``
stays light.
"""
from ._version import __version__  # noqa: E402  (the one place the version is written)
from .datasets import GroundTruth, IFCDataset, make_synthetic  # noqa: E402
from .importance import channel_importance  # noqa: E402
from .result import ImportanceResult  # noqa: E402

_LAZY = {
    "train_classifier": "training",
    "cross_validate": "training",
    "resnet18": "models",
    "SmallCNN": "models",
    "seed_agreement": "evaluation.repeats",
}

__all__ = ["IFCDataset", "GroundTruth", "make_synthetic", "channel_importance", "ImportanceResult", "__version__",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pxpermute' has no attribute {name!r}")
