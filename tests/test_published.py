"""Published-data loaders on tiny files written in each exact format; no network access."""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pandas as pd
import pytest

from pxpermute.datasets import IFCDataset
from pxpermute.datasets import paper_numbers as pn
from pxpermute.datasets._download import DataIntegrityError, DataUnavailableError
from pxpermute.datasets.hdf5 import pad_or_crop, write_hdf5_dataset
from pxpermute.datasets.published import (
    APOPTOTIC_CLASSES,
    REGISTRY,
    SYNAPSE_CHANNELS,
    SYNAPSE_CLASSES,
    WBC_CHANNELS,
    WBC_CLASSES,
    fetch_sample_cell,
    load_apoptotic,
    load_scifai_cells,
    load_synapse,
    load_wbc,
)
from pxpermute.plotting import plot_montage


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails loudly unless a test replaces pooch.retrieve itself."""
    import pooch

    def refuse(*args, **kwargs):
        raise AssertionError(f"test tried to download {args[0] if args else kwargs}")

    monkeypatch.setattr(pooch, "retrieve", refuse)
    monkeypatch.delenv("PXPERMUTE_DATA_DIR", raising=False)


# -- writers for the published formats ----------------------------------------------
def write_x_m1(path: Path, n=12, *, hw=34, channel_last=False, channels=2, dtype=np.float32, y=None, x_ndim=4):
    """theislab/dali X_M1.h5 layout: X (images), y (0 apoptotic / 1 non-apoptotic), fnames."""
    rng = np.random.default_rng(0)
    shape = (n, hw, hw, channels) if channel_last else (n, channels, hw, hw)
    x = (rng.random(shape) * 1000).astype(dtype)
    if x_ndim == 3:
        x = x[:, 0]
    y = np.arange(n) % 2 if y is None else np.asarray(y)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh["X"] = x
        fh["y"] = y
        fh["fnames"] = np.array([f"cell_{i}.tif" for i in range(n)], dtype=h5py.string_dtype())
    return x, y


def write_cell(path: Path, image: np.ndarray, label: str | None):
    """scifAI per-cell layout: image H x W x C uint16, mask H x W x C, label (string scalar)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh["image"] = image
        fh["mask"] = (image > np.median(image)).astype(np.uint64)
        if label is not None:
            fh["label"] = label
    return path


def make_scifai_folder(root: Path, classes, n_channels, sizes, *, foreign_root="/pstore/data/DS4/synapse", extra_labels=()):
    """Cells in Experiment/Donor/condition folders + metadata CSV whose paths point to another machine."""
    rng = np.random.default_rng(5)
    rows, images = [], {}
    labels = list(classes) + list(extra_labels)
    for i, (h, w) in enumerate(sizes):
        label = labels[i % len(labels)]
        rel = Path(f"Experiment_{1 + i % 2}") / "Donor_1" / ("+SEA" if i % 3 else "-SEA") / f"cells_{1000 + i}.h5"
        img = rng.integers(20, 4000, (h, w, n_channels)).astype(np.uint16)
        write_cell(root / rel, img, None if label == "<unlabeled>" else label)
        images[str(rel)] = img
        rows.append({"file": f"{foreign_root}/{rel.as_posix()}", "experiment": rel.parts[0], "donor": "Donor_1",
                     "condition": rel.parts[2], "object_number": 1000 + i,
                     "set": ["train", "validation", "test"][i % 3] if label != "<unlabeled>" else "unlabeled",
                     "label": "-1" if label == "<unlabeled>" else label})
    meta = pd.DataFrame(rows)
    meta.to_csv(root / "metadata.csv", index=False)
    return meta, images


