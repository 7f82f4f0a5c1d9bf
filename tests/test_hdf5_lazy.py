"""Lazy HDF5 arrays: indexing, padding/cropping, pickling, DataLoader workers, errors, bounded memory."""
from __future__ import annotations

import pickle
import threading
import time

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pxpermute.datasets import IFCDataset
from pxpermute.datasets._download import DataIntegrityError
from pxpermute.datasets.hdf5 import (
    HDF5CellFiles,
    LazyHDF5Array,
    guess_channel_axis,
    load_hdf5_dataset,
    pad_or_crop,
    write_hdf5_dataset,
)


@pytest.fixture
def nchw(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4096, size=(37, 3, 10, 12)).astype(np.uint16)
    y = rng.integers(0, 4, 37)
    path = write_hdf5_dataset(tmp_path / "cells.h5", x, y, channel_names=["BF", "A", "B"],
                              class_names=["k0", "k1", "k2", "k3"], stain_free=[True, False, False], chunk=5)
    return path, x, y


# -- pad_or_crop -------------------------------------------------------------------
def test_pad_or_crop_centres_content_and_pads_with_value():
    img = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5) + 1
    out = pad_or_crop(img, (6, 4), value=-1)
    assert out.shape == (2, 6, 4)
    # height 3 -> 6: one row above, two below; width 5 -> 4: drop the first column ((5 - 4) // 2 = 0 -> cols 0..3)
    np.testing.assert_array_equal(out[:, 1:4, :], img[:, :, 0:4])
    assert np.all(out[:, 0] == -1) and np.all(out[:, 4:] == -1)


def test_pad_or_crop_mean_and_edge_modes():
    img = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    out = pad_or_crop(img, 8, mode="mean")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], img.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 2:6, 2:6], img)
    edge = pad_or_crop(img, 6, mode="edge")
    np.testing.assert_array_equal(edge[:, 0, 1:5], img[:, 0, :])


def test_pad_or_crop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        pad_or_crop(np.zeros((4, 4)), 2, mode="reflect")
    with pytest.raises(ValueError, match="positive"):
        pad_or_crop(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match="height, width"):
        pad_or_crop(np.zeros((4, 4)), (1, 2, 3))


# -- write / read ---------------------------------------------------------------------
def test_roundtrip_restores_values_and_names(nchw):
    path, x, y = nchw
    ds = load_hdf5_dataset(path)
    assert ds.is_lazy and isinstance(ds.images, LazyHDF5Array)
    assert ds.channel_names == ["BF", "A", "B"] and ds.class_names == ["k0", "k1", "k2", "k3"]
    assert ds.stain_free.tolist() == [True, False, False]
    np.testing.assert_array_equal(ds.labels, y)
    xb, yb = ds.get_batch(np.arange(len(ds)))
    np.testing.assert_array_equal(xb, x.astype(np.float32))
    with h5py.File(path) as fh:
        assert fh["images"].chunks == (5, 3, 10, 12)


def test_channel_last_file_is_transposed_and_padded(tmp_path):
    x = np.random.default_rng(2).random((9, 20, 18, 4)).astype(np.float32)
    path = write_hdf5_dataset(tmp_path / "hwc.h5", x, np.zeros(9, int), layout="NHWC")
    ds = load_hdf5_dataset(path, size=24)
    assert ds.image_shape == (4, 24, 24)
    ref = pad_or_crop(np.transpose(x, (0, 3, 1, 2)), 24)
    np.testing.assert_array_equal(ds.as_arrays()[0], ref)


def test_string_labels_map_to_sorted_class_names(tmp_path):
    x = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 4, 4), np.float32)  # 4 distinct cells
    path = write_hdf5_dataset(tmp_path / "s.h5", x, ["T", "B", "T", "NK"])
    ds = load_hdf5_dataset(path)
    assert ds.class_names == ["B", "NK", "T"]
    assert ds.labels.tolist() == [2, 0, 2, 1]


def test_lazy_indexing_matches_numpy(nchw):
    path, x, _ = nchw
    arr = LazyHDF5Array(path)
    assert arr.shape == x.shape and len(arr) == 37 and arr.dtype == x.dtype
    np.testing.assert_array_equal(arr[3], x[3])
    np.testing.assert_array_equal(arr[-1], x[-1])
    np.testing.assert_array_equal(arr[2:30:7], x[2:30:7])
    idx = [30, 2, 2, 17, 0, 36]  # unsorted, duplicates, sparse (several runs)
    np.testing.assert_array_equal(arr[idx], x[idx])
    mask = np.zeros(37, bool)
    mask[[1, 5, 6]] = True
    np.testing.assert_array_equal(arr[mask], x[mask])
    np.testing.assert_array_equal(arr[[4, 8], 1], x[[4, 8], 1])
    np.testing.assert_array_equal(np.asarray(arr), x)
    with pytest.raises(IndexError):
        arr[37]
    with pytest.raises(IndexError):
        arr[[0, 40]]


