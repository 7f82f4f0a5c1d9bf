"""Tests of the synthetic IFC generator and its planted channel relevance."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pxpermute.datasets import (
    SYNTHETIC_PRESETS,
    GroundTruth,
    IFCDataset,
    expected_ranking,
    expected_relevance,
    make_synthetic,
)

PRESET_CHANNELS = {
    "default": ["BF", "DNA", "DNA-2", "Marker", "Noise", "Empty"],
    "artefact": ["BF", "DNA", "DNA-2", "Marker", "Noise", "Empty"],  # default + a planted border artefact
    "apoptotic": ["BF", "FL"],
    "synapse": ["BF", "Ab", "CD18", "F-actin", "MHCII", "CD3", "P-CD3zeta", "Live-Dead"],
    "wbc": ["BF1", "CD15", "SigL8", "CD14", "CD19", "DF", "CD3", "CD45", "BF2", "CD4", "CD56", "CD8"],
    "panel20": [f"M{i:02d}" for i in range(1, 21)],
}
PRESET_STAIN_FREE = {
    "default": {"BF"},
    "artefact": {"BF"},
    "apoptotic": {"BF"},
    "synapse": {"BF"},
    "wbc": {"BF1", "BF2", "DF"},
    "panel20": set(),
}
PRESET_SIZE_CLASSES = {
    "default": (32, 4), "artefact": (32, 4), "apoptotic": (32, 2), "synapse": (48, 9), "wbc": (32, 8), "panel20": (32, 6),
}


@pytest.fixture(scope="module")
def default_ds() -> IFCDataset:
    return make_synthetic("default", n_samples=1200, random_state=7)


@pytest.fixture(scope="module", params=sorted(PRESET_CHANNELS))
def small_preset(request) -> tuple[str, IFCDataset]:
    return request.param, make_synthetic(request.param, n_samples=180, random_state=3)


def _base(role: str) -> str:
    return role.split(":")[0]


# ----------------------------------------------------------------------------- structure


def test_presets_are_listed():
    assert set(SYNTHETIC_PRESETS) == set(PRESET_CHANNELS)


def test_preset_structure(small_preset):
    name, ds = small_preset
    size, k = PRESET_SIZE_CLASSES[name]
    assert isinstance(ds, IFCDataset)
    assert ds.images.dtype == np.float32
    assert ds.images.shape == (180, len(PRESET_CHANNELS[name]), size, size)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (180,)
    assert ds.channel_names == PRESET_CHANNELS[name]
    assert ds.n_classes == k and len(set(ds.class_names)) == k
    assert set(np.unique(ds.labels)) <= set(range(k))
    assert {c for c, sf in zip(ds.channel_names, ds.stain_free) if sf} == PRESET_STAIN_FREE[name]
    gt = ds.ground_truth
    assert isinstance(gt, GroundTruth)
    assert len(gt.relevance) == len(gt.roles) == ds.n_channels
    assert np.all(gt.relevance >= 0) and gt.relevance.max() <= 1.0
    assert gt.notes and all(ch in gt.notes for ch in ds.channel_names)
    assert ds.provenance["source"] == "synthetic"
    assert ds.provenance["preset"] == name
    assert ds.provenance["seed"] == 3
    assert ds.provenance["generator_version"]
    assert name in ds.name


def test_images_finite_nonnegative(small_preset):
    _, ds = small_preset
    assert np.all(np.isfinite(ds.images))
    assert ds.images.min() >= 0.0
    assert ds.images.max() > 0.5  # something is actually drawn


def test_roles_and_relevance_consistent(small_preset):
    _, ds = small_preset
    gt = ds.ground_truth
    for i, role in enumerate(gt.roles):
        base = _base(role)
        assert base in {"shape", "texture", "marker", "intensity", "redundant", "noise", "empty"}
        if base in ("noise", "empty"):
            assert gt.relevance[i] == 0
        else:
            assert gt.relevance[i] > 0, (ds.channel_names[i], role)
        if base == "redundant":
            src = role.split(":", 1)[1]
            assert src in ds.channel_names
            assert gt.relevance[i] == pytest.approx(0.5 * gt.relevance[ds.channel_names.index(src)])


def test_synapse_uninformative_channels():
    ds = make_synthetic("synapse", n_samples=20)
    roles = dict(zip(ds.channel_names, ds.ground_truth.roles))
    assert roles["Ab"] in ("empty", "noise") and roles["Live-Dead"] in ("empty", "noise")
    assert ds.ground_truth.relevance[ds.channel_names.index("Ab")] == 0


def test_panel20_has_six_informative_markers():
    gt = make_synthetic("panel20", n_samples=20).ground_truth
    assert gt.informative.sum() == 6


def test_default_relevance_follows_the_documented_rule():
    # classes (uniform) -> levels: BF separates {0} | {1,2,3}, DNA {0,1} | {2,3}, Marker {0,1,2} | {3};
    # relevance = I(Y; S) / H(Y) = H(S) / 2 bits because S is a function of the class
    h = lambda p: -sum(q * np.log2(q) for q in p if q > 0)  # noqa: E731
    gt = make_synthetic("default", n_samples=8).ground_truth
    expect = [h([0.25, 0.75]) / 2, h([0.5, 0.5]) / 2, h([0.5, 0.5]) / 4, h([0.25, 0.75]) / 2, 0, 0]
    np.testing.assert_allclose(gt.relevance, expect, atol=1e-5)
    assert gt.roles == ["shape", "shape", "redundant:DNA", "intensity", "noise", "empty"]


def test_expected_relevance_and_ranking():
    gt = make_synthetic("default", n_samples=8).ground_truth
    pix = expected_relevance(gt, perturbation="pixel")
    smp = expected_relevance(gt, perturbation="sample")
    assert pix[3] == 0 and smp[3] == gt.relevance[3] > 0
    np.testing.assert_array_equal(np.delete(pix, 3), np.delete(smp, 3))
    rank = expected_ranking(gt)
    assert sorted(rank) == list(range(6))
    assert np.all(np.diff(gt.relevance[rank]) <= 0)
    assert expected_ranking(gt, perturbation="pixel").index(3) > expected_ranking(gt).index(3)
    with pytest.raises(ValueError, match="perturbation"):
        expected_relevance(gt, perturbation="shuffle")
    with pytest.raises(TypeError, match="GroundTruth"):
        expected_relevance([0.1, 0.2])


# ----------------------------------------------------------------------------- randomness & balance


def test_deterministic_given_seed():
    a = make_synthetic("default", n_samples=150, random_state=11)
    b = make_synthetic("default", n_samples=150, random_state=11)
    c = make_synthetic("default", n_samples=150, random_state=12)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    # a Generator argument is accepted and recorded so the data can be regenerated
    d = make_synthetic("default", n_samples=30, random_state=np.random.default_rng(5))
    e = make_synthetic("default", n_samples=30, random_state=d.provenance["seed"])
    np.testing.assert_array_equal(d.images, e.images)


def test_more_samples_than_one_chunk_is_deterministic():
    a = make_synthetic("apoptotic", n_samples=2100, image_size=16, random_state=2)
    b = make_synthetic("apoptotic", n_samples=2100, image_size=16, random_state=2)
    np.testing.assert_array_equal(a.images, b.images)
    # the second chunk is not a copy of the first
    assert not np.array_equal(a.images[:50], a.images[1024:1074])


@pytest.mark.parametrize("name", sorted(PRESET_CHANNELS))
def test_class_balance_follows_weights(name):
    n = 997
    ds = make_synthetic(name, n_samples=n, image_size=16, random_state=0)
    w = np.asarray(SYNTHETIC_PRESETS[name]["class_weights"], float)
    counts = np.bincount(ds.labels, minlength=len(w))
    assert counts.sum() == n
    assert np.all(np.abs(counts - w / w.sum() * n) < 1.0)
    assert not np.all(np.diff(ds.labels) >= 0)  # shuffled, not sorted by class


def test_overrides_and_errors():
    ds = make_synthetic("synapse", n_samples=12, image_size=24)
    assert ds.images.shape == (12, 8, 24, 24)
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        make_synthetic("nope")
    with pytest.raises(ValueError, match="n_samples"):
        make_synthetic("default", n_samples=0)
    with pytest.raises(TypeError, match="n_samples"):
        make_synthetic("default", n_samples=2.5)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic("default", image_size=8)
    with pytest.raises(TypeError, match="random_state"):
        make_synthetic("default", n_samples=4, random_state="seed")
    with pytest.raises(TypeError, match="preset"):
        make_synthetic(3)


def test_custom_spec_and_validation():
    spec = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    spec["channels"] = spec["channels"][:2]
    ds = make_synthetic(spec, n_samples=16)
    assert ds.channel_names == ["BF", "DNA"] and ds.provenance["preset"] == "custom"
    assert SYNTHETIC_PRESETS["default"]["channels"][2]["name"] == "DNA-2"  # preset untouched

    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["channels"][4]["params"] = {"count": {"factor": "marker", "values": [1, 4]}}
    with pytest.raises(ValueError, match="must not depend on the class"):
        make_synthetic(bad, n_samples=4)
    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["channels"][3]["gain"] = 1.0
    with pytest.raises(ValueError, match="class-dependent gain"):
        make_synthetic(bad, n_samples=4)
    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["channels"][1]["params"] = {"lobes": {"factor": "nope", "values": [1, 3]}}
    with pytest.raises(ValueError, match="unknown factor"):
        make_synthetic(bad, n_samples=4)
    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["channels"][1]["params"] = {"petals": 3}
    with pytest.raises(ValueError, match="no parameter 'petals'"):
        make_synthetic(bad, n_samples=4)
    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["channels"][1]["params"] = {"lobes": 3}
    with pytest.raises(ValueError, match="renders nothing that depends on the class"):
        make_synthetic(bad, n_samples=4)
    bad = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    bad["factors"]["marker"] = [0, 1]
    with pytest.raises(ValueError, match="one entry per class"):
        make_synthetic(bad, n_samples=4)


# ----------------------------------------------------------------------------- planted signal


def _background(a: np.ndarray) -> np.ndarray:
    border = np.concatenate([a[:, 0, :], a[:, -1, :], a[:, :, 0], a[:, :, -1]], axis=1)
    return np.median(border, axis=1)


def _between_class_spread(a: np.ndarray, y: np.ndarray) -> float:
    """Weighted squared distance of the class-mean images from the overall mean image."""
    mean = a.mean(0)
    return float(sum((y == k).mean() * np.sum((a[y == k].mean(0) - mean) ** 2) for k in np.unique(y)))


def _normalized(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64) - _background(a)[:, None, None]
    return a / a.sum(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("name", ["default", "synapse", "wbc"])
def test_intensity_channel_pattern_is_class_independent(name):
    ds = make_synthetic(name, n_samples=900, image_size=32, random_state=4)
    roles = [_base(r) for r in ds.ground_truth.roles]
    rng = np.random.default_rng(0)
    c = roles.index("intensity")
    shape_c = roles.index("shape")
    y = ds.labels
    norm = _normalized(ds.images[:, c])
    null = [_between_class_spread(norm, rng.permutation(y)) for _ in range(20)]
    # the shape of the intensity channel does not tell classes apart beyond label-shuffling noise ...
    assert _between_class_spread(norm, y) < 1.5 * np.max(null)
    # ... while a shape channel's does (the statistic is sensitive)
    norm_s = _normalized(ds.images[:, shape_c])
    null_s = [_between_class_spread(norm_s, rng.permutation(y)) for _ in range(20)]
    assert _between_class_spread(norm_s, y) > 2.5 * np.max(null_s)
    # ... but its total intensity differs between classes
    total = (ds.images[:, c] - _background(ds.images[:, c])[:, None, None]).sum(axis=(1, 2))
    class_means = np.array([np.median(total[y == k]) for k in range(ds.n_classes)])
    assert class_means.max() > 1.5 * class_means.min()


def test_empty_channels_are_near_zero(small_preset):
    _, ds = small_preset
    for i, role in enumerate(ds.ground_truth.roles):
        if role == "empty":
            ch = ds.images[:, i]
            assert ch.mean() < 0.03
            assert np.percentile(ch, 99.9) < 0.1
            others = [j for j, r in enumerate(ds.ground_truth.roles) if r not in ("empty",)]
            assert ch.max() < 0.2 * max(ds.images[:, j].max() for j in others)


def _features(a: np.ndarray) -> np.ndarray:
    """Rotation-invariant summary features of one channel: intensity, moments, angular harmonics, radial profile."""
    a = a.astype(np.float64) - _background(a)[:, None, None]
    w = np.abs(a)  # brightfield cells are darker than the background
    n, h, wd = a.shape
    yy, xx = np.mgrid[:h, :wd].astype(float)
    tot = w.sum(axis=(1, 2)) + 1e-9
    cx = (w * xx).sum(axis=(1, 2)) / tot
    cy = (w * yy).sum(axis=(1, 2)) / tot
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    mxx = (w * dx * dx).sum(axis=(1, 2)) / tot
    myy = (w * dy * dy).sum(axis=(1, 2)) / tot
    mxy = (w * dx * dy).sum(axis=(1, 2)) / tot
    root = np.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
    l1, l2 = (mxx + myy) / 2 + root, (mxx + myy) / 2 - root
    d = np.sqrt(dx * dx + dy * dy)
    e1 = (dx + 1j * dy) / (d + 1e-9)  # exp(i phi)
    harm = [np.abs((w * e1**k).sum(axis=(1, 2))) / tot for k in (2, 3, 4)]
    radial = [(w * ((d >= r0) & (d < r0 + 2))).sum(axis=(1, 2)) / tot for r0 in range(0, 14, 2)]
    return np.column_stack([np.log1p(tot), a.std(axis=(1, 2)), np.sqrt(l1), np.sqrt(np.clip(l2, 0, None)),
                            l2 / (l1 + 1e-9), *harm, *radial])


def _cv_accuracy(f: np.ndarray, y: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    return float(cross_val_score(clf, f, y, cv=3).mean())


def test_informative_channels_carry_class_information(default_ds):
    ds = default_ds
    x, y = ds.images, ds.labels
    feats = {name: _features(x[:, i]) for i, name in enumerate(ds.channel_names)}

    def pair(name, classes):
        m = np.isin(y, classes)
        return _cv_accuracy(feats[name][m], y[m])

    # each informative channel separates the classes that differ only in its factor
    assert pair("BF", [0, 1]) > 0.9
    assert pair("DNA", [1, 2]) > 0.9
    assert pair("DNA-2", [1, 2]) > 0.8
    assert pair("Marker", [2, 3]) > 0.95
    # together they identify all four classes
    assert _cv_accuracy(np.hstack([feats["BF"], feats["DNA"], feats["Marker"]]), y) > 0.9
    # ... but no single one of them does
    for name in ("BF", "DNA", "Marker"):
        assert _cv_accuracy(feats[name], y) < 0.8
    # noise and empty channels are at chance level (4 balanced classes)
    assert _cv_accuracy(feats["Noise"], y) < 0.33
    assert _cv_accuracy(feats["Empty"], y) < 0.33


def test_pixel_permutation_destroys_shape_but_not_intensity_information(default_ds):
    """Features that are invariant to permuting pixels inside an image (sorted pixel values)
    keep the intensity-only channel's class information and lose the shape channels'."""
    ds = default_ds
    x, y = ds.images, ds.labels

    def sorted_pixels(c, classes):
        m = np.isin(y, classes)
        q = np.sort(x[m, c].reshape(m.sum(), -1), axis=1)[:, ::16]
        return _cv_accuracy(q, y[m])

    assert sorted_pixels(3, [2, 3]) > 0.95  # Marker: intensity only, survives permutation
    assert sorted_pixels(0, [0, 1]) < 0.65  # BF elongation: gone after permutation
    assert sorted_pixels(1, [1, 2]) < 0.7  # DNA lobes: gone after permutation


@pytest.mark.parametrize("name", ["apoptotic", "synapse", "wbc", "panel20"])
def test_other_presets_informative_vs_noise(name):
    ds = make_synthetic(name, n_samples=600, image_size=32, random_state=5)
    y = ds.labels
    chance = np.bincount(y).max() / len(y)
    roles = [_base(r) for r in ds.ground_truth.roles]
    feats = [_features(ds.images[:, i]) for i in range(ds.n_channels)]
    informative = [i for i, r in enumerate(roles) if r not in ("noise", "empty")]
    uninformative = [i for i, r in enumerate(roles) if r in ("noise", "empty")]
    assert _cv_accuracy(np.hstack([feats[i] for i in informative]), y) > chance + 0.3
    for i in uninformative:
        assert _cv_accuracy(feats[i], y) < chance + 0.07, ds.channel_names[i]
    if uninformative:
        assert _cv_accuracy(np.hstack([feats[i] for i in uninformative]), y) < chance + 0.07


def test_default_generates_quickly():
    import time

    make_synthetic("default", n_samples=50)  # warm-up
    t0 = time.process_time()
    make_synthetic("default")
    # CPU time, not wall time, so a busy machine does not fail the test; the target is well under 2 s
    assert time.process_time() - t0 < 2.0
