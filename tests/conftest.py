"""Shared fixtures of the test suite.

Real data
---------
Tests that read a real (published) file get it through one fixture, never through a hard-coded
folder::

    def test_something(real_file):
        path = real_file("blasi2016_cellcycle/Experiment_1/G1/Ch3_CP0008.tif")

    @pytest.fixture(scope="module")
    def full(real_data_dir):           # several files below one root
        root = real_data_dir(*[e.relpath for e in CELLCYCLE_REGISTRY.values()])
        return load_cellcycle(data_dir=root, download=False)

The files are looked up the way the package looks them up (``pxpermute.datasets._download.cache_dir``):
``$PXPERMUTE_DATA_DIR``, else pooch's user cache. A file that is missing there but listed in one of
the package's download registries is downloaded into that cache when the network allows (never
into a read-only folder, never in CI mode). Otherwise the test is skipped with one line naming the
file and the variable, so a fresh clone without data passes. Both fixtures mark the test
``real_data`` (``pytest -m "not real_data"`` deselects them).

With ``PXPERMUTE_REQUIRE_REAL_DATA=1`` (set by ``.ci/run``) a missing file fails the test instead
of skipping it, nothing is downloaded, and the run fails if any file below the data folder was
created, changed or removed (tests copy a file to ``tmp_path`` before damaging it).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "PXPERMUTE_DATA_DIR"
REQUIRE_ENV = "PXPERMUTE_REQUIRE_REAL_DATA"
REAL_DATA_FIXTURES = ("real_file", "real_data_dir")


def real_data_root() -> Path:
    """The folder real files are read from: ``$PXPERMUTE_DATA_DIR``, else pooch's user cache."""
    from pxpermute.datasets._download import cache_dir

    return cache_dir()


def require_real_data() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _download_registry() -> dict:
    """Every file the package knows how to download, by its relative path in the cache."""
    import pxpermute.datasets as pkg
    from pxpermute.datasets._download import RemoteFile

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception:  # a module that does not import is not this fixture's business
            continue
        for value in vars(mod).values():
            if isinstance(value, dict):
                for entry in value.values():
                    if isinstance(entry, RemoteFile):
                        found[entry.relpath] = entry
    return found


class RealData:
    """Finds real files below :func:`real_data_root`, downloading registry files when possible."""

    def __init__(self) -> None:
        self.root = real_data_root()
        self._offline_reason: str | None = None
        self._registry: dict | None = None

    def _writable_root(self) -> bool:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        return bool(probe.stat().st_mode & 0o222)  # mode bits, not os.access: root may write anywhere

    def _try_download(self, relpath: str) -> str | None:
        """Download ``relpath`` into the cache; return why not (None on success)."""
        if require_real_data():
            return f"{REQUIRE_ENV}=1 forbids downloads"
        if os.environ.get("PXPERMUTE_NO_DOWNLOAD", "") not in ("", "0"):
            return "PXPERMUTE_NO_DOWNLOAD is set"
        if self._offline_reason:
            return self._offline_reason
        if self._registry is None:
            self._registry = _download_registry()
        entry = self._registry.get(relpath)
        if entry is None:
            return "no download registered for it"
        if not self._writable_root():
            return f"{self.root} is read-only"
        from pxpermute.datasets._download import DataUnavailableError, fetch_file

        try:
            fetch_file(entry, data_dir=self.root, download=True)
        except DataUnavailableError as err:
            cause = err.__cause__
            self._offline_reason = "download failed" + (f": {type(cause).__name__}" if cause is not None else "")
            return self._offline_reason
        return None

    def missing(self, relpath: str) -> str:
        """One line saying which file is missing and how to provide it."""
        return (f"real data file {relpath} not found in {self.root}; set {DATA_ENV} to a folder holding it")

    def file(self, relpath: str) -> Path:
        path = self.root / relpath
        if path.exists():
            return path
        why = self._try_download(relpath)
        if why is None and path.exists():
            return path
        msg = self.missing(relpath) + (f" ({why})" if why else "")
        if require_real_data():
            pytest.fail(f"{msg} [{REQUIRE_ENV}=1]", pytrace=False)
        pytest.skip(msg)

    def dir(self, *relpaths: str) -> Path:
        for rel in relpaths:
            self.file(rel)
        return self.root


@pytest.fixture(scope="session")
def _real_data() -> RealData:
    return RealData()


@pytest.fixture(scope="session")
def real_file(_real_data):
    """``real_file(relpath) -> Path`` of a real data file; skips (fails in CI mode) when it is missing."""
    return _real_data.file


@pytest.fixture(scope="session")
def real_data_dir(_real_data):
    """``real_data_dir(*relpaths) -> Path``: the data root, once every listed file is there."""
    return _real_data.dir


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: reads real published files (PXPERMUTE_DATA_DIR); skips without them")
    config._pxpermute_snapshot = _snapshot(real_data_root()) if require_real_data() else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in REAL_DATA_FIXTURES):
            item.add_marker(pytest.mark.real_data)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_pxpermute_snapshot", None)
    if before is None:
        return
    after = _snapshot(real_data_root())
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"tests wrote into the real data folder {real_data_root()} ({len(changed)} files created, "
               f"changed or removed, e.g. {changed[:3]}); copy files to tmp_path instead")
        if tr is not None:
            tr.write_line(f"ERROR: {msg}", red=True)
        else:
            print(msg)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
