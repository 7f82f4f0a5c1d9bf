"""Jurkat cell-cycle loader (Blasi et al. 2016) on the real files (found through PXPERMUTE_DATA_DIR; see conftest)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pxpermute.datasets import IFCDataset, load_cellcycle, load_cellcycle_sample
from pxpermute.datasets._download import DataIntegrityError, DataUnavailableError
from pxpermute.datasets.cellcycle import (
    CELLCYCLE_PHASES,
    CELLCYCLE_REGISTRY,
    _montage_to_tiles,
    _padding_mask,
)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "blasi2016_cellcycle/Experiment_1"
CHANNEL_FILES = {"BF": "Ch3", "DNA": "Ch4", "DF": "Ch6"}
# approximate cell counts stated by the data description (shared/data/README.md)
APPROX = {"G1": 900, "S_phase": 900, "G2": 900, "Prophase": 600, "Metaphase": 70, "Telophase": 30, "Anaphase": 16}


@pytest.fixture(scope="module")
def root(real_data_dir) -> Path:
    """The data folder holding all 21 montages of the cell-cycle data set."""
    return real_data_dir(*(entry.relpath for entry in CELLCYCLE_REGISTRY.values()))


def _raw_montage(root: Path, phase: str, channel: str) -> np.ndarray:
    (path,) = sorted((root / EXPERIMENT / phase).glob(f"{CHANNEL_FILES[channel]}_*.tif"))
    return tifffile.imread(path)


def _raw_tile(montage: np.ndarray, i: int) -> np.ndarray:
    """Tile i of a column-major 30x30 montage, cut by explicit slicing."""
    row, col = i % 30, i // 30
    return montage[row * 40 : (row + 1) * 40, col * 40 : (col + 1) * 40]


def _cells_by_duplicates(root: Path, phase: str) -> int:
    """Independent count: padding tiles are byte-identical copies of the montage's final tile (all channels)."""
    montages = [_raw_montage(root, phase, ch) for ch in CHANNEL_FILES]
    tiles = np.stack([np.concatenate([_raw_tile(m, i).ravel() for m in montages]) for i in range(900)])
    same_as_last = np.all(tiles == tiles[-1], axis=1)
    if same_as_last.sum() == 1:  # the final tile is unique: a full montage
        return 900
    return int(np.count_nonzero(~same_as_last))


@pytest.fixture(scope="module")
def full(root) -> IFCDataset:
    # exact duplicates kept: these tests check the tile layout (tests/test_diagnostics.py checks the drop)
    return load_cellcycle(data_dir=root, download=False, drop_duplicates=False)


def test_shapes_names_and_flags(full):
    assert full.image_shape == (3, 40, 40)
    assert full.channel_names == ["BF", "DNA", "DF"]
    assert full.stain_free.tolist() == [True, False, True]
    assert full.images.dtype == np.float32
    prov = full.provenance
    assert "BSD-3" in prov["licence"] and "minh-doan/MLCP" in prov["url"]
    assert "10256" in prov["citation"] and "Methods 112" in prov["citation"]


def test_class_labels_are_the_source_folders(full, root):
    folders = sorted(p.name for p in (root / EXPERIMENT).iterdir() if p.is_dir())
    assert sorted(full.class_names) == folders
    # the first and last kept cell of every class are the corresponding tiles of that folder's montages
    for label, phase in enumerate(full.class_names):
        rows = np.flatnonzero(full.labels == label)
        for ch_i, ch in enumerate(full.channel_names):
            mont = _raw_montage(root, phase, ch)
            np.testing.assert_array_equal(full.images[rows[0], ch_i], _raw_tile(mont, 0))
            np.testing.assert_array_equal(full.images[rows[-1], ch_i], _raw_tile(mont, len(rows) - 1))


def test_cell_counts_match_an_independent_padding_criterion(full, root):
    counts = full.class_counts()
    assert len(full) == sum(counts.values())
    for phase, n in counts.items():
        assert n == _cells_by_duplicates(root, phase), phase
        assert abs(n - APPROX[phase]) <= 0.1 * APPROX[phase] + 2, (phase, n)


def test_padding_is_trailing_identical_and_cell_free(full, root):
    raw = load_cellcycle(data_dir=root, download=False, drop_empty=False, drop_duplicates=False)
    assert len(raw) == 900 * len(CELLCYCLE_PHASES)
    assert raw.class_counts() == {p: 900 for p in CELLCYCLE_PHASES}
    kept = full.class_counts()
    for label, phase in enumerate(CELLCYCLE_PHASES):
        tiles = raw.images[raw.labels == label]
        n = kept[phase]
        np.testing.assert_array_equal(tiles[:n], full.images[full.labels == label])
        pad = tiles[n:]
        if len(pad):
            assert np.all(pad == pad[0])  # one background strip repeated
            # a cell varies along its rows; padding does not
            assert np.abs(np.diff(pad[0], axis=1)).max() == 0
        row_var = np.abs(np.diff(tiles[:n], axis=2)).mean(axis=(2, 3))
        assert row_var.min() > 1.0  # every kept tile has structure in every channel