# -- apoptotic -----------------------------------------------------------------------
def test_apoptotic_from_data_dir(tmp_path):
    x, y = write_x_m1(tmp_path / "apoptotic_cells" / "X_M1.h5")
    ds, meta = load_apoptotic(data_dir=tmp_path, download=False, return_metadata=True)
    assert isinstance(ds, IFCDataset) and ds.is_lazy
    assert ds.channel_names == ["BF", "FL"] and ds.stain_free.tolist() == [True, False]
    assert ds.class_names == ["apoptotic", "non-apoptotic"] == APOPTOTIC_CLASSES
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.image_shape == (2, 32, 32)
    np.testing.assert_array_equal(ds.get_batch([3])[0][0], x[3][:, 1:33, 1:33])  # centre crop 34 -> 32
    assert meta.fname.tolist()[:2] == ["cell_0.tif", "cell_1.tif"] and meta.label[1] == "non-apoptotic"
    prov = ds.provenance
    assert prov["doi"] == "10.1080/20013078.2020.1792683" and "Kranich" in prov["citation"]
    assert {"url", "licence", "citation", "source"} <= set(prov)
    assert (tmp_path / "apoptotic_cells" / "X_M1.h5.sha256-first-use").exists()


def test_apoptotic_channel_last_env_var_and_in_memory(tmp_path, monkeypatch):
    x, _ = write_x_m1(tmp_path / "apoptotic_cells" / "X_M1.h5", hw=32, channel_last=True, dtype=np.uint16)
    monkeypatch.setenv("PXPERMUTE_DATA_DIR", str(tmp_path))
    ds = load_apoptotic(download=False, in_memory=True)
    assert not ds.is_lazy
    np.testing.assert_array_equal(ds.images, np.transpose(x, (0, 3, 1, 2)))


def test_apoptotic_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_apoptotic(data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "X_M1.h5" in msg and str(tmp_path / "apoptotic_cells" / "X_M1.h5") in msg
    assert REGISTRY["apoptotic"].url in msg and "download=False" in msg


def test_apoptotic_offline_download_fails_clearly(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataUnavailableError, match=r"could not download apoptotic_cells/X_M1.h5.*ConnectionError.*by hand"):
        load_apoptotic(data_dir=tmp_path, download=True)


def test_apoptotic_truncated_download_is_rejected(tmp_path, monkeypatch):
    import pooch

    good = tmp_path / "good.h5"
    write_x_m1(good)
    blob = good.read_bytes()

    def truncated_download(url, known_hash, fname, path, progressbar):
        target = Path(path) / fname
        target.write_bytes(blob[: len(blob) // 2])
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", truncated_download)
    with pytest.raises(DataIntegrityError, match=r"X_M1.h5.*truncated or corrupted.*by hand from https://github.com/theislab"):
        load_apoptotic(data_dir=tmp_path / "cache", download=True)


def test_apoptotic_file_changed_after_first_use_is_refused(tmp_path):
    path = tmp_path / "apoptotic_cells" / "X_M1.h5"
    write_x_m1(path)
    load_apoptotic(data_dir=tmp_path, download=False)
    write_x_m1(path, n=10)  # different content
    with pytest.raises(DataIntegrityError, match="changed since it was first used"):
        load_apoptotic(data_dir=tmp_path, download=False)
    # verify=False skips the check
    assert len(load_apoptotic(data_dir=tmp_path, download=False, verify=False)) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x_ndim": 3}, r"X must be 4-D"),
        ({"channels": 3}, r"no axis .* has the expected 2 channels"),
        ({"y": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]}, r"0 \(apoptotic\) / 1"),
        ({"y": [0, 1, 0]}, r"one label per image"),
    ],
)
def test_apoptotic_wrong_layout_raises(tmp_path, kwargs, match):
    path = tmp_path / "X_M1.h5"
    write_x_m1(path, **kwargs)
    with pytest.raises(ValueError, match=match):
        load_apoptotic(path)


def test_apoptotic_one_hot_labels(tmp_path):
    y = np.arange(12) % 2
    write_x_m1(tmp_path / "X_M1.h5", y=np.eye(2, dtype=np.uint8)[y])
    np.testing.assert_array_equal(load_apoptotic(tmp_path / "X_M1.h5").labels, y)


def test_apoptotic_missing_datasets(tmp_path):
    path = tmp_path / "X_M1.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = np.zeros((2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"missing.*\['X', 'y'\]"):
        load_apoptotic(path)


# -- synapse -------------------------------------------------------------------------
SIZES = [(100, 90), (140, 120), (128, 128), (60, 131), (90, 90), (70, 80), (110, 100), (96, 97), (80, 130), (50, 50), (64, 64)]


