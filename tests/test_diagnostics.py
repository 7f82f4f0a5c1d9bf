"""Data diagnostics (pxpermute.diagnostics), the planted-artefact preset and duplicate dropping in the loaders.

Real-data tests find the cell-cycle montages through PXPERMUTE_DATA_DIR (conftest's ``real_data_dir``)
and skip with one line naming the file and the variable when they are not there.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pxpermute.datasets import IFCDataset, make_synthetic
from pxpermute.datasets._dedup import duplicate_mask
from pxpermute.diagnostics import CHECKS, DiagnosticsReport, ResultFileError, check_dataset

CLEAN_PRESETS = ("default", "apoptotic", "wbc", "synapse")


def _small(preset: str, n: int = 600, seed: int = 0) -> IFCDataset:
    return make_synthetic(preset, n_samples=n, random_state=seed)


# -- the planted artefact ------------------------------------------------------------------------------
def test_artefact_preset_is_the_default_data_plus_a_brighter_border_in_one_class():
    clean = _small("default")
    art = _small("artefact")
    np.testing.assert_array_equal(clean.labels, art.labels)
    k = art.class_names.index("elongated")
    bf = art.channel_names.index("BF")
    diff = art.images - clean.images
    ring = np.zeros((32, 32), bool)
    ring[:3] = ring[-3:] = True
    ring[:, :3] = ring[:, -3:] = True
    in_class = art.labels == k
    np.testing.assert_allclose(diff[in_class][:, bf][:, ring], 0.06, atol=1e-5)
    assert np.all(diff[in_class][:, bf][:, ~ring] == 0)
    assert np.all(diff[~in_class] == 0)
    others = [c for c in range(art.n_channels) if c != bf]
    assert np.all(diff[:, others] == 0)
    assert art.provenance["artefacts"][0]["classes"] == ["elongated"]
    np.testing.assert_array_equal(art.ground_truth.relevance, clean.ground_truth.relevance)


def test_artefact_spec_is_validated():
    import copy

    from pxpermute.datasets.synthetic import SYNTHETIC_PRESETS

    spec = copy.deepcopy(SYNTHETIC_PRESETS["default"])
    spec["artefacts"] = [{"kind": "border", "channel": "GFP", "classes": ["round"], "amount": 0.1}]
    with pytest.raises(ValueError, match="channel must name one of"):
        make_synthetic(spec, n_samples=20)
    spec["artefacts"] = [{"kind": "glow", "channel": "BF", "classes": ["round"], "amount": 0.1}]
    with pytest.raises(ValueError, match="kind must be one of"):
        make_synthetic(spec, n_samples=20)
    spec["artefacts"] = [{"channel": "BF", "classes": ["nope"], "amount": 0.1}]
    with pytest.raises(ValueError, match="classes must name"):
        make_synthetic(spec, n_samples=20)
    spec["artefacts"] = [{"kind": "offset", "channel": "DNA", "classes": "round", "amount": 0.5}]
    ds = make_synthetic(spec, n_samples=60, random_state=1)
    base = make_synthetic("default", n_samples=60, random_state=1)
    dna = ds.channel_names.index("DNA")
    sel = ds.labels == 0
    np.testing.assert_allclose(ds.images[sel, dna] - base.images[sel, dna], 0.5, atol=1e-5)


def test_planted_border_artefact_is_flagged_as_a_shortcut():
    report = check_dataset(_small("artefact"), random_state=0)
    sc = report.findings[report.findings["check"] == "shortcut"]
    flagged = set(zip(sc["class"], sc["channel"]))
    assert ("elongated", "BF") in flagged
    # no other single channel: the rest can only be the combination of all rings (a consequence of BF's)
    assert {(k, c) for k, c in flagged if c != "all"} == {("elongated", "BF")}
    row = report.shortcut_scores.query("features == 'border' and `class` == 'elongated' and channel == 'BF'")
    assert float(row["auc"].iloc[0]) >= 0.9 and float(row["gain"].iloc[0]) >= 0.3


@pytest.mark.parametrize("preset", CLEAN_PRESETS)
def test_clean_presets_raise_no_shortcut(preset):
    report = check_dataset(_small(preset), random_state=0, checks=["shortcut"])
    assert "shortcut" not in set(report.findings["check"]), report.summary()
    border = report.shortcut_scores
    # every test misses the rule clearly on one side: low AUC, or no gain over the image centre
    strong = border[border["auc"] >= report.info["shortcut_auc"]]
    assert (strong["gain"] < 0.03).all(), strong


@pytest.mark.slow
def test_shortcut_rule_holds_over_seeds():
    """The planted artefact is flagged and the clean data are not, for other seeds too."""
    for seed in (1, 2):
        clean = check_dataset(_small("default", 500, seed), random_state=seed, checks=["shortcut"])
        assert not clean.shortcut_scores["flagged"].any()
        art = check_dataset(_small("artefact", 500, seed), random_state=seed, checks=["shortcut"])
        s = art.shortcut_scores.query("`class` == 'elongated' and channel == 'BF'")
        assert bool(s["flagged"].iloc[0]) and float(s["auc"].iloc[0]) > 0.85 and float(s["gain"].iloc[0]) > 0.2


def test_intensity_only_channel_is_reported_as_information_not_as_shortcut():
    report = check_dataset(_small("default"), random_state=0)
    info = report.findings[report.findings["check"] == "intensity_shortcut"]
    # Marker's class information is its total intensity (planted): the last class is recognized from it
    assert ("elongated+fragmented+marker", "Marker") in set(zip(info["class"], info["channel"]))
    assert set(info["severity"]) == {"info"}


# -- cell-level checks ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    """Synthetic data with one of every cell-level problem, at known indices."""
    ds = make_synthetic("apoptotic", n_samples=240, random_state=3)
    x = ds.images.copy()
    y = ds.labels.copy()
    x[10] = x[3]  # exact duplicate
    x[20] = x[5]
    x[20, :, :, 0] += 0.02  # near duplicate: first pixel column differs (as in the real data)
    x[30] = np.tile(x[30][:, :1, :], (1, x.shape[2], 1))  # padding strip: all rows identical
    x[40, 1] = 0.25  # constant channel in a real cell
    x[50, 0, 4, 4] = np.nan  # NaN
    top = float(x[:, 1].max()) + 1.0
    x[60:66, 1, :8, :8] = top  # saturated: 6 cells with 64 pixels at the channel's maximum
    planted_rows = [3, 5, 10, 20, 30, 40, 50] + list(range(60, 66))
    y[planted_rows] = 0
    keep = np.ones(len(y), bool)
    keep[np.flatnonzero(y == 1)[5:]] = False  # class 1 keeps 5 cells: imbalanced
    idx = np.flatnonzero(keep)
    remap = {old: new for new, old in enumerate(idx)}
    data = IFCDataset(x[idx], y[idx], channel_names=ds.channel_names, class_names=ds.class_names, name="planted")
    return data, remap


def test_cell_level_checks_find_what_was_planted(planted):
    ds, at = planted
    report = check_dataset(ds, random_state=0, checks=[c for c in CHECKS if "shortcut" not in c])
    f = report.findings
    dup = f[f["check"] == "duplicate"]
    assert [tuple(c) for c in dup["cells"]] == [(at[3], at[10])]
    near = f[f["check"] == "near_duplicate"]
    assert [tuple(c) for c in near["cells"]] == [(at[5], at[20])]
    assert "columns 0-0" in near["detail"].iloc[0]
    assert at[30] in f[f["check"] == "padding"]["cells"].iloc[0]
    const = f[f["check"] == "constant_channel"]
    assert list(const["channel"]) == ["FL"] and const["cells"].iloc[0] == (at[40],)
    nan = f[f["check"] == "nonfinite"]
    assert list(nan["channel"]) == ["BF"] and nan["cells"].iloc[0] == (at[50],)
    sat = f[f["check"] == "saturated"]
    assert list(sat["channel"]) == ["FL"] and set(sat["cells"].iloc[0]) == {at[i] for i in range(60, 66)}
    imb = f[f["check"] == "class_imbalance"]
    assert list(imb["class"]) == [ds.class_names[1]]
    assert set(report.cells()) == {at[10], at[20], at[30], at[40], at[50]}
    assert set(report.cells("saturated")) == {at[i] for i in range(60, 66)}
    assert at[3] not in report.cells() and at[3] in report.cells(keep_first=False)


def test_duplicates_across_splits(planted):
    ds, at = planted
    n = len(ds)
    train = np.array([i for i in range(n) if i not in (at[10], at[20])])
    test = np.array([at[10], at[20]])
    report = check_dataset(ds, splits={"train": train, "test": test}, checks=["duplicate", "near_duplicate"])
    across = report.findings[report.findings["check"] == "duplicate_across_splits"]
    assert sorted(tuple(c) for c in across["cells"]) == [(at[3], at[10]), (at[5], at[20])]
    assert set(across["severity"]) == {"error"}
    # CV folds as (train, test) pairs: a fold that keeps both copies together is fine
    folds = [(train, test), (np.arange(n), np.array([], dtype=int))]
    report = check_dataset(ds, splits=folds, checks=["duplicate"])
    across = report.findings[report.findings["check"] == "duplicate_across_splits"]
    assert len(across) == 1 and "split set 0" in across["detail"].iloc[0]


def test_clean_synthetic_data_have_no_cell_level_findings():
    report = check_dataset(_small("default", 300), checks=["nonfinite", "duplicate", "near_duplicate", "padding",
                                                             "saturation"])
    # the generator clips at 0 (non-negative images): reported as information, nothing else
    assert set(report.findings["check"]) <= {"clipped_low"}
    assert set(report.findings["severity"]) <= {"info"}


# -- result protocol ----------------------------------------------------------------------------------------
def test_report_protocol_roundtrip(planted, tmp_path):
    ds, _ = planted
    report = check_dataset(ds, random_state=0)
    frame = report.to_frame()
    assert {"check", "class", "channel", "score", "detail"} <= set(frame.columns)
    text = report.summary()
    assert "duplicate" in text and "planted" in text and text.count("\n") >= len(frame)
    assert max(map(len, text.splitlines()[1:])) <= 100  # findings wrap: a book page or terminal does not cut them
    path = report.save(tmp_path / "diag")
    back = DiagnosticsReport.load(path)
    pd.testing.assert_frame_equal(back.findings, report.findings, check_dtype=False)
    pd.testing.assert_frame_equal(back.shortcut_scores, report.shortcut_scores, check_dtype=False)
    assert back.info == json.loads(json.dumps(report.info))
    np.testing.assert_array_equal(back.cells(), report.cells())
    ax = report.plot()
    assert "planted" in ax.get_title() and "seed 0" in ax.get_title()
    ax2 = report.plot(features="intensity")
    assert ax2 is not None


def test_corrupted_report_file_raises_one_error_type(planted, tmp_path):
    ds, _ = planted
    path = check_dataset(ds, checks=["duplicate"]).save(tmp_path / "d")
    npz = Path(path).with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:-20])
    with pytest.raises(ResultFileError):
        DiagnosticsReport.load(path)
    with pytest.raises(ResultFileError):
        DiagnosticsReport.load(tmp_path / "missing")


def test_bad_input_is_refused_with_a_clear_message():
    x = np.zeros((10, 2, 16, 16), np.float32)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="unknown check"):
        check_dataset((x, y), checks=["typo"])
    with pytest.raises(TypeError, match="splits must be"):
        check_dataset((x, y), splits=5)
    with pytest.raises(ValueError, match="outside"):
        check_dataset((x, y), splits={"train": [0, 99]})
    with pytest.raises(ValueError, match="border must be"):
        check_dataset((x, y), border=8)
    with pytest.raises(ValueError, match="shortcut_auc"):
        check_dataset((x, y), shortcut_auc=0.3)
    with pytest.raises(TypeError, match="IFCDataset"):
        check_dataset("data.h5")
    with pytest.raises(ValueError, match="unknown check"):
        check_dataset((x, y), checks=["duplicate"]).cells("typo")


def test_duplicate_mask_keeps_first_copy():
    x = np.arange(30, dtype=np.uint16).reshape(5, 6)
    x[4] = x[0]
    x[2] = x[0]
    assert duplicate_mask(x).tolist() == [False, False, True, False, True]


# -- real data ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cc_root(real_data_dir):
    from pxpermute.datasets.cellcycle import CELLCYCLE_REGISTRY

    return real_data_dir(*(entry.relpath for entry in CELLCYCLE_REGISTRY.values()))


def test_cellcycle_loader_drops_the_exact_duplicate_by_default(cc_root):
    from pxpermute.datasets import load_cellcycle

    kept = load_cellcycle(data_dir=cc_root, download=False, drop_duplicates=False)
    dedup = load_cellcycle(data_dir=cc_root, download=False)
    assert len(kept) - len(dedup) == 1 == dedup.provenance["duplicates_dropped"]
    assert kept.provenance["duplicates_dropped"] == 0
    assert kept.class_counts()["Anaphase"] - dedup.class_counts()["Anaphase"] == 1
    assert not duplicate_mask(dedup.images).any()
    assert duplicate_mask(kept.images).sum() == 1
    # no two different cells share any single channel, so every channel subset drops the same cell
    for ch in ("BF", "DNA", "DF"):
        single = load_cellcycle(data_dir=cc_root, download=False, channels=[ch])
        np.testing.assert_array_equal(single.images[:, 0], dedup.images[:, dedup.channel_names.index(ch)])
    with pytest.raises(TypeError, match="drop_duplicates"):
        load_cellcycle(data_dir=cc_root, download=False, drop_duplicates="yes")


def test_embedded_sample_drops_the_duplicate_too():
    from pxpermute.datasets import load_cellcycle_sample

    kept = load_cellcycle_sample(drop_duplicates=False)
    dedup = load_cellcycle_sample()
    assert len(kept) - len(dedup) == dedup.provenance["duplicates_dropped"] == 1
    assert not duplicate_mask(dedup.images).any()


@pytest.mark.slow
def test_real_cellcycle_findings(cc_root):
    """What the diagnostics report on the real Jurkat data (kept duplicates)."""
    from pxpermute.datasets import load_cellcycle

    ds = load_cellcycle(data_dir=cc_root, download=False, drop_duplicates=False)
    report = check_dataset(ds, random_state=0)
    f = report.findings
    dup = f[f["check"] == "duplicate"]
    assert [tuple(c) for c in dup["cells"]] == [(3387, 3390)] and list(dup["class"]) == ["Anaphase"]
    near = f[f["check"] == "near_duplicate"]
    assert sorted(near["class"]) == ["Metaphase", "Telophase"]
    assert all("columns 0-0" in d for d in near["detail"])
    assert set(f[f["check"] == "class_imbalance"]["class"]) == {"Metaphase", "Anaphase", "Telophase"}
    assert "padding" not in set(f["check"]) and "nonfinite" not in set(f["check"])
    # no acquisition shortcut: the background of no class differs beyond what its cells show
    assert "shortcut" not in set(f["check"])
    # G1 is told by its total DNA intensity (DNA content): information, and invisible to pixel permutation
    info = f[f["check"] == "intensity_shortcut"]
    assert ("G1", "DNA") in set(zip(info["class"], info["channel"]))
    # darkfield: about a tenth of its pixels sit on 0
    low = f[f["check"] == "clipped_low"]
    assert "DF" in set(low["channel"])
    # duplicates land on both sides of a CV split when they are not dropped first
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(5, shuffle=True, random_state=42).split(np.zeros(len(ds)), ds.labels))
    across = check_dataset(ds, splits=folds, checks=["duplicate", "near_duplicate"]).findings
    assert (across["check"] == "duplicate_across_splits").any()


def test_mask_border_flattens_the_frame_and_removes_a_planted_shortcut():
    """mask_border sets the ring to the background just inside it, keeps the centre, and the planted frame is gone."""
    from pxpermute.diagnostics import mask_border

    art = _small("artefact")
    masked = mask_border(art, border=3)
    x, _ = art.get_batch(np.arange(20))
    xm, _ = masked.get_batch(np.arange(20))
    ring = np.zeros((32, 32), bool)
    ring[:3] = ring[-3:] = True
    ring[:, :3] = ring[:, -3:] = True
    np.testing.assert_array_equal(xm[..., ~ring], x[..., ~ring])
    assert np.all(np.ptp(xm[..., ring], axis=-1) == 0)  # one level per cell and channel
    inside = [np.median(x[0, 0, r:r + 3, c:c + 3]) for r, c in ((3, 3), (3, 26), (26, 3), (26, 26))]
    assert np.isclose(xm[0, 0, 0, 0], np.median(inside))  # the level just inside the ring's corners
    assert masked.provenance["border_masked"] == 3 and "masked" in masked.name
    assert "shortcut" in set(check_dataset(art, checks=["shortcut"]).findings["check"])
    assert "shortcut" not in set(check_dataset(masked, checks=["shortcut"]).findings["check"])
    with pytest.raises(ValueError, match="border"):
        mask_border(art, border=16)
