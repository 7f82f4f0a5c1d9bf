"""Synthetic imaging-flow-cytometry data with *planted* per-channel relevance.

Every channel of a synthetic data set is drawn by a known rule, so the truth a
channel-importance method should recover travels with the data
(:attr:`IFCDataset.ground_truth`).  Cells are smooth, slightly irregular blobs
with a textured interior, random position, rotation and size, on a noisy,
non-negative background.  Channels play one of these *roles*:

``"shape"`` / ``"texture"``
    Class information lives in the spatial pattern only (cell elongation,
    nucleus fragmentation, position of a membrane cap, texture granularity,
    arrangement of several cells).  Amount of stain and its histogram are
    (nearly) class independent, so permuting the pixels inside the channel
    destroys the information.
``"marker"``
    A stain that is present (a membrane ring or spots on the cells it marks)
    or absent: information in the pattern *and* in the total intensity.
``"intensity"``
    Information **only** in the channel's total intensity: the spatial pattern
    is drawn from the same distribution for every class (it sits on a
    class-independent "reference" cell) and only its brightness scales with
    the class.  Within-image pixel permutation keeps the total intensity, so
    PXPermute (``perturbation="pixel"``) is expected to score such a channel
    ~0, whereas the cross-sample swap (``"sample"``) or occlusion (``"fill"``)
    detect it.  This is the method's published limitation, planted on purpose.
    The presets draw these channels as a diffuse, speckled glow (pattern
    ``"diffuse"``) so that a permuted image still looks like the data: with a
    crisp pattern (a membrane ring) whose brightness alone carries the class,
    a CNN that learned the ring is also disturbed by the scrambled,
    out-of-distribution image and PXPermute scores the channel > 0 although
    permutation removed no class information.
``"redundant:<name>"``
    A dimmer, noisier copy of channel ``<name>``: the same information, none
    of it unique.
``"noise"``
    Structured cell signal drawn the same way for every class.
``"empty"``
    Background noise only (an unused antibody or Live/Dead channel).

Classes are defined by *factors* (e.g. elongation, fragmentation, marker
status): each class fixes, or gives probabilities for, the level of each
factor, and each channel renders some factors.  Presets combine factors so
that a classifier needs several channels (in ``"default"``, every informative
channel is the only one separating some pair of classes).

Planted relevance rule
----------------------
For channel ``c`` let ``S_c`` be everything class-dependent that the channel
renders (the levels of the factors it shows, which cells it stains and where
they are).  Then ``relevance[c] = I(Y; S_c) / H(Y)``: the mutual information
between class and rendered factors, computed exactly from the preset's class
weights and class-to-level table, as a fraction of the class entropy (1 means
the channel alone identifies the class).  Noise and empty channels get 0; a
redundant copy gets half of its source's value (it carries the same, but no
unique, information).  Pixel permutation cannot see intensity-only
information: :func:`expected_relevance` with ``perturbation="pixel"`` sets
intensity channels to 0.

Examples
--------
>>> from pxpermute.datasets import make_synthetic
>>> ds = make_synthetic("default", n_samples=200, random_state=0)
>>> ds.channel_names
['BF', 'DNA', 'DNA-2', 'Marker', 'Noise', 'Empty']
>>> ds.ground_truth.roles
['shape', 'shape', 'redundant:DNA', 'intensity', 'noise', 'empty']
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.fft as _fft

from .base import GroundTruth, IFCDataset

__all__ = [
    "make_synthetic",
    "SYNTHETIC_PRESETS",
    "GENERATOR_VERSION",
    "expected_relevance",
    "expected_ranking",
]

GENERATOR_VERSION = "1.0"

ROLES = ("shape", "texture", "marker", "intensity", "redundant", "noise", "empty")
INFORMATIVE_SPATIAL_ROLES = ("shape", "texture")
PERTURBATIONS = ("pixel", "sample", "fill")

# Parameters each pattern understands, with defaults.  Lengths are in pixels of
# a 32 x 32 image and scale with the image size.
PATTERNS: dict[str, dict[str, float]] = {
    # transmitted light: bright background, darker cell with a dark rim
    "brightfield": {"elongation": 1.0, "irregularity": 1.0, "granularity": 1.0, "texture": 0.5},
    # stained cell body (cytoplasm), textured
    "body": {"elongation": 1.0, "irregularity": 1.0, "granularity": 1.0, "texture": 0.5},
    # nucleus made of `lobes` fragments of equal total area, off-centre by `eccentricity`
    "nucleus": {"lobes": 1, "eccentricity": 0.0, "size": 0.6, "texture": 0.25},
    # membrane ring; `polarity` caps it towards the partner cell, `dots` breaks it into dots
    "membrane": {"polarity": 0.0, "dots": 0.0, "width": 1.0},
    # `count` Gaussian spots inside the cell, radial `spread` (0 centre .. 1 rim)
    "spots": {"count": 3, "spread": 0.7, "size": 1.0},
    # spatially unstructured glow: broad Gaussian envelope (sigma `extent` x image size) times
    # independent per-pixel speckle; `extent` >= 2 is practically flat over the frame
    "diffuse": {"extent": 4.0, "speckle": 0.5},
    "none": {},
}
LAYOUTS = ("single", "pair", "apart", "overlap", "triplet")
_N_SLOTS = {"single": 1, "pair": 2, "apart": 2, "overlap": 2, "triplet": 3}
_LOBE_DEPTH = 0.45  # depth of the indentations between nuclear lobes
_CHUNK = 1024  # samples rendered at a time (bounded memory; fixed so results do not depend on it)

# ----------------------------------------------------------------------------- presets


def _f(factor: str, values: list) -> dict:
    return {"factor": factor, "values": values}


_BF = {"background": 0.9, "read_noise": 0.02, "shot_noise": 0.0, "gain_jitter": 0.03}

SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "description": (
            "Embedded demo: 6 channels, 4 classes built from three independent morphological / "
            "marker factors so that BF, DNA and Marker are each needed; one redundant copy, "
            "one structured-noise and one empty channel."
        ),
        "image_size": 32,
        "n_samples": 2400,
        "cell_radius": 0.25,
        "classes": ["round", "elongated", "elongated+fragmented", "elongated+fragmented+marker"],
        "class_weights": [1, 1, 1, 1],
        "factors": {
            "elongation": [0, 1, 1, 1],
            "fragmentation": [0, 0, 1, 1],
            "marker": [0, 0, 0, 1],
        },
        "channels": [
            {"name": "BF", "role": "shape", "stain_free": True, "pattern": "brightfield", **_BF,
             "params": {"elongation": _f("elongation", [1.0, 1.9])}},
            {"name": "DNA", "role": "shape", "pattern": "nucleus",
             "params": {"lobes": _f("fragmentation", [1, 3])}},
            {"name": "DNA-2", "role": "redundant", "source": "DNA", "copy_gain": 0.6, "read_noise": 0.06},
            {"name": "Marker", "role": "intensity", "pattern": "diffuse", "params": {"extent": 0.5},
             "gain": _f("marker", [1.0, 2.2])},
            {"name": "Noise", "role": "noise", "pattern": "spots",
             "params": {"count": {"uniform": [1, 5]}}, "gain_jitter": 0.3},
            {"name": "Empty", "role": "empty"},
        ],
    },
    "apoptotic": {
        "description": (
            "Mirrors the apoptotic-cell data of Kranich et al. 2020 (2 channels, 32x32, 2 classes): "
            "apoptotic cells show membrane blebbing in BF (in 80 % of them) and a fragmented nucleus "
            "in the fluorescence channel (in 90 %); each channel alone is imperfect."
        ),
        "mirrors": "Kranich et al. 2020, J Extracell Vesicles 9:1792683 (apoptotic / non-apoptotic IFC images)",
        "image_size": 32,
        "n_samples": 2000,
        "cell_radius": 0.24,
        "classes": ["apoptotic", "non-apoptotic"],
        "class_weights": [0.45, 0.55],
        "factors": {
            "blebbing": [[0.2, 0.8], [0.92, 0.08]],
            "fragmentation": [[0.1, 0.9], [0.95, 0.05]],
        },
        "channels": [
            {"name": "BF", "role": "shape", "stain_free": True, "pattern": "brightfield", **_BF,
             "params": {"irregularity": _f("blebbing", [1.0, 3.5])}},
            {"name": "FL", "role": "shape", "pattern": "nucleus",
             "params": {"lobes": _f("fragmentation", [1, 4])}},
        ],
    },
    "synapse": {
        "description": (
            "Mirrors the immunological-synapse data of Essig et al. 2022 (8 channels, 9 classes): "
            "classes differ by the number and arrangement of cells (BF, F-actin), which cells carry "
            "CD3 (T cell) and MHCII (B cell), phospho-CD3zeta signalling polarised at the contact, "
            "and CD18 brightness (intensity only, higher in conjugates). Ab is empty, Live-Dead is "
            "class-independent noise. Images are 48x48 (published: 128x128)."
        ),
        "mirrors": (
            "Essig et al. 2022, Dryad doi:10.5061/dryad.ht76hdrk7 (scifAI); class names as used in "
            "the scifAI analysis code; class weights invented"
        ),
        "image_size": 48,
        "n_samples": 1800,
        "cell_radius": 0.15,
        "classes": [
            "B cell",
            "T cell",
            "T cell with signaling",
            "T cell with B cell fragments",
            "B & T cell in one layer",
            "Synapses without signaling",
            "Synapses with signaling",
            "No cell-cell interaction",
            "Multiplets",
        ],
        "class_weights": [0.16, 0.16, 0.1, 0.08, 0.08, 0.12, 0.12, 0.1, 0.08],
        "factors": {
            # 0 single, 1 pair in contact, 2 pair apart, 3 overlapping, 4 triplet
            "layout": [0, 0, 0, 0, 3, 1, 1, 2, 4],
            # which cells are T cells (CD3+): 0 none, 1 first cell
            "t_cells": [0, 1, 1, 1, 1, 1, 1, 1, 1],
            # which cells are B cells (MHCII+): 0 none, 1 first, 2 second, 3 second and third,
            # 4 first cell, fragmented (B-cell fragments on a T cell)
            "b_cells": [1, 0, 0, 4, 2, 2, 2, 2, 3],
            "signaling": [0, 0, 1, 0, 0, 0, 1, 0, 0],
            "contact": [0, 0, 0, 0, 1, 1, 1, 0, 0],
        },
        "geometry": {"layout": _f("layout", ["single", "pair", "apart", "overlap", "triplet"])},
        "channels": [
            {"name": "BF", "role": "shape", "stain_free": True, "pattern": "brightfield", **_BF},
            {"name": "Ab", "role": "empty"},
            {"name": "CD18", "role": "intensity", "pattern": "diffuse", "params": {"extent": 0.5},
             "gain": _f("contact", [1.0, 2.2])},
            {"name": "F-actin", "role": "shape", "pattern": "membrane",
             "params": {"polarity": _f("contact", [0.0, 1.0])}},
            {"name": "MHCII", "role": "marker", "pattern": "membrane",
             "cells": _f("b_cells", [0b000, 0b001, 0b010, 0b110, 0b001]),
             "params": {"dots": _f("b_cells", [0.0, 0.0, 0.0, 0.0, 1.0])}},
            {"name": "CD3", "role": "marker", "pattern": "membrane", "cells": _f("t_cells", [0b000, 0b001])},
            {"name": "P-CD3zeta", "role": "marker", "pattern": "membrane",
             "cells": _f("signaling", [0b000, 0b001]), "params": {"polarity": _f("signaling", [0.0, 1.0])}},
            {"name": "Live-Dead", "role": "noise", "pattern": "body", "gain_jitter": 0.8},
        ],
    },
    "wbc": {
        "description": (
            "Mirrors the white-blood-cell data of Lippeveld et al. 2020 (12 channels, 8 classes, 32x32; "
            "published 64x64): BF1 shows cell size / irregularity, BF2 is a redundant brightfield, DF "
            "(side scatter) shows granularity, CD45 brightness differs by lineage (intensity only), "
            "and each CD marker stains the cell types it marks."
        ),
        "mirrors": (
            "Lippeveld et al. 2020, Cytometry A 97:308 (stain-free WBC classification); class list "
            "follows the lineages marked by the panel, class weights invented"
        ),
        "image_size": 32,
        "n_samples": 2400,
        "cell_radius": 0.2,
        "classes": [
            "CD4+ T cell",
            "CD8+ T cell",
            "B cell",
            "NK cell",
            "NKT cell",
            "neutrophil",
            "eosinophil",
            "monocyte",
        ],
        "class_weights": [0.16, 0.12, 0.12, 0.1, 0.06, 0.2, 0.08, 0.16],
        "factors": {
            # 0 lymphocyte, 1 neutrophil, 2 eosinophil, 3 monocyte
            "lineage": [0, 0, 0, 0, 0, 1, 2, 3],
            # CD45: 0 dim (granulocytes), 1 intermediate (monocytes), 2 bright (lymphocytes)
            "cd45": [2, 2, 2, 2, 2, 0, 0, 1],
            "cd3": [1, 1, 0, 0, 1, 0, 0, 0],
            "cd4": [1, 0, 0, 0, 0, 0, 0, [0.3, 0.7]],
            "cd8": [0, 1, 0, [0.7, 0.3], [0.5, 0.5], 0, 0, 0],
            "cd19": [0, 0, 1, 0, 0, 0, 0, 0],
            "cd56": [0, 0, 0, 1, 1, 0, 0, 0],
            "cd15": [0, 0, 0, 0, 0, 1, [0.5, 0.5], 0],
            "cd14": [0, 0, 0, 0, 0, 0, 0, 1],
            "sigl8": [0, 0, 0, 0, 0, 0, 1, 0],
        },
        "geometry": {"size": _f("lineage", [1.0, 1.3, 1.25, 1.4])},
        "channels": [
            {"name": "BF1", "role": "shape", "stain_free": True, "pattern": "brightfield", **_BF,
             "params": {"irregularity": _f("lineage", [0.6, 1.5, 1.2, 2.5])}},
            {"name": "CD15", "role": "marker", "pattern": "membrane", "cells": _f("cd15", [0, 1])},
            {"name": "SigL8", "role": "marker", "pattern": "membrane", "cells": _f("sigl8", [0, 1])},
            {"name": "CD14", "role": "marker", "pattern": "membrane", "cells": _f("cd14", [0, 1])},
            {"name": "CD19", "role": "marker", "pattern": "membrane", "cells": _f("cd19", [0, 1])},
            {"name": "DF", "role": "texture", "stain_free": True, "pattern": "body", "gain": 0.6,
             "params": {"granularity": _f("lineage", [2.0, 0.55, 1.1, 0.8]),
                        "texture": _f("lineage", [0.3, 1.2, 1.2, 0.7])}},
            {"name": "CD3", "role": "marker", "pattern": "membrane", "cells": _f("cd3", [0, 1])},
            {"name": "CD45", "role": "intensity", "pattern": "diffuse", "params": {"extent": 0.5},
             "gain": _f("cd45", [0.6, 1.1, 2.0])},
            {"name": "BF2", "role": "redundant", "source": "BF1", "copy_gain": 0.9, "read_noise": 0.05,
             "stain_free": True},
            {"name": "CD4", "role": "marker", "pattern": "membrane", "cells": _f("cd4", [0, 1])},
            {"name": "CD56", "role": "marker", "pattern": "membrane", "cells": _f("cd56", [0, 1])},
            {"name": "CD8", "role": "marker", "pattern": "membrane", "cells": _f("cd8", [0, 1])},
        ],
    },
    "panel20": {
        "description": (
            "20 candidate markers M01..M20 for the multi-stage panel-design tutorial: 6 classes "
            "= 2 (factor a) x 3 (factor b); six markers are informative with graded relevance "
            "(M03 and M07 are decisive, M11 / M14 / M19 carry noisy or partial versions, M16 is a "
            "redundant copy of M07); the other 14 are class-independent noise or empty."
        ),
        "image_size": 32,
        "n_samples": 1500,
        "cell_radius": 0.25,
        "classes": [f"type {i}" for i in range(1, 7)],
        "class_weights": [1, 1, 1, 1, 1, 1],
        "factors": {
            "a": [0, 0, 0, 1, 1, 1],
            "b": [0, 1, 2, 0, 1, 2],
            "a_noisy": [[0.8, 0.2]] * 3 + [[0.2, 0.8]] * 3,
            "b_partial": [0, 1, 1, 0, 1, 1],
            "a_weak": [[0.7, 0.3]] * 3 + [[0.3, 0.7]] * 3,
        },
        "channels": [
            {"name": f"M{i:02d}", **ch}
            for i, ch in enumerate(
                [
                    {"role": "noise", "pattern": "body", "gain_jitter": 0.4},
                    {"role": "empty"},
                    {"role": "marker", "pattern": "membrane", "cells": _f("a", [0, 1])},  # M03
                    {"role": "noise", "pattern": "spots", "params": {"count": {"uniform": [1, 6]}}},
                    {"role": "noise", "pattern": "nucleus", "params": {"lobes": {"uniform": [1, 3]}}},
                    {"role": "empty"},
                    {"role": "shape", "pattern": "nucleus", "params": {"lobes": _f("b", [1, 2, 4])}},  # M07
                    {"role": "noise", "pattern": "membrane", "gain_jitter": 0.5},
                    {"role": "noise", "pattern": "body", "params": {"granularity": {"uniform": [0.6, 2.0]}}},
                    {"role": "empty"},
                    {"role": "intensity", "pattern": "diffuse", "params": {"extent": 0.5},  # M11
                     "gain": _f("a_noisy", [1.0, 2.0])},
                    {"role": "noise", "pattern": "spots", "params": {"spread": {"uniform": [0.0, 1.0]}}},
                    {"role": "noise", "pattern": "membrane", "params": {"dots": {"uniform": [0.0, 1.0]}}},
                    {"role": "texture", "pattern": "body",  # M14
                     "params": {"granularity": _f("b_partial", [2.2, 0.7]), "texture": 0.8}},
                    {"role": "noise", "pattern": "body", "gain_jitter": 0.3},
                    {"role": "redundant", "source": "M07", "copy_gain": 0.5, "read_noise": 0.06},  # M16
                    {"role": "empty"},
                    {"role": "noise", "pattern": "spots", "params": {"count": {"uniform": [0, 4]}}},
                    {"role": "marker", "pattern": "spots", "cells": _f("a_weak", [0, 1])},  # M19
                    {"role": "noise", "pattern": "nucleus", "params": {"eccentricity": {"uniform": [0.0, 1.0]}}},
                ],
                start=1,
            )
        ],
    },
}

# "artefact": the default preset plus an acquisition artefact in one class -- the border of the
# brightfield image is 0.06 brighter in every "elongated" cell (as if that class had been recorded in
# another session with other illumination).  0.06 is about two standard deviations of a background
# pixel (BF background 0.9, read noise 0.02, gain jitter 3 %), invisible by eye, but a classifier
# (and :func:`pxpermute.diagnostics.check_dataset`) picks it up.  The planted relevance stays that
# of the default preset: the artefact carries class information that is *not* biology.
SYNTHETIC_PRESETS["artefact"] = copy.deepcopy(SYNTHETIC_PRESETS["default"])
SYNTHETIC_PRESETS["artefact"].update(
    description=(
        "The default preset with a planted acquisition artefact: in class 'elongated' the outer 3 pixels "
        "of every BF image are 0.06 brighter (about 2 background-noise standard deviations). The "
        "diagnostics must flag it as a shortcut; the clean presets must not be flagged."
    ),
    artefacts=[{"kind": "border", "channel": "BF", "classes": ["elongated"], "amount": 0.06, "width": 3}],
)


# ----------------------------------------------------------------------------- spec handling

_CHANNEL_KEYS = {
    "name", "role", "stain_free", "pattern", "params", "gain", "gain_jitter", "cells", "source",
    "copy_gain", "background", "read_noise", "shot_noise",
}
_PRESET_KEYS = {
    "description", "mirrors", "image_size", "n_samples", "cell_radius", "classes", "class_weights",
    "factors", "geometry", "channels", "artefacts",
}
_ARTEFACT_KEYS = {"kind", "channel", "classes", "amount", "width"}
ARTEFACT_KINDS = ("border", "offset")


def _is_bound(value: Any) -> bool:
    return isinstance(value, Mapping) and "factor" in value


def _normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a preset spec and return a normalized deep copy."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"a synthetic spec must be a mapping, got {type(spec).__name__}")
    spec = copy.deepcopy(dict(spec))
    unknown = set(spec) - _PRESET_KEYS
    if unknown:
        raise ValueError(f"unknown spec keys {sorted(unknown)}; allowed: {sorted(_PRESET_KEYS)}")
    for key in ("classes", "factors", "channels"):
        if key not in spec:
            raise ValueError(f"spec needs a {key!r} entry")
    classes = list(spec["classes"])
    k = len(classes)
    if k < 2:
        raise ValueError(f"a synthetic spec needs at least 2 classes, got {k}")
    w = np.asarray(spec.get("class_weights", [1.0] * k), float)
    if w.shape != (k,) or np.any(w < 0) or w.sum() <= 0 or not np.all(np.isfinite(w)):
        raise ValueError(f"class_weights must be {k} non-negative numbers with a positive sum, got {w.tolist()}")
    spec["class_weights"] = (w / w.sum()).tolist()
    spec.setdefault("image_size", 32)
    spec.setdefault("n_samples", 2000)
    spec.setdefault("cell_radius", 0.25)
    spec.setdefault("geometry", {})
    spec.setdefault("description", "")

    # factors -> probability table (K, L)
    tables: dict[str, np.ndarray] = {}
    for name, per_class in spec["factors"].items():
        per_class = list(per_class)
        if len(per_class) != k:
            raise ValueError(f"factor {name!r} needs one entry per class ({k}), got {len(per_class)}")
        n_levels = 1
        for e in per_class:
            n_levels = max(n_levels, len(e) if isinstance(e, (list, tuple)) else int(e) + 1)
        tab = np.zeros((k, n_levels))
        for ci, e in enumerate(per_class):
            if isinstance(e, (list, tuple)):
                p = np.asarray(e, float)
                if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
                    raise ValueError(f"factor {name!r}, class {classes[ci]!r}: probabilities {e} must sum to 1")
                tab[ci, : len(p)] = p
            else:
                if int(e) != e or e < 0:
                    raise ValueError(f"factor {name!r}, class {classes[ci]!r}: level must be a non-negative int, got {e!r}")
                tab[ci, int(e)] = 1.0
        tables[name] = tab
    spec["_tables"] = tables

    def check_binding(value: Any, where: str) -> None:
        if _is_bound(value):
            f = value["factor"]
            if f not in tables:
                raise ValueError(f"{where}: unknown factor {f!r}; factors: {sorted(tables)}")
            if len(value["values"]) < tables[f].shape[1]:
                raise ValueError(
                    f"{where}: factor {f!r} has {tables[f].shape[1]} levels but only {len(value['values'])} values"
                )

    geometry = dict(spec["geometry"])
    for key, value in geometry.items():
        if key not in ("layout", "size"):
            raise ValueError(f"unknown geometry key {key!r}; allowed: 'layout', 'size'")
        check_binding(value, f"geometry[{key!r}]")
        if key == "layout":
            vals = value["values"] if _is_bound(value) else [value]
            bad = [v for v in vals if v not in LAYOUTS]
            if bad:
                raise ValueError(f"unknown layouts {bad}; allowed: {list(LAYOUTS)}")
    spec["geometry"] = geometry

    channels = [dict(c) for c in spec["channels"]]
    names = [c.get("name") for c in channels]
    if any(not isinstance(n, str) or not n for n in names):
        raise ValueError("every channel needs a non-empty string 'name'")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique, got {names}")
    for ch in channels:
        where = f"channel {ch['name']!r}"
        unknown = set(ch) - _CHANNEL_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_CHANNEL_KEYS)}")
        role = ch.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: role must be one of {ROLES}, got {role!r}")
        ch.setdefault("stain_free", False)
        if role == "redundant":
            src = ch.get("source")
            if src not in names:
                raise ValueError(f"{where}: redundant channels need 'source' naming another channel; got {src!r}")
            src_ch = channels[names.index(src)]
            if src_ch.get("role") not in ("shape", "texture", "marker"):
                raise ValueError(
                    f"{where}: the source of a redundant copy must be a shape/texture/marker channel, "
                    f"{src!r} has role {src_ch.get('role')!r}"
                )
            ch.setdefault("copy_gain", 0.6)
            ch.setdefault("read_noise", 0.05)
            ch.setdefault("shot_noise", 0.03)
            continue
        pattern = ch.setdefault("pattern", "none" if role == "empty" else "body")
        if pattern not in PATTERNS:
            raise ValueError(f"{where}: unknown pattern {pattern!r}; patterns: {sorted(PATTERNS)}")
        if role == "empty" and pattern != "none":
            raise ValueError(f"{where}: an empty channel has no pattern, got {pattern!r}")
        params = dict(ch.get("params", {}))
        for pname, value in params.items():
            if pname not in PATTERNS[pattern]:
                raise ValueError(
                    f"{where}: pattern {pattern!r} has no parameter {pname!r}; "
                    f"parameters: {sorted(PATTERNS[pattern])}"
                )
            check_binding(value, f"{where}, parameter {pname!r}")
        ch["params"] = params
        ch.setdefault("gain", 1.0)
        check_binding(ch["gain"], f"{where}, gain")
        ch.setdefault("gain_jitter", 0.15)
        ch.setdefault("cells", "reference" if role in ("intensity", "noise", "empty") else "all")
        cells = ch["cells"]
        if not (cells in ("reference", "all") or _is_bound(cells)):
            raise ValueError(f"{where}: cells must be 'reference', 'all' or a factor binding, got {cells!r}")
        check_binding(cells, f"{where}, cells")
        fluor = pattern != "brightfield"
        ch.setdefault("background", 0.05 if role != "empty" else 0.01)
        ch.setdefault("read_noise", 0.012 if role != "empty" else 0.005)
        ch.setdefault("shot_noise", 0.03 if fluor else 0.0)
        bound_params = [p for p, v in params.items() if _is_bound(v)]
        if role in ("noise", "empty", "intensity"):
            if bound_params:
                raise ValueError(f"{where}: a {role} channel's pattern must not depend on the class (bound {bound_params})")
            if cells != "reference":
                raise ValueError(f"{where}: a {role} channel must be drawn on the class-independent 'reference' cell")
            if role != "intensity" and _is_bound(ch["gain"]):
                raise ValueError(f"{where}: a {role} channel's gain must not depend on the class")
            if role == "intensity" and not _is_bound(ch["gain"]):
                raise ValueError(f"{where}: an intensity channel needs a class-dependent gain (a factor binding)")
        if role in INFORMATIVE_SPATIAL_ROLES and _is_bound(ch["gain"]):
            raise ValueError(f"{where}: a {role} channel keeps its class information in the pattern; its gain must not be bound")
    spec["channels"] = channels

    artefacts = []
    for i, art in enumerate(spec.get("artefacts", []) or []):
        where = f"artefacts[{i}]"
        if not isinstance(art, Mapping):
            raise TypeError(f"{where} must be a mapping, got {type(art).__name__}")
        art = dict(art)
        unknown = set(art) - _ARTEFACT_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_ARTEFACT_KEYS)}")
        kind = art.setdefault("kind", "border")
        if kind not in ARTEFACT_KINDS:
            raise ValueError(f"{where}: kind must be one of {ARTEFACT_KINDS}, got {kind!r}")
        if art.get("channel") not in names:
            raise ValueError(f"{where}: channel must name one of {names}, got {art.get('channel')!r}")
        cls = art.get("classes")
        cls = [cls] if isinstance(cls, str) else list(cls or [])
        bad = [c for c in cls if c not in classes]
        if not cls or bad:
            raise ValueError(f"{where}: classes must name one or more of {classes}; got {art.get('classes')!r}")
        art["classes"] = cls
        amount = art.get("amount")
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not np.isfinite(amount):
            raise ValueError(f"{where}: amount must be a finite number (added to the pixel values), got {amount!r}")
        width = art.setdefault("width", 3)
        if kind == "border" and (isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1):
            raise ValueError(f"{where}: width must be a positive int (pixels), got {width!r}")
        artefacts.append(art)
    spec["artefacts"] = artefacts
    return spec


# ----------------------------------------------------------------------------- relevance


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _channel_signature_factors(spec: dict, ch: dict) -> tuple[list[str], Any]:
    """Factors a channel's rendering depends on, and a function levels -> rendered signature."""
    geometry = spec["geometry"]
    params = {p: v for p, v in ch["params"].items() if _is_bound(v)}
    gain = ch["gain"] if _is_bound(ch["gain"]) else None
    cells = ch["cells"]
    factors: set[str] = {v["factor"] for v in params.values()}
    if gain is not None:
        factors.add(gain["factor"])
    if cells != "reference":
        if _is_bound(cells):
            factors.add(cells["factor"])
        for g in geometry.values():
            if _is_bound(g):
                factors.add(g["factor"])
    names = sorted(factors)

    def signature(levels: Mapping[str, int]) -> tuple:
        sig: list[Any] = []
        for p in sorted(params):
            sig.append((p, params[p]["values"][levels[params[p]["factor"]]]))
        if gain is not None:
            sig.append(("gain", gain["values"][levels[gain["factor"]]]))
        if cells != "reference":
            mask = cells["values"][levels[cells["factor"]]] if _is_bound(cells) else "all"
            sig.append(("cells", mask))
            if mask != 0:  # where the stained cells are depends on the geometry
                for key in sorted(geometry):
                    g = geometry[key]
                    sig.append((key, g["values"][levels[g["factor"]]] if _is_bound(g) else g))
        return tuple(sig)

    return names, signature