def test_padding_rule_on_a_synthetic_montage():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 4000, size=(907, 40, 40)).astype(np.uint16)
    strip = np.tile(rng.integers(300, 700, size=(1, 40)), (40, 1)).astype(np.uint16)
    tiles = cells[:900].copy()
    tiles[897:] = strip  # three trailing padding tiles
    montage = tiles.reshape(30, 30, 40, 40).transpose(1, 2, 0, 3).reshape(1200, 1200)  # column-major layout
    back = _montage_to_tiles(montage)
    np.testing.assert_array_equal(back, tiles)
    np.testing.assert_array_equal(back[31], montage[40:80, 40:80])  # tile 31 = grid row 1, column 1
    mask = _padding_mask(back[:, None])
    assert mask.tolist() == [False] * 897 + [True] * 3
    # a tile is padding only if it is row-constant in every channel
    two = np.stack([back, back], axis=1)
    two[898, 1] = cells[905]
    assert _padding_mask(two).tolist() == [False] * 897 + [True, False, True]
    with pytest.raises(ValueError, match="1200x1200"):
        _montage_to_tiles(montage[:1000])


def test_channel_subset_reads_only_those_channels(full, root, tmp_path):
    # a cache that only holds the DF and BF files suffices for channels=["DF", "BF"]
    for (_phase, ch), entry in CELLCYCLE_REGISTRY.items():
        if ch in ("DF", "BF"):
            (tmp_path / entry.relpath).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / entry.relpath).symlink_to(root / entry.relpath)
    sub = load_cellcycle(data_dir=tmp_path, download=False, channels=["DF", "BF"], drop_duplicates=False)
    assert sub.channel_names == ["DF", "BF"] and sub.stain_free.tolist() == [True, True]
    np.testing.assert_array_equal(sub.images, full.images[:, [2, 0]])
    np.testing.assert_array_equal(sub.labels, full.labels)


def test_env_var_points_at_the_cache(monkeypatch, full, root):
    monkeypatch.setenv("PXPERMUTE_DATA_DIR", str(root))
    ds = load_cellcycle(download=False, channels=["DNA"], drop_duplicates=False)
    np.testing.assert_array_equal(ds.images[:, 0], full.images[:, 1])