def test_lazy_dataset_behaves_like_in_memory_one(nchw):
    path, x, y = nchw
    lazy = IFCDataset(LazyHDF5Array(path), y)
    eager = IFCDataset(x.astype(np.float32), y)
    for idx in ([5, 1, 9], np.arange(10, 20), [36]):
        np.testing.assert_array_equal(lazy.get_batch(idx)[0], eager.get_batch(idx)[0])
    np.testing.assert_array_equal(lazy.subset([3, 1]).images, x[[3, 1]])
    np.testing.assert_array_equal(lazy.select_channels([2, 0]).images, x[:, [2, 0]])
    xt, yt = lazy[7]
    assert isinstance(xt, torch.Tensor) and xt.shape == (3, 10, 12) and yt == y[7]


def test_pickle_drops_the_file_handle(nchw):
    path, x, _ = nchw
    arr = LazyHDF5Array(path)
    _ = arr[0]  # opens a handle
    assert arr._h5 is not None
    clone = pickle.loads(pickle.dumps(arr))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone[[1, 2]], x[[1, 2]])


def test_dataloader_workers_read_through_their_own_handles(nchw):
    path, x, y = nchw
    ds = IFCDataset(LazyHDF5Array(path), y)
    ds.get_batch([0])  # parent opens the file before forking: workers must not reuse that handle
    direct = [b for b in DataLoader(ds, batch_size=8, num_workers=0)]
    ctx = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
    workers = [b for b in DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=ctx)]
    assert len(direct) == len(workers) == 5
    for (xa, ya), (xb, yb) in zip(direct, workers):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    np.testing.assert_array_equal(torch.cat([b[0] for b in workers]).numpy(), x.astype(np.float32))


def test_channel_importance_on_lazy_data_matches_in_memory_and_worker_runs(tmp_path):
    from pxpermute.importance import channel_importance

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    x = rng.normal(0, 1, (90, 3, 8, 8)).astype(np.float32)
    for k in range(3):
        x[y == k, 0, k * 2 : k * 2 + 2] += 3.0
    path = write_hdf5_dataset(tmp_path / "toy.h5", x, y, layout="NCHW", chunk=16)
    lazy = load_hdf5_dataset(path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 3)).eval()
    kw = dict(n_repeats=3, batch_size=32, random_state=1, progress=False)
    eager = channel_importance(model, IFCDataset(x, y), **kw)
    in_proc = channel_importance(model, lazy, **kw)
    lazy.get_batch([0])  # handle open in the parent before the workers fork
    workers = channel_importance(model, lazy, num_workers=2, **kw)
    assert np.any(eager.importances_mean != 0)  # the comparison below is not between trivial zeros
    np.testing.assert_array_equal(in_proc.importances_mean, eager.importances_mean)
    np.testing.assert_array_equal(workers.importances_mean, eager.importances_mean)


# -- errors -------------------------------------------------------------------------------
def test_truncated_file_is_reported_with_its_path(nchw, tmp_path):
    path, _, _ = nchw
    data = path.read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataIntegrityError, match="truncated.h5.*truncated or corrupted"):
        load_hdf5_dataset(bad)


def test_git_lfs_pointer_is_recognised(tmp_path):
    bad = tmp_path / "X.h5"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(DataIntegrityError, match="Git LFS pointer"):
        LazyHDF5Array(bad)


def test_wrong_shapes_and_keys_raise_clear_errors(tmp_path):
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = np.zeros((5, 8, 8))
        fh["labels"] = np.zeros(5, int)
        fh["short_labels"] = np.zeros(3, int)
    with pytest.raises(ValueError, match=r"4-D.*\(5, 8, 8\)"):
        LazyHDF5Array(path)
    with pytest.raises(KeyError, match="no dataset 'X'"):
        LazyHDF5Array(path, "X")
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        write_hdf5_dataset(tmp_path / "w.h5", np.zeros((5, 8, 8)), np.zeros(5, int))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        write_hdf5_dataset(tmp_path / "w.h5", np.zeros((5, 1, 8, 8)), np.zeros(4, int))
    good = write_hdf5_dataset(tmp_path / "g.h5", np.zeros((5, 3, 8, 8)), np.zeros(5, int))
    with pytest.raises(ValueError, match="has 3 channels.*expected 12"):
        load_hdf5_dataset(good, expected_channels=12)
    with pytest.raises(FileExistsError):
        write_hdf5_dataset(good, np.zeros((5, 3, 8, 8)), np.zeros(5, int))
    with pytest.raises(FileNotFoundError):
        LazyHDF5Array(tmp_path / "missing.h5")