def _planted_relevance(spec: dict) -> np.ndarray:
    """relevance[c] = I(Y; S_c) / H(Y); redundant copies get half of their source's value."""
    tables = spec["_tables"]
    prior = np.asarray(spec["class_weights"], float)
    h_y = _entropy(prior)
    channels = spec["channels"]
    rel = np.zeros(len(channels))
    for ci, ch in enumerate(channels):
        if ch["role"] in ("redundant", "noise", "empty"):
            continue
        names, signature = _channel_signature_factors(spec, ch)
        dist: dict[tuple, np.ndarray] = {}  # signature -> p(s | y) over classes
        for combo in itertools.product(*[range(tables[f].shape[1]) for f in names]):
            p = np.ones(len(prior))
            for f, lev in zip(names, combo):
                p = p * tables[f][:, lev]
            if not p.any():
                continue
            s = signature(dict(zip(names, combo)))
            dist[s] = dist.get(s, 0) + p
        if not dist:
            continue
        p_s_given_y = np.stack(list(dist.values()), axis=1)  # (K, S)
        p_s = prior @ p_s_given_y
        h_s_given_y = sum(prior[y] * _entropy(p_s_given_y[y]) for y in range(len(prior)))
        rel[ci] = max(0.0, _entropy(p_s) - h_s_given_y) / h_y
    for ci, ch in enumerate(channels):
        if ch["role"] == "redundant":
            rel[ci] = 0.5 * rel[[c["name"] for c in channels].index(ch["source"])]
    return rel