def test_synapse_scifai_folder_with_foreign_paths(tmp_path):
    root = tmp_path / "synapse_formation"
    meta, images = make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES, extra_labels=["<unlabeled>", "unknown"])
    ds, kept = load_synapse(data_dir=tmp_path, download=False, return_metadata=True)
    labelled = meta[meta.label.isin(SYNAPSE_CLASSES)]
    assert len(ds) == len(labelled) == 9
    assert ds.channel_names == SYNAPSE_CHANNELS and ds.stain_free.tolist() == [True] + [False] * 7
    assert ds.class_names == SYNAPSE_CLASSES
    assert [SYNAPSE_CLASSES[i] for i in ds.labels] == labelled.label.tolist()
    assert ds.image_shape == (8, 128, 128) and ds.provenance["doi"] == "10.5061/dryad.ht76hdrk7"
    assert ds.provenance["licence"].startswith("CC0")
    x, _ = ds.get_batch(np.arange(len(ds)))
    for j, f in enumerate(kept.file):
        rel = str(Path(f).relative_to(root))
        ref = np.moveaxis(images[rel], -1, 0)
        np.testing.assert_array_equal(x[j], pad_or_crop(ref, 128, mode="mean"))
    # a 100 x 90 cell: content centred, padding is the channel mean
    first = np.moveaxis(images[str(Path(kept.file[0]).relative_to(root))], -1, 0).astype(np.float32)
    np.testing.assert_array_equal(x[0][:, 14:114, 19:109], first)
    np.testing.assert_allclose(x[0][:, 0, 0], first.mean(axis=(1, 2)), rtol=1e-6)


def test_synapse_sets_filter_and_constant_padding(tmp_path):
    root = tmp_path / "syn"
    meta, _ = make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES)
    test = load_synapse(root / "metadata.csv", sets=["test"], pad_mode="constant", size=64)
    expected = meta[(meta.set == "test") & meta.label.isin(SYNAPSE_CLASSES)]
    assert len(test) == len(expected) and test.image_shape == (8, 64, 64)
    assert np.all(test.get_batch([0])[0][0][:, :, 0] >= 0)


def test_synapse_without_metadata_scans_cell_files(tmp_path):
    root = tmp_path / "syn"
    meta, _ = make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES[:5], extra_labels=["<unlabeled>"])
    (root / "metadata.csv").unlink()
    ds, scanned = load_synapse(root, return_metadata=True)
    assert sorted(scanned.label) == sorted(meta.label[meta.label.isin(SYNAPSE_CLASSES)])
    assert set(scanned.experiment) <= {"Experiment_1", "Experiment_2"} and set(scanned.condition) <= {"+SEA", "-SEA"}


def test_capitalised_metadata_columns_are_accepted(tmp_path):
    root = tmp_path / "syn"
    meta, _ = make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES[:4])
    alt = meta.rename(columns={"file": "Path", "label": "Label", "set": "State", "condition": "Antibody_or_Condition"})
    alt.to_csv(root / "metadata.csv", index=False)
    ds = load_synapse(root / "metadata.csv")
    assert len(ds) == 4 and [SYNAPSE_CLASSES[i] for i in ds.labels] == meta.label.tolist()


