"""Evaluating channel rankings and turning them into experimental decisions.

One module per analysis; every retraining goes through
:func:`pxpermute.training.cross_validate` (via :mod:`.retrain`), and every
result follows the package's result protocol: ``to_frame()`` (tidy pandas),
``summary()`` (printable text), ``plot()``, ``save(path)`` / ``load(path)``.

=====================  ==========================================================
module                 what it holds
=====================  ==========================================================
:mod:`.retrain`        :func:`retrain_scores` -- CV scores of models retrained on
                       channel subsets (the shared retraining routine)
:mod:`.roar`           :func:`remove_and_retrain`, :class:`ROARResult`
:mod:`.agreement`      :func:`ranking_channels`, :func:`score_ranking`,
                       :func:`score_rankings` -- agreement with a known ranking
:mod:`.panels`         :func:`compare_panels`, :func:`minimal_panel`,
                       :func:`multistage_design`, :func:`paired_tests`,
                       :func:`nested_rankings`
:mod:`.repeats`        :func:`k_ablation`, :func:`first_stable_k`, :func:`seed_agreement`
:mod:`.loco`           :func:`leave_one_channel_out`, :func:`runtime_vs_loco`,
                       :func:`side_by_side`
:mod:`.crossval`       :func:`cv_importance` -- the published protocol
:mod:`.schematic`      :func:`method_schematic` -- the method drawn on one cell
=====================  ==========================================================
"""
from .agreement import ranking_channels, score_ranking, score_rankings
from .crossval import cv_importance
from .loco import leave_one_channel_out, runtime_vs_loco, side_by_side
from .panels import (
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
from .repeats import KAblation, first_stable_k, k_ablation, seed_agreement
from .retrain import retrain_scores
from .roar import ROARResult, remove_and_retrain
from .schematic import method_schematic

__all__ = [
    "retrain_scores",
    "method_schematic",
    "remove_and_retrain",
    "ROARResult",
    "ranking_channels",
    "score_ranking",
    "score_rankings",
    "PanelComparison",
    "compare_panels",
    "PanelSearch",
    "MinimalPanel",
    "minimal_panel",
    "MultiStageResult",
    "multistage_design",
    "paired_tests",
    "NestedRanking",
    "nested_rankings",
    "cv_importance",
    "KAblation",
    "k_ablation",
    "first_stable_k",
    "seed_agreement",
    "leave_one_channel_out",
    "runtime_vs_loco",
    "side_by_side",
]
