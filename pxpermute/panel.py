"""Panel design tools, kept importable under their first home.

The analyses now live in :mod:`pxpermute.evaluation` (one module per
analysis: :mod:`~pxpermute.evaluation.panels`, :mod:`~pxpermute.evaluation.repeats`,
:mod:`~pxpermute.evaluation.loco`, :mod:`~pxpermute.evaluation.crossval`);
this module re-exports their public names so ``from pxpermute.panel import ...``
keeps working.
"""
from .evaluation.crossval import cv_importance
from .evaluation.loco import leave_one_channel_out, side_by_side
from .evaluation.panels import (
    TESTS,
    MinimalPanel,
    MultiStageResult,
    NestedRanking,
    PanelComparison,
    PanelSearch,
    compare_panels,
    minimal_panel,
    multistage_design,
    nested_rankings,
    paired_tests,
)
from .evaluation.repeats import KAblation, first_stable_k, k_ablation, seed_agreement

__all__ = [
    "PanelComparison",
    "compare_panels",
    "PanelSearch",
    "MinimalPanel",
    "minimal_panel",
    "MultiStageResult",
    "multistage_design",
    "cv_importance",
    "KAblation",
    "k_ablation",
    "first_stable_k",
    "seed_agreement",
    "leave_one_channel_out",
    "side_by_side",
    "paired_tests",
    "NestedRanking",
    "nested_rankings",
    "TESTS",
]