def test_real_sample_cell_in_scifai_layout(real_file, tmp_path):
    sample = real_file("pxpermute_reference/sample_image.h5")
    with h5py.File(sample) as fh:
        raw = fh["image"][()]
    assert raw.shape == (118, 79, 8)
    ds = load_synapse(sample)
    assert len(ds) == 1 and SYNAPSE_CLASSES[ds.labels[0]] == "Synapses_with_signaling"
    x = ds.get_batch([0])[0][0]
    assert x.shape == (8, 128, 128)
    np.testing.assert_array_equal(x[:, 5:123, 24:103], np.moveaxis(raw, -1, 0))  # (128-118)//2, (128-79)//2
    np.testing.assert_allclose(x[:, 0, 0], np.moveaxis(raw, -1, 0).mean(axis=(1, 2)), rtol=1e-6)
    # the same file as part of a scifAI folder next to synthetic cells
    root = tmp_path / "synapse_formation"
    make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES[:3])
    meta = pd.read_csv(root / "metadata.csv")
    dest = root / "Experiment_9" / "Donor_1" / "+SEA" / "sample_image_1.h5"
    dest.parent.mkdir(parents=True)
    shutil.copy(sample, dest)
    meta.loc[len(meta)] = [str(dest), "Experiment_9", "Donor_1", "+SEA", 1, "test", "Synapses_with_signaling"]
    meta.to_csv(root / "metadata.csv", index=False)
    ds = load_synapse(data_dir=tmp_path, download=False)
    assert len(ds) == 4
    np.testing.assert_array_equal(ds.get_batch([3])[0][0], x)


def test_sample_cell_registry_hash_matches_the_real_file(real_file, tmp_path):
    sample = real_file("pxpermute_reference/sample_image.h5")
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == REGISTRY["synapse_sample_cell"].sha256
    assert sample.stat().st_size == REGISTRY["synapse_sample_cell"].size
    target = tmp_path / REGISTRY["synapse_sample_cell"].relpath
    target.parent.mkdir(parents=True)
    shutil.copy(sample, target)
    assert fetch_sample_cell(data_dir=tmp_path, download=False) == target
    target.write_bytes(sample.read_bytes()[:-1000])  # truncated copy
    with pytest.raises(DataIntegrityError, match="sample_image.h5 is corrupted or truncated"):
        fetch_sample_cell(data_dir=tmp_path, download=False)


def test_sample_cell_registry_agrees_with_the_reference_registry_and_the_data_folder(real_data_dir):
    """One file, one place: the sample cell is the reference outputs' sample_image.h5 (same path, same hash), and
    fetch_sample_cell finds it in the shared data folder without downloading."""
    from pxpermute.datasets.reference import REFERENCE_REGISTRY

    entry = REGISTRY["synapse_sample_cell"]
    ref = [e for e in REFERENCE_REGISTRY.values() if e.relpath.endswith("sample_image.h5")]
    assert len(ref) == 1 and ref[0].relpath == entry.relpath == "pxpermute_reference/sample_image.h5"
    assert ref[0].sha256 == entry.sha256
    root = real_data_dir(entry.relpath)
    assert fetch_sample_cell(data_dir=root, download=False) == root / entry.relpath


def test_synapse_download_extracts_the_archive(tmp_path, monkeypatch):
    import pooch

    src = tmp_path / "upstream"
    meta, _ = make_scifai_folder(src, SYNAPSE_CLASSES, 8, SIZES[:6])
    archive = tmp_path / "dryad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, Path("synapse_data") / f.relative_to(src))
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append(url)
        target = Path(path) / fname
        shutil.copy(archive, target)
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    cache = tmp_path / "cache"
    ds = load_synapse(data_dir=cache, download=True)
    assert calls == [REGISTRY["synapse"].url] and "dryad.ht76hdrk7" in calls[0]
    assert len(ds) == 6 and (cache / "synapse_formation" / "synapse_data" / "metadata.csv").exists()
    assert load_synapse(data_dir=cache, download=False).labels.tolist() == ds.labels.tolist()  # no second download
    assert len(calls) == 1


def test_synapse_truncated_archive_is_rejected(tmp_path, monkeypatch):
    import pooch

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        target = Path(path) / fname
        target.write_bytes(b"PK\x03\x04 not really a zip")
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    with pytest.raises(DataIntegrityError, match="dryad_ht76hdrk7.zip is not a valid zip archive"):
        load_synapse(data_dir=tmp_path, download=True)


