"""The engine's sync-free hot path (issue 17, item 3): same numbers, fewer device round trips.

The CUDA-only pieces (index_add_ counting, pinned non-blocking prefetch) are run here through their
CPU-testable parts; benchmarks/gpu_check.py compares CPU and CUDA results on a GPU machine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pxpermute import channel_importance
from pxpermute.importance import _count, _device_blocks
from pxpermute.keys import _as_i64, _head, _mix64, _mix64_, seed_words
from pxpermute.predictor import DeferredChecks, as_predictor


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
@pytest.mark.parametrize("unit", [0, 5, (3 << 8) + 2])
def test_host_head_equals_the_device_formula(seed, unit):
    s = seed_words(seed)
    for tag in (0x50495853, 0x53414D50, 1):
        h = _mix64(torch.tensor([s], dtype=torch.int64))
        h = _mix64_(h ^ _as_i64(tag * 0x100000001B3 + unit))
        assert int(h) == _head(s, unit, tag)


def test_index_add_counting_equals_bincount():
    rng = np.random.default_rng(0)
    flat = torch.from_numpy(rng.integers(0, 37, 5000))
    a = torch.zeros(37, dtype=torch.int64)
    b = torch.zeros(37, dtype=torch.int64)
    _count(a, flat, index_add=False)
    _count(b, flat, index_add=True)
    assert torch.equal(a, b) and int(a.sum()) == 5000
    cm = torch.zeros(4, 9, dtype=torch.int64)  # a row slice, as the engine counts a chunk of items
    _count(cm[1:3].view(-1), torch.tensor([0, 0, 17]), index_add=True)
    assert cm[1, 0] == 2 and cm[2, 8] == 1 and int(cm.sum()) == 3


def test_device_blocks_on_cpu_are_the_plain_blocks():
    rng = np.random.default_rng(1)
    X = rng.random((10, 2, 4, 4), dtype=np.float32)
    y = rng.integers(0, 3, 10)
    blocks = [(np.arange(i, min(i + 4, 10)), X[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]
    got = list(_device_blocks(iter(blocks), torch.device("cpu")))
    assert len(got) == 3
    for (idx, x_np, y_np), (idx2, _, _, x, yt, it) in zip(blocks, got):
        assert np.array_equal(idx, idx2) and np.array_equal(x.numpy(), x_np)
        assert yt.dtype == torch.int64 and np.array_equal(yt.numpy(), y_np) and np.array_equal(it.numpy(), idx)
    assert list(_device_blocks(iter([]), torch.device("cpu"))) == []


def test_deferred_check_counts_and_raises_once():
    checks = DeferredChecks(torch.device("cpu"))
    checks.add(torch.zeros(3, 2))
    checks.raise_if_bad()  # nothing bad yet
    checks.add(torch.tensor([[0.0, float("nan")], [1.0, 0.0], [float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="NaN or inf outputs for 2 of 6 images"):
        checks.raise_if_bad()


def test_deferred_predictor_path_gives_the_same_labels():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    pred = as_predictor(net)
    x = torch.randn(20, 2, 4, 4)
    checks = DeferredChecks(pred.device)
    assert torch.equal(pred(x, 3), pred(x, 3, deferred=checks))
    assert checks.n == 20 and int(checks.bad) == 0
    with pytest.raises(ValueError, match="scores for 3 classes"):  # shape errors are still immediate
        pred(x, 4, deferred=checks)


class _NaNWhenPermuted(torch.nn.Module):
    """Finite on the unperturbed images, NaN once channel 0 is pixel-permuted (its first row changes)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("row", x0[:, 0, 0].clone())

    def forward(self, x):
        z = x.flatten(1)[:, :2].clone()
        changed = ~(x[:, 0, 0] == self.row[: len(x)].repeat(len(x) // len(self.row) or 1, 1)[: len(x)]).all(1)
        z[changed] = float("nan")
        return z


def test_nan_only_in_perturbed_passes_is_reported_after_the_run():
    rng = np.random.default_rng(2)
    X = rng.random((16, 2, 6, 6), dtype=np.float32)
    y = np.arange(16) % 2
    model = _NaNWhenPermuted(torch.from_numpy(X))
    with pytest.raises(ValueError, match="NaN or inf outputs for"):
        channel_importance(model, (X, y), n_repeats=2, batch_size=16, random_state=0, progress=False)


@pytest.mark.parametrize("batch_size", [3, 16, 64])
def test_results_unchanged_across_batch_sizes(batch_size):
    rng = np.random.default_rng(3)
    X = rng.random((24, 3, 8, 8), dtype=np.float32)
    y = np.arange(24) % 3
    X[y == 1, 0, :4] += 1.0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3)).eval()
    ref = channel_importance(net, (X, y), n_repeats=4, batch_size=24, random_state=5, progress=False)
    got = channel_importance(net, (X, y), n_repeats=4, batch_size=batch_size, random_state=5, progress=False)
    assert np.array_equal(ref.confusion, got.confusion)
