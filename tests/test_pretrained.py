"""Pretrained tutorial models: package data with a hash-checked loader, and cross-validations rebuilt from them.

``scripts/train_tutorial_models.py`` writes ``pxpermute/pretrained/*.pt`` and ``registry.json``; these tests check the
shipped files (size budget, hashes), that a corrupted file is refused, and that a synthetic group rebuilt with
``load_cv`` scores exactly the held-out F1 recorded at training time (the data are regenerated from their seed).
"""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO

from pxpermute import models
from pxpermute.pretrained import cv_or_train, data_fingerprint, load_cv

PRE = REPO / "pxpermute" / "pretrained"
REG = models.pretrained_registry()
needs_models = pytest.mark.skipif(not REG["models"], reason="no pretrained models in pxpermute/pretrained/registry.json "
                                  "(run scripts/train_tutorial_models.py)")


@needs_models
def test_shipped_files_match_registry_and_size_budget():
    files = sorted(PRE.glob("*.pt"))
    assert {p.name for p in files} == {m["file"] for m in REG["models"].values()}
    for name, entry in REG["models"].items():
        data = (PRE / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) <= 2**20, f"{name}: {len(data)} bytes > 1 MB"
    assert sum(p.stat().st_size for p in files) <= 8 * 2**20
    for group, g in REG["groups"].items():
        assert len(g["models"]) == g["n_splits"] and len(g["f1_macro"]) == g["n_splits"], group
        assert 0 <= g["f1_macro_mean"] <= 1


@needs_models
def test_load_pretrained_returns_an_eval_network_with_the_right_shape():
    name = sorted(REG["models"])[0]
    entry = REG["models"][name]
    net = models.load_pretrained(name, device="cpu")
    assert not net.training
    out = net(torch.zeros(2, entry["n_channels"], 32, 32))
    assert out.shape == (2, entry["n_classes"])


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown pretrained model 'no-such-model'"):
        models.load_pretrained("no-such-model")


@needs_models
def test_corrupted_file_is_refused(tmp_path, monkeypatch):
    shutil.copytree(PRE, tmp_path / "pretrained")
    name = sorted(REG["models"])[0]
    path = tmp_path / "pretrained" / REG["models"][name]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(models, "_pretrained_dir", lambda: tmp_path / "pretrained")
    with pytest.raises(OSError, match="SHA-256"):
        models.load_pretrained(name)


@needs_models
@pytest.mark.parametrize("group", [g for g in REG["groups"] if REG["groups"][g]["data_spec"]["data"] == "synthetic"][:1])
def test_load_cv_reproduces_the_recorded_fold_scores(group):
    from pxpermute.datasets import make_synthetic

    g = REG["groups"][group]
    spec = g["data_spec"]
    ds = make_synthetic(spec["preset"], n_samples=spec["n_samples"], image_size=spec["image_size"],
                        random_state=spec["seed"])
    assert data_fingerprint(ds) == g["data_fingerprint"]
    cv = load_cv(group, ds, device="cpu")
    np.testing.assert_allclose(cv.f1_macro, g["f1_macro"], atol=1e-6)
    assert cv.params["pretrained"] == group
    again = cv_or_train(group, ds, n_splits=g["n_splits"], random_state=g["random_state"], **g["train"])
    np.testing.assert_allclose(again.f1_macro, g["f1_macro"], atol=1e-6)  # loaded, not retrained


@needs_models
def test_other_data_are_refused_and_cv_or_train_trains_instead(capsys):
    from pxpermute.datasets import make_synthetic

    group = sorted(REG["groups"])[0]
    ds = make_synthetic("default", n_samples=40, image_size=16, random_state=0)
    with pytest.raises(ValueError, match="was trained on"):
        load_cv(group, ds)
    cv = cv_or_train(group, ds, n_splits=2, random_state=0, model="small_cnn", model_kwargs={"width": 4}, max_epochs=1)
    assert "pretrained" not in cv.params and cv.n_splits == 2
    assert "training 2 folds" in capsys.readouterr().out


def test_registry_is_valid_json_with_tolerance():
    path = PRE / "registry.json"
    if not path.exists():
        pytest.skip("no registry yet (run scripts/train_tutorial_models.py)")
    reg = json.loads(path.read_text())
    assert {"weights", "f1_macro"} <= set(reg["tolerance"])