def test_synapse_errors(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"no synapse-formation data in .*dryad.ht76hdrk7"):
        load_synapse(data_dir=tmp_path, download=False)
    root = tmp_path / "six"
    make_scifai_folder(root, SYNAPSE_CLASSES, 6, SIZES[:3])  # wrong channel count
    with pytest.raises(ValueError, match=r"6 channels, expected 8"):
        load_synapse(root)
    root = tmp_path / "gone"
    meta, _ = make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES[:3])
    Path(root / "Experiment_2" / "Donor_1" / "+SEA" / "cells_1001.h5").unlink()
    with pytest.raises(DataUnavailableError, match=r"1 of 3 cell files .* not found"):
        load_synapse(root)
    root = tmp_path / "broken"
    make_scifai_folder(root, SYNAPSE_CLASSES, 8, SIZES[:3])
    victim = root / "Experiment_1" / "Donor_1" / "-SEA" / "cells_1000.h5"
    victim.write_bytes(victim.read_bytes()[:500])
    ds = load_synapse(root, sets=["validation", "test"])  # the broken cell is not read
    assert len(ds) == 2
    with pytest.raises(DataIntegrityError, match="cells_1000.h5.*truncated or corrupted"):
        load_synapse(root).get_batch([0])
    with pytest.raises(ValueError, match="no cells with labels"):
        load_scifai_cells(root / "metadata.csv", class_names=["nothing"])


# -- white blood cells ------------------------------------------------------------------
def test_wbc_single_hdf5_file(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 4096, (16, 70, 70, 12)).astype(np.uint16)
    y = np.arange(16) % 8
    write_hdf5_dataset(tmp_path / "white_blood_cells" / "wbc.h5", x, y, layout="NHWC")
    ds = load_wbc(data_dir=tmp_path)
    assert ds.is_lazy and ds.image_shape == (12, 64, 64)
    assert ds.channel_names == WBC_CHANNELS and ds.class_names == WBC_CLASSES
    assert [c for c, s in zip(ds.channel_names, ds.stain_free) if s] == ["BF1", "DF", "BF2"]
    np.testing.assert_array_equal(ds.labels, y)
    np.testing.assert_array_equal(ds.get_batch([5])[0][0], np.moveaxis(x[5], -1, 0)[:, 3:67, 3:67])
    assert ds.provenance["doi"] == "10.1002/cyto.a.23920" and ds.provenance["n_images_published"] == 98013


def test_wbc_string_labels_and_wrong_channel_count(tmp_path):
    x = np.zeros((3, 12, 64, 64), np.float32)
    x[:, 0, 0, 0] = [1.0, 2.0, 3.0]  # three distinct cells (exact duplicates would be dropped on loading)
    p = write_hdf5_dataset(tmp_path / "w.h5", x, ["NKT", "CD4+ T", "eosinophil"])
    assert [WBC_CLASSES[i] for i in load_wbc(p).labels] == ["NKT", "CD4+ T", "eosinophil"]
    p = write_hdf5_dataset(tmp_path / "w11.h5", np.zeros((3, 11, 64, 64), np.float32), [0, 1, 2])
    with pytest.raises(ValueError, match="11 channels.*expected 12"):
        load_wbc(p)


def test_wbc_scifai_folder_drops_unknown(tmp_path):
    root = tmp_path / "white_blood_cells"
    meta, _ = make_scifai_folder(root, WBC_CLASSES, 12, [(50, 60)] * 10, extra_labels=["unknown"])
    ds = load_wbc(data_dir=tmp_path)
    assert len(ds) == int(meta.label.isin(WBC_CLASSES).sum()) == 9
    assert "unknown" not in [WBC_CLASSES[i] for i in ds.labels] and ds.image_shape == (12, 64, 64)


def test_wbc_missing_data_explains_there_is_no_pinned_download(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"download=True was requested but no white-blood-cell data.*no pinned public download"):
        load_wbc(data_dir=tmp_path, download=True)
    with pytest.raises(DataUnavailableError, match=r"wbc.h5"):
        load_wbc(data_dir=tmp_path)