def _roles(spec: dict) -> list[str]:
    return [f"redundant:{c['source']}" if c["role"] == "redundant" else c["role"] for c in spec["channels"]]


def _notes(spec: dict, rel: np.ndarray, preset: str) -> str:
    lines = [
        f"Synthetic preset {preset!r}. Planted relevance = I(class; what the channel renders) / H(class), "
        "computed exactly from the class weights and the class -> factor-level table; noise and empty "
        "channels 0; a redundant copy gets half of its source's value (same information, none unique). "
        "Intensity-only channels carry class information only in their total intensity: within-image "
        "pixel permutation (PXPermute) is expected to score them ~0, a cross-sample swap or occlusion "
        "detects them (see expected_relevance(gt, perturbation=...)).",
    ]
    for ch, r in zip(spec["channels"], rel):
        names, _ = _channel_signature_factors(spec, ch) if ch["role"] not in ("redundant",) else ([], None)
        what = f"factors {names}" if names else ("copy of " + ch["source"] if ch["role"] == "redundant" else "nothing class-dependent")
        lines.append(f"  {ch['name']}: role {ch['role']}, renders {what}, relevance {r:.3f}")
    return "\n".join(lines)


def _base_role(role: str) -> str:
    return role.split(":", 1)[0]


def expected_relevance(gt: GroundTruth, *, perturbation: str = "sample") -> np.ndarray:
    """Planted relevance as a given perturbation can see it.

    Parameters
    ----------
    gt : GroundTruth
        The ``ground_truth`` of a synthetic data set.
    perturbation : {"sample", "pixel", "fill"}
        ``"pixel"`` (within-image permutation, PXPermute) keeps each image's
        intensity histogram, so intensity-only channels are set to 0; the
        cross-sample swap (``"sample"``) and occlusion (``"fill"``) see all
        planted relevance.

    Returns
    -------
    np.ndarray, shape (C,)

    Examples
    --------
    >>> ds = make_synthetic("default", n_samples=40)
    >>> float(expected_relevance(ds.ground_truth, perturbation="pixel")[3])
    0.0
    """
    if not isinstance(gt, GroundTruth):
        raise TypeError(f"gt must be a GroundTruth, got {type(gt).__name__}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    rel = np.array(gt.relevance, dtype=float)
    if perturbation == "pixel":
        rel[[i for i, r in enumerate(gt.roles) if _base_role(r) == "intensity"]] = 0.0
    return rel


def expected_ranking(gt: GroundTruth, *, perturbation: str = "sample") -> list[int]:
    """Channel indices from most to least relevant (ties keep channel order).

    Examples
    --------
    >>> ds = make_synthetic("default", n_samples=40)
    >>> [ds.channel_names[i] for i in expected_ranking(ds.ground_truth)][:2]
    ['DNA', 'BF']
    """
    rel = expected_relevance(gt, perturbation=perturbation)
    return [int(i) for i in np.argsort(-rel, kind="stable")]


# ----------------------------------------------------------------------------- drawing


def _allocate(n: int, weights: np.ndarray) -> np.ndarray:
    """Exact class counts for n samples (largest remainder)."""
    raw = weights * n
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _draw_levels(table: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(table, axis=1)[labels]
    u = rng.random(len(labels))[:, None]
    return np.minimum((u > cdf).sum(axis=1), table.shape[1] - 1)


def _value(spec_value: Any, levels: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-sample values of a parameter: constant, factor-bound or uniform random (class-independent)."""
    if _is_bound(spec_value):
        return np.asarray(spec_value["values"], dtype=float)[levels[spec_value["factor"]]]
    if isinstance(spec_value, Mapping) and "uniform" in spec_value:
        lo, hi = spec_value["uniform"]
        return rng.uniform(lo, hi, n)
    return np.full(n, float(spec_value))


class _Geometry:
    """Per-sample cell geometry for up to 3 cell slots plus the class-independent reference cell."""

    def __init__(self, spec: dict, levels: dict[str, np.ndarray], n: int, size: int, rng: np.random.Generator):
        g = spec["geometry"]
        layout = g.get("layout", "single")
        if _is_bound(layout):
            names = np.asarray(layout["values"], dtype=object)[levels[layout["factor"]]]
        else:
            names = np.full(n, layout, dtype=object)
        code = np.array([LAYOUTS.index(x) for x in names])
        scale = _value(g.get("size", 1.0), levels, n, rng)
        base = spec["cell_radius"] * size
        self.n_slots = np.array([_N_SLOTS[LAYOUTS[c]] for c in code])
        self.max_slots = int(self.n_slots.max()) if n else 1
        jitter = 0.045 * size
        gx, gy = rng.normal(0, jitter, (2, n))
        psi = rng.uniform(0, 2 * np.pi, n)  # direction of the cell arrangement
        self.psi = psi
        # per-slot shape latents (slot 0 also defines the reference cell)
        r = base * np.exp(rng.normal(0, 0.08, (3, n)))
        theta = rng.uniform(0, np.pi, (3, n))
        elong = 1.0 + np.abs(rng.normal(0, 0.08, (3, n)))
        harm = rng.normal(0, 0.035, (3, 2, n))
        phase = rng.uniform(0, 2 * np.pi, (3, 2, n))
        rs = r * scale
        # offsets along psi (in units of slot radii)
        d = np.zeros((3, n))
        bend = np.zeros((3, n))
        sep = {1: 0.9, 2: 1.45, 3: 0.35}  # pair / apart / overlap: half distance in radii
        for c, h in sep.items():
            m = code == c
            d[0, m], d[1, m] = -h * rs[0, m], h * rs[0, m]
        m = code == 4
        d[1, m], d[2, m] = 1.75 * rs[0, m], -1.75 * rs[0, m]
        bend[2, m] = rng.uniform(-0.5, 0.5, m.sum())
        ang = psi[None] + bend
        self.cx = gx[None] + d * np.cos(ang)
        self.cy = gy[None] + d * np.sin(ang)
        self.r, self.theta, self.elong, self.harm, self.phase = rs, theta, elong, harm, phase
        # reference cell: slot 0 latents without class-dependent size/arrangement
        self.ref = (gx, gy, r[0], theta[0], elong[0], harm[0], phase[0])

    def slot(self, s: int, idx: slice) -> tuple:
        return (self.cx[s, idx], self.cy[s, idx], self.r[s, idx], self.theta[s, idx], self.elong[s, idx],
                self.harm[s, :, idx], self.phase[s, :, idx])

    def reference(self, idx: slice) -> tuple:
        gx, gy, r, th, el, hm, ph = self.ref
        return gx[idx], gy[idx], r[idx], th[idx], el[idx], hm[:, idx], ph[:, idx]


def _col(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32)[:, None, None]


class _Renderer:
    def __init__(self, size: int):
        self.size = size
        self.unit = size / 32.0  # pixel lengths in the pattern table refer to a 32 x 32 image
        c = (np.arange(size, dtype=np.float32) - (size - 1) / 2)
        self.X = c[None, None, :]
        self.Y = c[None, :, None]
        ky = np.fft.fftfreq(size).astype(np.float32)
        kx = np.fft.rfftfreq(size).astype(np.float32)
        self.k2 = (ky[:, None] ** 2 + kx[None, :] ** 2)[None]

    def field(self, rng: np.random.Generator, n: int, sigma: np.ndarray) -> np.ndarray:
        """Smooth Gaussian random field per image, zero mean and unit std, correlation length sigma (px)."""
        white = rng.standard_normal((n, self.size, self.size), dtype=np.float32)
        spec = _fft.rfft2(white, workers=-1)
        spec *= np.exp(np.float32(-2 * np.pi**2) * _col(sigma) ** 2 * self.k2)
        f = _fft.irfft2(spec, s=(self.size, self.size), workers=-1)
        f -= f.mean(axis=(1, 2), keepdims=True)
        f /= f.std(axis=(1, 2), keepdims=True) + np.float32(1e-6)
        return f

    def polar(self, geom: tuple, elongation: np.ndarray | None = None, irregularity: np.ndarray | None = None):
        """Normalised radius rho (1 on the boundary) of a cell, and its mean radius (px)."""
        cx, cy, r, th, el, hm, ph = geom
        e = el if elongation is None else el * elongation
        irr = 1.0 if irregularity is None else irregularity
        dx = self.X - _col(cx)
        dy = self.Y - _col(cy)
        ct, st = _col(np.cos(th)), _col(np.sin(th))
        x = (dx * ct + dy * st) * _col(1.0 / (r * np.sqrt(e)))
        y = (dy * ct - dx * st) * _col(np.sqrt(e) / r)
        q2 = x * x + y * y + np.float32(1e-12)
        q = np.sqrt(q2)
        # boundary 1 + A2 cos(2t + p2) + A3 cos(3t + p3), t the polar angle in the cell frame,
        # written with cos t = x / q, sin t = y / q (no arctan needed)
        c1, s1 = x / q, y / q
        c2, s2 = (x * x - y * y) / q2, 2 * x * y / q2
        c3, s3 = c1 * (4 * c1 * c1 - 3), s1 * (3 - 4 * s1 * s1)
        a2, a3 = hm[0] * irr, hm[1] * irr
        boundary = (
            1.0
            + c2 * _col(a2 * np.cos(ph[0])) - s2 * _col(a2 * np.sin(ph[0]))
            + c3 * _col(a3 * np.cos(ph[1])) - s3 * _col(a3 * np.sin(ph[1]))
        )
        rho = q / np.maximum(boundary, np.float32(0.5))
        return rho, _col(r)

    @staticmethod
    def soft(rho: np.ndarray, reff: np.ndarray, edge: float = 0.7) -> np.ndarray:
        return 0.5 * (1.0 - np.tanh((rho - 1.0) * reff / edge))

    def render(self, pattern: str, geom: tuple, p: dict[str, np.ndarray], psi: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        n = len(geom[0])
        u = self.unit
        if pattern == "none":
            return np.zeros((n, self.size, self.size), np.float32)
        if pattern in ("brightfield", "body"):
            rho, reff = self.polar(geom, p["elongation"], p["irregularity"])
            mask = self.soft(rho, reff)
            tex = self.field(rng, n, p["granularity"] * u)
            if pattern == "body":
                return mask * np.maximum(1.0 + _col(p["texture"]) * 0.6 * tex, 0.0)
            rim = np.exp(-(((rho - 1.0) * reff / (1.1 * u)) ** 2))
            # absorbance: the BF image is background * (1 - absorbance)
            return 0.22 * mask + 0.3 * rim + 0.08 * _col(p["texture"]) * mask * tex
        if pattern == "membrane":
            rho, reff = self.polar(geom)
            ring = np.exp(-(((rho - 1.0) * reff / _col(p["width"] * 1.1 * u)) ** 2))
            pol, dts = p["polarity"], p["dots"]
            if np.any(pol > 0) or np.any(dts > 0):
                cx, cy = geom[0], geom[1]
                dx = self.X - _col(cx)
                dy = self.Y - _col(cy)
                d = np.sqrt(dx * dx + dy * dy) + np.float32(1e-6)
                if np.any(pol > 0):
                    cos_psi = (dx * _col(np.cos(psi)) + dy * _col(np.sin(psi))) / d
                    kappa = 4.0 * pol
                    # von Mises weights normalised to mean 1 around the ring (keeps total intensity)
                    ring = ring * (np.exp(_col(kappa) * (cos_psi - 1.0)) / _col(np.i0(kappa) * np.exp(-kappa)))
                if np.any(dts > 0):
                    z6 = ((dx + 1j * dy) / d) ** 6  # exp(6 i phi)
                    w = np.exp(1j * rng.uniform(0, 2 * np.pi, n)).astype(np.complex64)
                    cos6 = (z6 * w[:, None, None]).real
                    ring = ring * (1.0 + _col(dts) * ((1.0 + cos6) ** 2 / 1.5 - 1.0))
            return ring
        if pattern == "nucleus":
            cx, cy, r, th, el, hm, ph = geom
            lobes = np.clip(np.rint(p["lobes"]), 1, 4).astype(int)
            ecc = p["eccentricity"] * 0.45 * r
            ncx, ncy = cx + ecc * np.cos(th), cy + ecc * np.sin(th)
            dx = self.X - _col(ncx)
            dy = self.Y - _col(ncy)
            d = np.sqrt(dx * dx + dy * dy) + np.float32(1e-6)
            # k-lobed outline 1 + A cos(k t + rot): a bilobed / multi-lobed (fragmenting) nucleus;
            # the radius is rescaled so that the area does not depend on the number of lobes
            amp = np.where(lobes > 1, _LOBE_DEPTH, 0.0)
            rn = r * p["size"] / np.sqrt(1.0 + amp**2 / 2)
            spin = np.exp(-1j * rng.uniform(0, 2 * np.pi, n)).astype(np.complex64)[:, None, None]
            z = (dx + 1j * dy) / d * spin
            zk = np.ones_like(z)
            cosk = np.zeros(z.shape, np.float32)
            for k in range(1, 5):
                zk = zk * z
                cosk += zk.real * _col(lobes == k)
            boundary = 1.0 + _col(amp) * cosk
            rho = d / (_col(rn) * boundary)
            out = self.soft(rho, _col(rn), 0.6)
            tex = self.field(rng, n, np.full(n, 0.8 * u))
            return out * np.maximum(1.0 + _col(p["texture"]) * tex, 0.0)
        if pattern == "diffuse":
            cx, cy = geom[0], geom[1]
            sig = _col(p["extent"] * self.size)
            env = np.exp(-((self.X - _col(cx)) ** 2 + (self.Y - _col(cy)) ** 2) / (2 * sig**2))
            sp = _col(p["speckle"])
            speck = np.exp(sp * rng.standard_normal((n, self.size, self.size), dtype=np.float32) - sp**2 / 2)
            return (0.5 * env * speck).astype(np.float32)
        if pattern == "spots":
            cx, cy, r = geom[0], geom[1], geom[2]
            count = np.clip(np.rint(p["count"]), 0, 6).astype(int)
            out = np.zeros((n, self.size, self.size), np.float32)
            sig = _col(p["size"] * 1.3 * u)
            for j in range(6):
                rad = r * 0.85 * np.clip(p["spread"] + rng.normal(0, 0.12, n), 0.0, 1.0)
                a = rng.uniform(0, 2 * np.pi, n)
                sx, sy = cx + rad * np.cos(a), cy + rad * np.sin(a)
                d2 = (self.X - _col(sx)) ** 2 + (self.Y - _col(sy)) ** 2
                out += np.exp(-d2 / (2 * sig**2)) * _col(j < count)
            return out
        raise AssertionError(pattern)  # pragma: no cover - validated earlier


def _resolve_preset(preset: str | Mapping[str, Any]) -> tuple[str, dict]:
    if isinstance(preset, str):
        if preset not in SYNTHETIC_PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; presets: {sorted(SYNTHETIC_PRESETS)}")
        return preset, _normalize_spec(SYNTHETIC_PRESETS[preset])
    if isinstance(preset, Mapping):
        return "custom", _normalize_spec(preset)
    raise TypeError(f"preset must be a preset name (str) or a spec mapping, got {type(preset).__name__}")


def _seed_sequence(random_state: Any) -> tuple[np.random.SeedSequence, Any]:
    if random_state is None:
        ss = np.random.SeedSequence()
        return ss, ss.entropy
    if isinstance(random_state, (bool, np.bool_)):
        raise TypeError("random_state must be an int, a numpy SeedSequence/Generator or None, got a bool")
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}")
        return np.random.SeedSequence(int(random_state)), int(random_state)
    if isinstance(random_state, np.random.SeedSequence):
        return random_state, random_state.entropy
    if isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(0, 2**63 - 1))
        return np.random.SeedSequence(seed), seed
    raise TypeError(
        f"random_state must be an int, a numpy SeedSequence/Generator or None, got {type(random_state).__name__}"
    )


def make_synthetic(
    preset: str | Mapping[str, Any] = "default",
    *,
    n_samples: int | None = None,
    image_size: int | None = None,
    random_state: Any = 0,
) -> IFCDataset:
    """Generate a synthetic IFC data set whose channel relevance is known.

    Parameters
    ----------
    preset : str or mapping
        Name of a preset in :data:`SYNTHETIC_PRESETS` (``"default"``,
        ``"apoptotic"``, ``"synapse"``, ``"wbc"``, ``"panel20"``, and
        ``"artefact"``: the default preset with a planted acquisition artefact,
        a brighter BF border in one class) or a spec of the same form (copy one
        with ``copy.deepcopy`` and edit it).  A spec may list ``artefacts``:
        ``{"kind": "border" | "offset", "channel": name, "classes": [names],
        "amount": value added, "width": border pixels}``, applied to the
        recorded images of those classes after the noise (not biology: the
        planted relevance ignores them; they are recorded in the provenance).
    n_samples : int, optional
        Number of cells; default from the preset.  Classes are allocated
        exactly in proportion to the preset's ``class_weights`` (largest
        remainder), then shuffled.
    image_size : int, optional
        Side length in pixels (>= 16); default from the preset.  Cell sizes
        and texture scales follow the image size.
    random_state : int, numpy Generator / SeedSequence or None
        Same value -> identical data.  ``None`` draws fresh entropy (recorded in
        ``provenance["seed"]`` so the data can be regenerated).

    Returns
    -------
    IFCDataset
        float32 images ``(N, C, H, W)`` (finite, non-negative), integer labels,
        channel and class names, stain-free flags, provenance and a
        :class:`~pxpermute.datasets.GroundTruth` with the planted relevance
        (rule in the module docstring and in ``ground_truth.notes``).

    Examples
    --------
    >>> ds = make_synthetic("apoptotic", n_samples=100, random_state=1)
    >>> ds.images.shape, ds.channel_names, ds.stain_free.tolist()
    ((100, 2, 32, 32), ['BF', 'FL'], [True, False])
    >>> ds.ground_truth.relevance.round(2).tolist()
    [0.43, 0.62]
    """
    name, spec = _resolve_preset(preset)
    rel = _planted_relevance(spec)
    for ch, r in zip(spec["channels"], rel):
        if ch["role"] in ("shape", "texture", "marker", "intensity") and r <= 0:
            raise ValueError(
                f"channel {ch['name']!r} has role {ch['role']!r} but renders nothing that depends on the class; "
                "bind one of its parameters, its cells or (intensity) its gain to a factor, or call it 'noise'"
            )
    if n_samples is None:
        n_samples = int(spec["n_samples"])
    if isinstance(n_samples, (bool, np.bool_)) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if image_size is None:
        image_size = int(spec["image_size"])
    if isinstance(image_size, (bool, np.bool_)) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if not 16 <= image_size <= 512:
        raise ValueError(f"image_size must lie in [16, 512] pixels, got {image_size}")
    n, size = int(n_samples), int(image_size)
    ss, seed = _seed_sequence(random_state)
    design_ss, render_ss = ss.spawn(2)
    rng = np.random.default_rng(design_ss)

    weights = np.asarray(spec["class_weights"])
    labels = np.repeat(np.arange(len(weights)), _allocate(n, weights))
    rng.shuffle(labels)
    tables = spec["_tables"]
    levels = {f: _draw_levels(t, labels, rng) for f, t in sorted(tables.items())}
    geom = _Geometry(spec, levels, n, size, rng)

    channels = spec["channels"]
    names = [c["name"] for c in channels]
    # per-channel per-sample parameters (drawn once, class-independent randomness included)
    per_ch: list[dict[str, Any]] = []
    for ch in channels:
        if ch["role"] == "redundant":
            per_ch.append({})
            continue
        p = {k: _value(v, levels, n, rng) for k, v in PATTERNS[ch["pattern"]].items()}
        p.update({k: _value(v, levels, n, rng) for k, v in ch["params"].items()})
        gain = _value(ch["gain"], levels, n, rng) * np.exp(rng.normal(0, ch["gain_jitter"], n))
        cells = ch["cells"]
        if cells == "reference":
            mask = None
        elif cells == "all":
            mask = (1 << geom.n_slots) - 1
        else:
            mask = np.asarray(cells["values"], dtype=int)[levels[cells["factor"]]]
        per_ch.append({"p": p, "gain": gain, "mask": mask})

    images = np.empty((n, len(channels), size, size), np.float32)
    renderer = _Renderer(size)
    sources = {c["source"] for c in channels if c["role"] == "redundant"}
    for chunk_i, start in enumerate(range(0, n, _CHUNK)):
        idx = slice(start, min(n, start + _CHUNK))
        m = idx.stop - idx.start
        crng = np.random.default_rng(
            np.random.SeedSequence(render_ss.entropy, spawn_key=(*render_ss.spawn_key, chunk_i))
        )
        clean: dict[str, np.ndarray] = {}
        for ci, ch in enumerate(channels):
            if ch["role"] == "redundant":
                continue
            info = per_ch[ci]
            p = {k: v[idx] for k, v in info["p"].items()}
            pattern = ch["pattern"]
            if info["mask"] is None:
                sig = renderer.render(pattern, geom.reference(idx), p, geom.psi[idx], crng)
            else:
                mask = info["mask"][idx]
                sig = np.zeros((m, size, size), np.float32)
                for s in range(geom.max_slots):
                    sel = np.nonzero((mask >> s) & 1)[0]
                    if sel.size == m:
                        sig += renderer.render(pattern, geom.slot(s, idx), p, geom.psi[idx], crng)
                    elif sel.size:
                        g = tuple(a[..., sel] for a in geom.slot(s, idx))
                        ps = {k: v[sel] for k, v in p.items()}
                        sig[sel] += renderer.render(pattern, g, ps, geom.psi[idx][sel], crng)
            gain = _col(info["gain"][idx])
            if pattern == "brightfield":
                img = ch["background"] * gain * (1.0 - np.clip(sig, 0.0, 0.85))
            else:
                img = ch["background"] + gain * sig
            if ch["name"] in sources:
                clean[ch["name"]] = img
            images[idx, ci] = _add_noise(img, ch, crng)
        for ci, ch in enumerate(channels):
            if ch["role"] == "redundant":
                img = clean[ch["source"]] * ch["copy_gain"]
                images[idx, ci] = _add_noise(img, ch, crng)

    # acquisition artefacts (added to the recorded image, after the noise)
    for art in spec["artefacts"]:
        ci = names.index(art["channel"])
        sel = np.flatnonzero(np.isin(labels, [list(spec["classes"]).index(c) for c in art["classes"]]))
        if art["kind"] == "offset":
            region = np.ones((size, size), bool)
        else:
            wd = min(int(art["width"]), size // 2)
            region = np.zeros((size, size), bool)
            region[:wd] = region[-wd:] = True
            region[:, :wd] = region[:, -wd:] = True
        for start in range(0, sel.size, _CHUNK):
            rows = sel[start : start + _CHUNK]
            block = images[rows, ci]
            block[:, region] += np.float32(art["amount"])
            images[rows, ci] = np.maximum(block, 0.0)

    gt = GroundTruth(rel, _roles(spec), _notes(spec, rel, name))
    provenance = {
        "source": "synthetic",
        "name": f"synthetic-{name}",
        "generator": "pxpermute.datasets.synthetic.make_synthetic",
        "generator_version": GENERATOR_VERSION,
        "preset": name,
        "seed": seed,
        "n_samples": n,
        "image_size": size,
        "description": spec["description"],
    }
    if "mirrors" in spec:
        provenance["mirrors"] = spec["mirrors"]
    if spec["artefacts"]:
        provenance["artefacts"] = copy.deepcopy(spec["artefacts"])
    return IFCDataset(
        images,
        labels,
        channel_names=names,
        class_names=list(spec["classes"]),
        stain_free=[bool(c["stain_free"]) for c in channels],
        ground_truth=gt,
        provenance=provenance,
        name=f"synthetic-{name}",
    )


def _add_noise(img: np.ndarray, ch: dict, rng: np.random.Generator) -> np.ndarray:
    std = ch["read_noise"] + ch["shot_noise"] * np.sqrt(np.maximum(img, 0.0))
    out = img + std * rng.standard_normal(img.shape, dtype=np.float32)
    return np.maximum(out, 0.0, out=out).astype(np.float32, copy=False)
