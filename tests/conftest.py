import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The pre-filled real-data cache beside the repository (../shared/data)."""
    if not SHARED_DATA.exists():
        raise FileNotFoundError(f"real data folder {SHARED_DATA} not found; it is part of the test environment")
    return SHARED_DATA


class DoubleLinear(torch.nn.Module):
    """A random linear classifier evaluated in float64, so argmax ties do not depend on batch size."""

    def __init__(self, n_channels: int, hw: int, n_classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(n_channels * hw, n_classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.double().flatten(1) @ self.w


@pytest.fixture
def toy_problem():
    """Small data where channel 0 carries spatial class signal, channel 1 only noise, channel 2 is empty."""
    rng = np.random.default_rng(0)
    n, K = 240, 3
    y = rng.integers(0, K, n)
    X = rng.normal(0, 1, size=(n, 3, 6, 6)).astype(np.float32)
    X[:, 2] = 0
    for k in range(K):
        X[y == k, 0, k * 2 : k * 2 + 2, :] += 3.0  # a bright band whose position encodes the class
    return X, y, K