# -- montage -------------------------------------------------------------------------------
def test_plot_montage_layout_and_contrast(tmp_path):
    root = tmp_path / "syn"
    make_scifai_folder(root, SYNAPSE_CLASSES[:3], 8, SIZES[:7])  # classes 0..2 get 3, 2, 2 cells
    ds = load_synapse(root)
    fig = plot_montage(ds, n_per_class=3, channels=["BF", "CD3", "MHCII"])
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = np.array(fig.axes).reshape(9, 3)  # 3 classes with cells x 3 per class, 3 channels
    assert [a.get_title() for a in axes[0]] == ["BF (sf)", "CD3", "MHCII"]
    # long class names are wrapped (after "_") so they do not overlap; the text itself is unchanged
    assert [axes[r, 0].get_ylabel().replace("\n", "") for r in (0, 3, 6)] == SYNAPSE_CLASSES[:3]
    assert "synapse" in fig._suptitle.get_text()
    shown = [len(a.images) for a in axes[:, 0]]
    assert shown == [1, 1, 1, 1, 1, 0, 1, 1, 0]  # empty slots where a class has fewer cells
    for a in fig.axes:
        for im in a.images:
            arr = im.get_array()
            assert arr.min() >= 0 and arr.max() <= 1
    matplotlib.pyplot.close(fig)


def test_plot_montage_bad_input():
    ds = IFCDataset(np.random.rand(4, 2, 8, 8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="n_per_class"):
        plot_montage(ds, n_per_class=0)
    with pytest.raises(ValueError, match="unknown class"):
        plot_montage(ds, classes=["nope"])
    with pytest.raises(ValueError, match="unknown channel"):
        plot_montage(ds, channels=["nope"])
    with pytest.raises(TypeError, match="IFCDataset"):
        plot_montage(np.zeros((4, 2, 8, 8)))


# -- the paper's numbers ---------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_root(real_data_dir) -> Path:
    """The data folder holding every published reference file."""
    from pxpermute.datasets.reference import REFERENCE_REGISTRY

    return real_data_dir(*(entry.relpath for entry in REFERENCE_REGISTRY.values()))


def test_embedded_paper_table_matches_the_reference_files(reference_root):
    ref = pn.build_paper_table(reference_root / "pxpermute_reference")
    emb = pn.paper_table()
    assert len(ref) == len(emb)
    key = ["dataset", "quantity", "method", "channel", "n_removed"]
    merged = ref.merge(emb, on=key, suffixes=("_ref", "_emb"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_allclose(merged.value_emb.astype(float), merged.value_ref.astype(float), rtol=1e-8)


def test_paper_numbers_agree_with_raw_csvs_and_loaders(reference_root):
    ref = reference_root / "pxpermute_reference"
    perf = pd.read_csv(ref / "white_blood_cells" / "performance_with_all_channels.csv").dropna()
    assert pn.paper_f1_macro("wbc")["mean"] == pytest.approx(perf.f1_macro.mean(), rel=1e-8)
    assert pn.paper_f1_macro("wbc")["n_folds"] == 5
    # published rankings use the loaders' channel names
    assert set(pn.paper_importance("synapse").index) == set(SYNAPSE_CHANNELS)
    assert set(pn.paper_importance("wbc").index) == set(WBC_CHANNELS)
    assert pn.paper_top_channels("apoptotic", 1) == ["FL"]
    # the published stain-free + PXPermute panels are the stain-free channels plus the top-3 stains
    for name, channels in (("synapse", SYNAPSE_CHANNELS), ("wbc", WBC_CHANNELS)):
        panels = pn.paper_panels(name)
        stain_free = [c for c in channels if c in pn.DATASETS[name]["stain_free"]]
        assert set(panels.loc["stain-free", "channels"].split("|")) == set(stain_free)
        assert set(panels.loc["stain-free + PXPermute", "channels"].split("|")) == set(
            stain_free + pn.paper_top_channels(name, 3, stained_only=True))
        assert panels.loc["all channels", "channels"].split("|") == channels
    assert pn.paper_panels("apoptotic").empty
    rr = pn.paper_remove_and_retrain("synapse")
    assert rr.shape == (6, 8) and list(rr.columns) == list(range(8))
    assert pn.paper_remove_and_retrain("synapse", average=True)["PXPermute"] == pytest.approx(rr.loc["PXPermute"].mean())
    assert "Cell Reports Methods" in pn.CITATION and "marrlab/pxpermute" in pn.SOURCE
    with pytest.raises(ValueError, match="unknown data set"):
        pn.paper_f1_macro("mnist")
