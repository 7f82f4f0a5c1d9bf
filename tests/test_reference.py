"""Loaders of the published PXPermute reference outputs, on the real files (PXPERMUTE_DATA_DIR; see conftest)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pxpermute.datasets import (
    load_reference_best_channels,
    load_reference_channel_importance,
    load_reference_k_ablation,
    load_reference_performance,
    load_reference_remove_and_retrain,
    load_reference_run_time,
    load_reference_stain_free,
)
from pxpermute.datasets._download import DataIntegrityError, DataUnavailableError, sha256sum
from pxpermute.datasets.reference import REFERENCE_COMMIT, REFERENCE_DATASETS, REFERENCE_REGISTRY, fetch_reference_file


@pytest.fixture(scope="module")
def root(real_data_dir) -> Path:
    """The data folder holding every published reference file."""
    return real_data_dir(*(entry.relpath for entry in REFERENCE_REGISTRY.values()))


@pytest.fixture(scope="module")
def REF(root) -> Path:
    return root / "pxpermute_reference"


@pytest.fixture(scope="module")
def KW(root) -> dict:
    return dict(data_dir=root, download=False)


def test_registry_matches_the_real_files(REF, root):
    on_disk = {
        p.relative_to(root).as_posix()
        for p in REF.rglob("*")
        if p.is_file() and not p.name.startswith("LICENSE") and not p.name.endswith(".sha256-ok")
    }
    assert {e.relpath for e in REFERENCE_REGISTRY.values()} == on_disk
    for repo_path, entry in REFERENCE_REGISTRY.items():
        assert entry.url == f"https://github.com/marrlab/pxpermute/raw/{REFERENCE_COMMIT}/{repo_path}"
        assert sha256sum(root / entry.relpath) == entry.sha256, repo_path


def test_channel_importance_is_the_published_table_in_long_form(KW, REF):
    df = load_reference_channel_importance(**KW)
    assert list(df.columns) == ["dataset", "fold", "run", "channel_index", "channel", "method", "importance"]
    assert set(df["dataset"]) == set(REFERENCE_DATASETS)
    for ds in REFERENCE_DATASETS:
        raw = pd.read_csv(REF / ds / "channel_importance.csv")
        methods = [c for c in raw.columns if c not in ("fold", "channel")]
        sub = df[df["dataset"] == ds]
        assert len(sub) == len(raw) * len(methods)
        assert set(sub["method"]) == set(methods)
        for m in methods:
            np.testing.assert_allclose(sub.loc[sub["method"] == m, "importance"].to_numpy(), raw[m].to_numpy())
        # channel_index follows the order channels are listed in
        names = list(dict.fromkeys(raw["channel"]))
        assert (sub["channel"].to_numpy() == np.asarray(names)[sub["channel_index"].to_numpy()]).all()


def test_duplicate_fold_blocks(KW, REF):
    keep = load_reference_channel_importance("synapse", methods=["PXPermute"], **KW)
    assert keep.groupby("fold").size().to_dict() == {1: 16, 2: 8, 3: 8, 4: 8, 5: 8}
    assert sorted(keep.loc[keep["fold"] == 1, "run"].unique()) == [0, 1]
    first = load_reference_channel_importance("synapse", methods=["PXPermute"], duplicate_folds="first", **KW)
    last = load_reference_channel_importance("synapse", methods=["PXPermute"], duplicate_folds="last", **KW)
    raw = pd.read_csv(REF / "synapse_formation" / "channel_importance.csv")
    fold1 = raw[raw["fold"] == 1]["PXPermute"].to_numpy()
    np.testing.assert_allclose(first.loc[first["fold"] == 1, "importance"], fold1[:8])
    np.testing.assert_allclose(last.loc[last["fold"] == 1, "importance"], fold1[8:])
    assert len(first) == len(last) == 40
    with pytest.raises(ValueError, match="duplicate_folds"):
        load_reference_channel_importance("synapse", duplicate_folds="mean", **KW)


def test_normalize_is_per_method_min_max(KW):
    raw = load_reference_channel_importance("white_blood_cells", **KW)
    norm = load_reference_channel_importance("wbc", normalize=True, **KW)
    for m, g in norm.groupby("method"):
        assert g["importance"].min() == pytest.approx(0) and g["importance"].max() == pytest.approx(1)
        r = raw.loc[raw["method"] == m, "importance"].to_numpy()
        assert (np.argsort(g["importance"].to_numpy(), kind="stable") == np.argsort(r, kind="stable")).all()


def test_performance_and_best_channels(KW, REF):
    perf = load_reference_performance(**KW)
    assert perf.groupby("dataset")["fold"].apply(sorted).to_dict() == {d: [1, 2, 3, 4, 5] for d in REFERENCE_DATASETS}
    assert perf[["f1_micro", "f1_macro", "accuracy"]].notna().all().all()
    raw = pd.read_csv(REF / "white_blood_cells" / "performance_with_all_channels.csv").dropna()
    np.testing.assert_allclose(perf.loc[perf["dataset"] == "white_blood_cells", "f1_macro"], raw["f1_macro"])
    best = load_reference_best_channels("apoptotic", **KW)
    assert (best.groupby("method")["fold"].apply(list) == [[1, 2, 3, 4, 5]] * best["method"].nunique()).all()
    raw = pd.read_csv(REF / "apoptotic_cells" / "results_with_best_channels.csv")
    np.testing.assert_allclose(best["f1_macro"], raw["f1_macro"])


def test_remove_and_retrain_panels(KW):
    df = load_reference_remove_and_retrain(**KW)
    assert set(df["dataset"]) == set(REFERENCE_DATASETS)
    n_total = df.groupby("dataset")["n_channels"].transform("max")
    assert (df["n_channels"] + df["n_removed"] == n_total).all()
    assert (df["channels"].str.count(",") + 1 == df["n_channels"]).all()
    syn = df[(df["dataset"] == "synapse_formation") & (df["n_removed"] == 0)]
    assert (syn["channels"] == "BF,Antibody,CD18,F-Actin,MHCII,CD3,P-CD3zeta,Live-Dead").all()


def test_stain_free_panels(KW):
    df = load_reference_stain_free(**KW)
    assert set(df["dataset"]) == {"synapse_formation", "white_blood_cells"}
    sf = df[df["panel"] == "stainfree"].groupby("dataset")["channels"].unique()
    assert list(sf["synapse_formation"]) == ["BF"]
    assert list(sf["white_blood_cells"]) == ["BF1,DF,BF2"]
    with pytest.raises(ValueError, match="no such table for 'apoptotic_cells'"):
        load_reference_stain_free("apoptotic", **KW)


def test_k_ablation_ranks_follow_the_importances(KW):
    df = load_reference_k_ablation(**KW)
    assert df.groupby("dataset")["fold"].nunique().to_dict() == {
        "apoptotic_cells": 5, "synapse_formation": 5, "white_blood_cells": 2}
    assert {5, 100, 1000} <= set(df["k"])
    for _, g in df.groupby(["dataset", "fold", "k"]):
        by_rank = g.sort_values("rank")["channel_index"].tolist()
        by_value = g.sort_values("importance", ascending=False)["channel_index"].tolist()
        assert by_rank == by_value
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))


def test_run_time(KW, REF):
    df = load_reference_run_time(**KW)
    assert len(df) == 3 * 2 * 5
    raw = pd.read_csv(REF / "run_time.csv")
    wbc = df[(df["dataset"] == "white_blood_cells") & (df["step"] == "pxpermute")]
    np.testing.assert_allclose(wbc["seconds"], raw.loc[raw["method"] == "pxpermute", "white_blood_cell"])
    assert set(load_reference_run_time("synapse", **KW)["dataset"]) == {"synapse_formation"}


def test_bad_dataset_names(KW):
    with pytest.raises(ValueError, match="unknown reference data set 'jurkat'"):
        load_reference_performance("jurkat", **KW)
    with pytest.raises(TypeError, match="dataset must be a name"):
        load_reference_performance([3], **KW)
    with pytest.raises(ValueError, match="unknown method"):
        load_reference_channel_importance("apoptotic", methods=["SHAP"], **KW)
    with pytest.raises(ValueError, match="unknown reference file"):
        fetch_reference_file("nope.csv", **KW)


def test_corrupted_and_missing_files(root, tmp_path):
    entry = REFERENCE_REGISTRY["run_time.csv"]
    target = tmp_path / entry.relpath
    target.parent.mkdir(parents=True)
    shutil.copyfile(root / entry.relpath, target)
    target.write_text(target.read_text().replace("389", "388"))
    with pytest.raises(DataIntegrityError, match="corrupted or truncated"):
        load_reference_run_time(data_dir=tmp_path, download=False)
    with pytest.raises(DataUnavailableError, match="marrlab/pxpermute/raw"):
        load_reference_performance("synapse", data_dir=tmp_path, download=False)


def test_sample_image_is_fetchable(KW, root):
    path = fetch_reference_file("sample_image/sample_image.h5", **KW)
    assert path == root / "pxpermute_reference" / "sample_image.h5"