def _cache_with_links(cache: Path, root: Path) -> None:
    for entry in CELLCYCLE_REGISTRY.values():
        (cache / entry.relpath).parent.mkdir(parents=True, exist_ok=True)
        (cache / entry.relpath).symlink_to(root / entry.relpath)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_copy_raises_integrity_error(root, tmp_path, damage):
    _cache_with_links(tmp_path, root)
    target = tmp_path / CELLCYCLE_REGISTRY[("Anaphase", "DNA")].relpath
    target.unlink()  # the link, not the data file: the damaged copy is a real file in tmp_path
    shutil.copyfile(root / CELLCYCLE_REGISTRY[("Anaphase", "DNA")].relpath, target)
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 1000]
    target.write_bytes(bytes(data))
    with pytest.raises(DataIntegrityError, match="corrupted or truncated"):
        load_cellcycle(data_dir=tmp_path, download=False)


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_cellcycle(data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "download=False" in msg
    assert "https://github.com/minh-doan/MLCP/raw/master/images/Experiment_1/G1/Ch3_CP0008.tif" in msg
    assert str(tmp_path / "blasi2016_cellcycle" / "Experiment_1" / "G1" / "Ch3_CP0008.tif") in msg


def test_offline_download_gives_a_clear_error(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataUnavailableError, match="could not download .*Download it by hand"):
        load_cellcycle(data_dir=tmp_path, download=True)


def test_bad_arguments(tmp_path):
    # argument errors come before any file is looked at: an empty folder serves
    with pytest.raises(ValueError, match="unknown channel name 'GFP'"):
        load_cellcycle(data_dir=tmp_path, download=False, channels=["GFP"])
    with pytest.raises(TypeError, match="download must be"):
        load_cellcycle(data_dir=tmp_path, download="yes")
    with pytest.raises(ValueError, match="duplicates"):
        load_cellcycle_sample(channels=["BF", "BF"])


def test_registry_urls_and_hashes_match_the_real_files(root):
    from pxpermute.datasets._download import sha256sum

    assert len(CELLCYCLE_REGISTRY) == 21
    for (phase, ch), entry in CELLCYCLE_REGISTRY.items():
        assert entry.url == (
            "https://github.com/minh-doan/MLCP/raw/master/images/Experiment_1/" + entry.relpath.split("Experiment_1/")[1]
        )
        assert entry.relpath.startswith(f"blasi2016_cellcycle/Experiment_1/{phase}/{CHANNEL_FILES[ch]}_")
        assert sha256sum(root / entry.relpath) == entry.sha256


# -- embedded sample -------------------------------------------------------------------------------------
SAMPLE = REPO / "pxpermute" / "data" / "cellcycle_sample.npz"


def test_sample_is_small_and_licensed():
    assert SAMPLE.stat().st_size <= 3_000_000
    licence = (SAMPLE.parent / "cellcycle_sample.LICENSE").read_text()
    assert "BSD 3-Clause" in licence and "minh-doan" in licence
    ds = load_cellcycle_sample()
    assert ds.channel_names == ["BF", "DNA", "DF"] and ds.stain_free.tolist() == [True, False, True]
    assert "BSD-3" in ds.provenance["licence"]
    assert set(ds.class_names) == set(CELLCYCLE_PHASES) and min(ds.class_counts().values()) > 0


def test_sample_is_balanced_like_the_full_data(root):
    ds = load_cellcycle_sample()
    counts = ds.class_counts()
    cap = max(counts.values())
    full_counts = load_cellcycle(data_dir=root, download=False, channels=["DNA"]).class_counts()
    for phase, n in counts.items():
        assert n == min(cap, full_counts[phase])  # capped classes equal, rare classes complete


def test_sample_tiles_are_the_original_tiles(full):
    ds = load_cellcycle_sample(drop_duplicates=False)
    with np.load(SAMPLE) as npz:
        tile_index = npz["tile_index"].astype(int)
    np.testing.assert_array_equal(ds.labels, np.load(SAMPLE)["labels"])
    for label in range(full.n_classes):
        in_sample = ds.labels == label
        originals = full.images[full.labels == label][tile_index[in_sample]]
        np.testing.assert_array_equal(ds.images[in_sample], originals)
        assert len(np.unique(tile_index[in_sample])) == in_sample.sum()  # no cell twice
    sub = load_cellcycle_sample(channels=["DNA"], drop_duplicates=False)
    np.testing.assert_array_equal(sub.images[:, 0], ds.images[:, 1])


def test_build_script_reproduces_the_shipped_sample(root, tmp_path):
    spec = importlib.util.spec_from_file_location("build_cellcycle_sample", REPO / "scripts" / "build_cellcycle_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.build(str(root), out_dir=tmp_path)
    assert out.read_bytes() == SAMPLE.read_bytes()


# -- end to end: real cells -> trained model -> PXPermute ranking -------------------------------------
@pytest.mark.slow
def test_end_to_end_on_the_embedded_sample():
    """Train a small CNN on the real sample, check it is far above chance, rank the channels."""
    import torch
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    from pxpermute.importance import channel_importance
    from pxpermute.training import train_classifier

    torch.manual_seed(0)
    ds = load_cellcycle_sample()
    train, test = train_test_split(np.arange(len(ds)), test_size=0.3, stratify=ds.labels, random_state=0)
    net = train_classifier(
        ds,
        train_indices=train,
        model="small_cnn",
        # running BN statistics with momentum 0.1: the cumulative default gave eval-mode predictions near chance here
        model_kwargs={"width": 16, "bn_momentum": 0.1},
        max_epochs=10,
        batch_size=32,
        early_stopping=None,
        random_state=0,
    )
    x, y = ds.get_batch(test)
    pred = np.asarray(net.predict(x))
    f1_macro = f1_score(y, pred, average="macro")
    chance = 1.0 / ds.n_classes
    assert f1_macro > 3 * chance, f1_macro  # measured ~0.65 (chance ~0.14)

    test_ds = ds.subset(test)
    res = channel_importance(net, test_ds, n_repeats=5, random_state=0, progress=False)
    assert res.channel_names == ["BF", "DNA", "DF"]
    assert sorted(res.ranking.tolist()) == [0, 1, 2]
    assert np.all(np.isfinite(res.ci_low)) and np.all(np.isfinite(res.ci_high))
    assert np.all(res.ci_low <= res.importance) and np.all(res.importance <= res.ci_high)
    # the engine's unperturbed score is the model's macro F1 on the same cells
    assert res.baseline_score == pytest.approx(f1_macro, abs=1e-6)
    # the top channel matters beyond permutation noise, and so does the DNA stain that defines the phases
    top = int(res.ranking[0])
    assert res.ci_low[top] > 0
    assert res.ci_low[res.channel_names.index("DNA")] > 0


def test_reference_results_ship_and_agree_with_themselves():
    # the reference numbers the cell-cycle lesson shows come from the package data, and every summary in
    # the file is what its per-fold values give (a hand-edited or truncated file fails here)
    from pxpermute.datasets.cellcycle import reference_results

    ref = reference_results()
    perf = ref["performance"]
    for key in ("small_cnn/all", "small_cnn/stain_free"):
        f1 = np.asarray(perf[key]["f1_macro"])
        assert f1.shape == (ref["cv"]["n_splits"],)
        assert perf[key]["f1_macro_mean"] == pytest.approx(f1.mean())
        per_class = np.array([perf[key]["f1_per_class"][c] for c in ref["dataset"]["class_counts"]])
        np.testing.assert_allclose(per_class.mean(0), f1, atol=1e-9)  # macro = mean over the 7 phases
    diff = np.asarray(perf["small_cnn/all"]["f1_macro"]) - np.asarray(perf["small_cnn/stain_free"]["f1_macro"])
    assert ref["stain_free_test"]["mean_diff"] == pytest.approx(diff.mean())
    assert sum(ref["dataset"]["class_counts"].values()) == ref["dataset"]["n_cells"]
