"""Pretrained tutorial models: package data with a hash-checked loader, and cross-validations rebuilt from them.

``scripts/train_tutorial_models.py`` writes ``pxpermute/pretrained/*.pt`` and ``registry.json``; these tests check the
shipped files (size budget, hashes), that the registry is what the script's GROUPS say, that a corrupted file is
refused, and that the cell-cycle groups rebuilt with ``load_cv`` on the real data score exactly the held-out F1
recorded at training time.
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
# The registry and its models ship with the package: every test below runs (no skip); an empty or stale registry
# fails test_registry_lists_every_group_of_the_training_script.


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


def test_other_data_are_refused_and_cv_or_train_trains_instead(capsys):
    from pxpermute.datasets import make_synthetic

    group = sorted(REG["groups"])[0]
    ds = make_synthetic("default", n_samples=40, image_size=16, random_state=0)
    with pytest.raises(ValueError, match="was trained on"):
        load_cv(group, ds)
    cv = cv_or_train(group, ds, n_splits=2, random_state=0, model="small_cnn", model_kwargs={"width": 4}, max_epochs=1)
    assert "pretrained" not in cv.params and cv.n_splits == 2
    assert "training 2 folds" in capsys.readouterr().out


def _training_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tutorial_models", REPO / "scripts" / "train_tutorial_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_registry_lists_every_group_of_the_training_script():
    """The shipped registry.json is what scripts/train_tutorial_models.py writes for its current GROUPS."""
    reg = json.loads((PRE / "registry.json").read_text())
    script = _training_script()
    assert reg["tolerance"] == script.TOLERANCE and {"weights", "f1_macro"} <= set(reg["tolerance"])
    # shipped: the cell-cycle groups (the synthetic groups of GROUPS are not shipped; lessons train those)
    assert {"cellcycle_all", "cellcycle_stainfree"} <= set(reg["groups"]) <= set(script.GROUPS)
    assert set(reg["models"]) == {m for g in reg["groups"].values() for m in g["models"]}
    for name, g in reg["groups"].items():
        spec = script.GROUPS[name]
        assert g["train"] == json.loads(json.dumps(spec["train"])), f"{name}: trained with other options than GROUPS"
        assert g["random_state"] == spec["seed"] and g["n_splits"] == spec["n_splits"], name
        assert g["models"] == [f"{name}_fold{i}" for i in range(spec["n_splits"])], name
        for i, m in enumerate(g["models"]):
            entry = reg["models"][m]
            assert entry["group"] == name and entry["fold"] == i and entry["model_kwargs"] == spec["train"]["model_kwargs"]
            assert 1 <= entry["epochs"] <= spec["train"]["max_epochs"]
            assert entry["f1_macro_test"] == pytest.approx(g["f1_macro"][i], abs=1e-6)
        assert g["f1_macro_mean"] == pytest.approx(np.mean(g["f1_macro"]), abs=1e-5)


def test_cellcycle_groups_are_the_notebook_folds_on_deduplicated_data():
    """The cell-cycle tutorial models: 5 folds (seed 42) of the 3,418 cells left after dropping the exact duplicate."""
    for name in ("cellcycle_all", "cellcycle_stainfree"):
        g = REG["groups"][name]
        assert g["n_cells"] == 3418 and g["n_splits"] == 5 and g["random_state"] == 42, name
    assert REG["groups"]["cellcycle_all"]["channels"] == ["BF", "DNA", "DF"]
    assert REG["groups"]["cellcycle_stainfree"]["channels"] == ["BF", "DF"]
    # chance F1-macro for 7 phases is about 0.14; the recorded scores are 0.52 (all) and 0.36 (stain-free)
    assert REG["groups"]["cellcycle_all"]["f1_macro_mean"] >= 0.45
    assert REG["groups"]["cellcycle_all"]["f1_macro_mean"] > REG["groups"]["cellcycle_stainfree"]["f1_macro_mean"]


@pytest.mark.parametrize("group", ["cellcycle_all", "cellcycle_stainfree"])
def test_load_cv_reproduces_the_recorded_cellcycle_scores(group, real_data_dir):
    from pxpermute.datasets.cellcycle import CELLCYCLE_REGISTRY, load_cellcycle

    root = real_data_dir(*(entry.relpath for entry in CELLCYCLE_REGISTRY.values()))
    ds = load_cellcycle(data_dir=root, download=False)
    g = REG["groups"][group]
    assert data_fingerprint(ds) == g["data_fingerprint"]
    cv = load_cv(group, ds, device="cpu")
    np.testing.assert_allclose(cv.f1_macro, g["f1_macro"], atol=1e-6)
    assert cv.channels == g["channels"]
