"""The small shared pieces: result files, argument checks, the t-interval, the single version string."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import pxpermute
from pxpermute._fileio import ResultFileError, atomic_write, load_bundle, save_bundle
from pxpermute._validation import (
    Bool,
    Float,
    Int,
    Options,
    ParameterError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
    validate_params,
)
from pxpermute.result import ResultFileError as ResultFileErrorFromResult
from pxpermute.stats import t_interval

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- result files
def test_bundle_round_trip_and_kinds(tmp_path):
    arrays = {"a": np.arange(6).reshape(2, 3), "b": np.array([True, False]), "s": np.array(["x", "yz"]), "n": None}
    meta = {"name": "demo", "value": np.float64(0.5), "missing": float("nan"), "nested": {"k": np.int64(3)}}
    path = save_bundle(tmp_path / "r.json", meta, arrays, kind="Demo")
    assert path == tmp_path / "r.json" and (tmp_path / "r.npz").exists()
    got_meta, got = load_bundle(tmp_path / "r", kind="Demo")
    assert got_meta["name"] == "demo" and got_meta["value"] == 0.5 and got_meta["missing"] is None
    assert got_meta["nested"] == {"k": 3} and got_meta["kind"] == "Demo"
    assert set(got) == {"a", "b", "s"}
    np.testing.assert_array_equal(got["a"], arrays["a"])
    np.testing.assert_array_equal(got["s"], arrays["s"])
    with pytest.raises(ResultFileError, match="holds a Demo, not a Other"):
        load_bundle(tmp_path / "r", kind="Other")
    assert ResultFileError is ResultFileErrorFromResult


def test_bundle_damage_is_one_error_type(tmp_path):
    save_bundle(tmp_path / "r", {"x": 1}, {"a": np.ones(100)})
    npz = tmp_path / "r.npz"
    blob = npz.read_bytes()
    npz.write_bytes(blob[:-10])
    with pytest.raises(ResultFileError, match="corrupted or truncated"):
        load_bundle(tmp_path / "r")
    npz.write_bytes(blob)
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(ResultFileError, match="not valid JSON"):
        load_bundle(tmp_path / "r")
    (tmp_path / "r.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ResultFileError, match="not a pxpermute result"):
        load_bundle(tmp_path / "r")
    npz.unlink()
    with pytest.raises(ResultFileError, match="missing"):
        load_bundle(tmp_path / "r")


def test_bundle_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_bundle(tmp_path / "r", {}, {"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="reserved"):
        save_bundle(tmp_path / "r", {"kind": "mine"}, {})
    assert not list(tmp_path.iterdir())


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    import os

    target = atomic_write(tmp_path / "f.bin", b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# --------------------------------------------------------------------------- argument checks
def test_checks_say_what_was_expected_and_what_arrived():
    assert check_int(np.int64(3), "k", low=1) == 3
    assert check_int(None, "k", allow_none=True) is None
    with pytest.raises(ParameterError, match=r"k must be an integer >= 1, got 0$"):
        check_int(0, "k", low=1)
    with pytest.raises(TypeError, match=r"k must be an integer in \[1, 5\], got True"):
        check_int(True, "k", low=1, high=5)
    with pytest.raises(ValueError, match=r"got 2.5"):
        check_int(2.5, "k")
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(ParameterError, match="flag must be True or False, got 1"):
        check_bool(1, "flag")
    assert check_float(1, "p", low=0, high=1) == 1.0
    with pytest.raises(ParameterError, match=r"p must be a number in \(0, 1\), got 1"):
        check_float(1, "p", low=0, high=1, closed="neither")
    with pytest.raises(ParameterError, match="got nan"):
        check_float(float("nan"), "p")
    assert check_choice("f1", "metric", {"f1", "recall"}) == "f1"
    with pytest.raises(ParameterError, match=r"metric must be one of \['f1', 'recall'\], got 'auc'"):
        check_choice("auc", "metric", {"f1", "recall"})
    with pytest.raises(ParameterError, match="got \\[1\\]"):
        check_choice([1], "metric", {"f1"})


def test_random_state_default_is_one_rule():
    assert check_random_state(7) == 7
    a, b = check_random_state(None), check_random_state(None)
    assert isinstance(a, int) and a >= 0 and a != b
    assert check_random_state(None, draw=False) is None
    assert check_random_state(np.random.default_rng(0)) == check_random_state(np.random.default_rng(0))
    with pytest.raises(ParameterError, match="non-negative int or None"):
        check_random_state(-1)


def test_validate_params_decorator():
    @validate_params({"k": Int(1), "mode": Options(("a", "b")), "flag": Bool(), "p": Float(0, 1)})
    def f(x, *, k=2, mode="a", flag=False, p=0.5):
        return x, k, mode, flag, p

    assert f(1, k=3, mode="b") == (1, 3, "b", False, 0.5)
    with pytest.raises(ParameterError, match="k must be an integer >= 1"):
        f(1, k=0)
    with pytest.raises(ParameterError, match="mode must be one of"):
        f(1, mode="c")
    with pytest.raises(TypeError, match="has no parameter"):
        validate_params({"nope": Int()})(f.__wrapped__)


# --------------------------------------------------------------------------- t-interval
def test_t_interval_matches_scipy_and_handles_small_n():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(12, 3))
    ti = t_interval(v, 0.9)
    lo, hi = sps.t.interval(0.9, 11, loc=v.mean(0), scale=sps.sem(v, axis=0))
    np.testing.assert_allclose(ti.low, lo)
    np.testing.assert_allclose(ti.high, hi)
    np.testing.assert_allclose(ti.std, v.std(0, ddof=1))
    one = t_interval([2.0])
    assert one.mean == 2.0 and one.std == 0.0 and np.isnan(one.low) and one.n == 1
    assert np.isnan(t_interval([]).mean)
    # non-finite values are left out column by column
    w = v.copy()
    w[:6, 0] = np.nan
    col = t_interval(w)
    assert col.n.tolist() == [6, 12, 12]
    np.testing.assert_allclose(col.mean[0], v[6:, 0].mean())
    with pytest.raises(ValueError, match="confidence"):
        t_interval(v, 1.5)


# --------------------------------------------------------------------------- version
def test_version_is_written_in_one_place():
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml must not write the version itself"
    assert re.search(r'^dynamic = \[.*"version".*\]', project, re.M)
    assert 'version = {attr = "pxpermute._version.__version__"}' in text
    hits = [p for p in (REPO / "pxpermute").rglob("*.py")
            if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert [p.name for p in hits] == ["_version.py"]
    from importlib.metadata import version

    assert pxpermute.__version__ == version("pxpermute")


# --------------------------------------------------------------------------- data coercion
def test_as_dataset_is_the_one_coercer():
    import torch

    from pxpermute.datasets import IFCDataset, as_dataset

    X = np.zeros((6, 3, 4, 4), np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = as_dataset((torch.from_numpy(X), torch.from_numpy(y)))
    assert isinstance(ds, IFCDataset) and ds.n_channels == 3 and ds.labels.tolist() == y.tolist()
    assert as_dataset(ds) is ds
    with pytest.raises(TypeError, match="dataset must be an IFCDataset or an \\(images, labels\\) pair; got dict"):
        as_dataset({}, what="dataset")


def test_engine_functions_share_the_package_default_seed():
    import inspect

    from pxpermute import channel_importance
    from pxpermute._validation import DEFAULT_RANDOM_STATE
    from pxpermute.stats import stratified_subsample

    for fn in (channel_importance, stratified_subsample):
        assert inspect.signature(fn).parameters["random_state"].default == DEFAULT_RANDOM_STATE == 42, fn.__name__