def test_guess_channel_axis():
    assert guess_channel_axis((10, 2, 32, 32)) == 1
    assert guess_channel_axis((10, 32, 32, 2)) == 3
    assert guess_channel_axis((10, 64, 64, 12), n_channels=12) == 3
    for ambiguous in [(10, 8, 8, 8), (10, 12, 64, 12)]:
        with pytest.raises(ValueError, match="cannot tell"):
            guess_channel_axis(ambiguous)
    with pytest.raises(ValueError, match="expected 5 channels"):
        guess_channel_axis((10, 2, 32, 32), n_channels=5)


def test_cell_files_pad_crop_and_check_channels(tmp_path):
    rng = np.random.default_rng(3)
    files, images = [], []
    for i, (h, w) in enumerate([(10, 7), (20, 26), (16, 16)]):
        img = rng.integers(0, 1000, (h, w, 4)).astype(np.uint16)
        f = tmp_path / f"cell_{i}.h5"
        with h5py.File(f, "w") as fh:
            fh["image"] = img
            fh["label"] = "T_cell"
        files.append(f)
        images.append(img)
    arr = HDF5CellFiles(files, size=16, pad_mode="constant")
    assert arr.shape == (3, 4, 16, 16) and arr.dtype == np.float32
    out = arr[[2, 0, 1]]
    np.testing.assert_array_equal(out[0], np.moveaxis(images[2], -1, 0))
    np.testing.assert_array_equal(out[1][:, 3:13, 4:11], np.moveaxis(images[0], -1, 0))
    np.testing.assert_array_equal(out[2], np.moveaxis(images[1], -1, 0)[:, 2:18, 5:21])
    bad = tmp_path / "cell_bad.h5"
    with h5py.File(bad, "w") as fh:
        fh["image"] = np.zeros((8, 8, 3), np.uint16)
    arr = HDF5CellFiles(files + [bad], size=16)
    with pytest.raises(ValueError, match="cell_bad.h5.*3 channels, expected 4"):
        arr[3]
    with pytest.raises(ValueError, match="needs a size"):
        HDF5CellFiles(files, size=None)


# -- bounded memory -----------------------------------------------------------------------
class _GeneratedImages:
    """Array-like producing deterministic image blocks on slicing (no big array ever exists)."""

    def __init__(self, n, shape):
        self.shape = (n, *shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, sl):
        start, stop, _ = sl.indices(self.shape[0])
        block = np.empty((stop - start, *self.shape[1:]), np.float32)
        block[:] = (np.arange(start, stop, dtype=np.float32) % 7)[:, None, None, None]
        block[:, 0, :4, :4] += 1.0
        block[:, 1, 0, 0] = np.arange(start, stop)  # every image distinct (the loader drops exact duplicates)
        return block


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * __import__("resource").getpagesize()


class _PeakRSS:
    """Samples this process's resident set size every 2 ms while active."""

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


class _PoolNet(torch.nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.lin = torch.nn.Linear(c, k)

    def forward(self, x):
        return self.lin(x.mean(dim=(2, 3)))


@pytest.mark.slow
def test_streaming_a_file_larger_than_the_memory_budget(tmp_path):
    """A 320 MiB float32 file streams through channel_importance with < 100 MiB peak RSS growth.

    Bound: the engine holds one block (batch_size=256 images x 2 x 64 x 64 float32 = 8 MiB)
    plus its perturbed copies; 100 MiB leaves room for allocator slack and h5py's chunk
    cache while staying far below the 320 MiB a full load would need (measured after a
    warm-up run that excludes one-time torch/allocator set-up: ~16 MiB).
    The cheap ``fill`` perturbation keeps the run short (~6 s); every perturbation reads
    the data through the same streaming path (``IFCDataset.get_batch`` in blocks).
    """
    from pxpermute.importance import channel_importance

    n, shape = 10_240, (2, 64, 64)  # 10,240 x 32 KiB = 320 MiB
    budget_mb = 300
    path = write_hdf5_dataset(tmp_path / "big.h5", _GeneratedImages(n, shape), np.arange(n) % 3,
                              chunk=64, block_bytes=16 << 20)
    assert path.stat().st_size / 2**20 > budget_mb
    ds = load_hdf5_dataset(path, channel_names=["BF", "FL"], class_names=["a", "b", "c"])
    torch.manual_seed(0)
    model = _PoolNet(2, 3).eval()
    kw = dict(n_repeats=1, perturbation="fill", batch_size=256, random_state=0, progress=False)
    channel_importance(model, ds.subset(np.arange(512)), **kw)  # warm-up: one-time torch/allocator set-up
    with _PeakRSS() as mem:
        res = channel_importance(model, ds, **kw)
    assert res.channel_names == ["BF", "FL"]
    assert np.all(np.isfinite(res.importances_mean))
    assert mem.growth_mb < 100, f"peak RSS grew by {mem.growth_mb:.0f} MB while streaming a {n * 32 / 1024:.0f} MB file"


# -- exact duplicates: dropped by default, as by the in-memory loaders ------------------------------------------
def _with_duplicates():
    """8 distinct cells, then copies of cells 2 and 5 (rows 8, 9) and a second copy of 2 (row 10)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 1000, (8, 2, 6, 6)).astype(np.uint16)
    x = np.concatenate([x, x[[2, 5, 2]]])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    return x, y


def test_load_hdf5_dataset_drops_exact_duplicates_and_stays_lazy(tmp_path):
    from pxpermute.datasets._dedup import duplicate_mask

    x, y = _with_duplicates()
    path = write_hdf5_dataset(tmp_path / "d.h5", x, y)
    ds = load_hdf5_dataset(path)
    assert ds.is_lazy and isinstance(ds.images, LazyHDF5Array)
    assert len(ds) == 8 and ds.provenance["duplicates_dropped"] == 3
    assert ds.provenance["duplicate_rows"] == [8, 9, 10]
    np.testing.assert_array_equal(ds.as_arrays()[0], x[:8])
    np.testing.assert_array_equal(ds.labels, y[:8])
    # the same rule as the in-memory loaders (first copy kept)
    np.testing.assert_array_equal(duplicate_mask(x), np.arange(11) >= 8)
    kept = load_hdf5_dataset(path, drop_duplicates=False)
    assert len(kept) == 11 and kept.provenance["duplicates_dropped"] is None
    np.testing.assert_array_equal(kept.as_arrays()[0], x)
    with pytest.raises(TypeError, match="drop_duplicates"):
        load_hdf5_dataset(path, drop_duplicates="yes")


def test_duplicates_are_compared_after_padding_and_in_nhwc_files(tmp_path):
    x, y = _with_duplicates()
    path = write_hdf5_dataset(tmp_path / "d.h5", np.moveaxis(x, 1, -1), y, layout="NHWC")
    ds = load_hdf5_dataset(path, size=8)
    assert len(ds) == 8 and ds.image_shape == (2, 8, 8)
    np.testing.assert_array_equal(ds.as_arrays()[0], pad_or_crop(x[:8], 8))


def test_no_duplicates_leaves_the_file_view_untouched(tmp_path):
    x, y = _with_duplicates()
    path = write_hdf5_dataset(tmp_path / "d.h5", x[:8], y[:8])
    ds = load_hdf5_dataset(path)
    assert ds.provenance["duplicates_dropped"] == 0 and ds.images.rows is None


def test_row_views_read_the_right_rows(tmp_path):
    x, y = _with_duplicates()
    path = write_hdf5_dataset(tmp_path / "d.h5", x, y)
    arr = LazyHDF5Array(path)
    view = arr.take([10, 3, 0, 7])
    assert view.shape == (4, 2, 6, 6) and len(view) == 4
    np.testing.assert_array_equal(view[:], x[[10, 3, 0, 7]])
    np.testing.assert_array_equal(view[1], x[3])
    np.testing.assert_array_equal(view[[2, 0]], x[[0, 10]])
    np.testing.assert_array_equal(view[1:3], x[[3, 0]])
    np.testing.assert_array_equal(view.take([3, 0])[:], x[[7, 10]])  # a view of a view
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(view))[:], x[[10, 3, 0, 7]])
    with pytest.raises(IndexError):
        view[4]
    with pytest.raises(IndexError):
        LazyHDF5Array(path, rows=[0, 11])


def test_drop_duplicate_cells_on_per_cell_files_and_in_memory(tmp_path):
    from pxpermute.datasets.hdf5 import drop_duplicate_cells

    x, y = _with_duplicates()
    files = []
    for i, img in enumerate(x):
        f = tmp_path / f"cell_{i}.h5"
        with h5py.File(f, "w") as fh:
            fh["image"] = np.moveaxis(img, 0, -1)
        files.append(f)
    lazy = IFCDataset(HDF5CellFiles(files, size=6, pad_mode="constant"), y)
    out = drop_duplicate_cells(lazy, block_bytes=2 * 2 * 6 * 6 * 4)  # 2 cells per block: duplicates across blocks
    assert isinstance(out.images, HDF5CellFiles) and len(out) == 8
    assert out.images.files == [str(f) for f in files[:8]] and out.provenance["duplicates_dropped"] == 3
    mem = drop_duplicate_cells(IFCDataset(x.astype(np.float32), y))
    assert not mem.is_lazy and len(mem) == 8 and mem.provenance["duplicates_dropped"] == 3
    np.testing.assert_array_equal(mem.images, x[:8])
    np.testing.assert_array_equal(out.as_arrays()[0], mem.images)
