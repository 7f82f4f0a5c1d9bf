"""Scale features of the engine: distributed sharding, chunked/adaptive repeats, resumable checkpoints.

The command line (``pxpermute run``) is tested in test_cli.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpermute import channel_importance
from pxpermute.adaptive import AdaptiveK, ranking_settled
from pxpermute.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pxpermute.distributed import shard_indices
from pxpermute.predictor import as_predictor, auto_batch_size

REPO = Path(__file__).resolve().parents[1]


def _data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 4, 8, 8)).astype(np.float32)
    X[y == 1, 0, :4] += 1.5          # strong spatial signal in channel 0
    X[y == 2, 1, :, :4] += 0.8       # weaker one in channel 1
    X[:, 3] = 0.0                    # channel 3 empty
    return X, y


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(24, 3))
    return m.eval()


def _rule_model(x: torch.Tensor) -> torch.Tensor:
    """A fixed classifier: class 1 if the top of channel 0 is bright, class 2 if the left of channel 1 is."""
    a = x[:, 0, :4].mean((1, 2)) - 0.75
    b = x[:, 1, :, :4].mean((1, 2)) - 0.4
    return torch.stack([torch.zeros(len(x)), a, b], 1)


# --------------------------------------------------------------------------- distributed
def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X, y = _data()
        # batch_size = N / world: every rank's blocks are exactly the single-process blocks
        res = channel_importance(_model(), (X, y), n_repeats=6, batch_size=48, random_state=3, progress=False)
        # an odd batch size and the cross-sample perturbation (donors come from other shards)
        res_s = channel_importance(_rule_model, (X, y), n_repeats=5, batch_size=7, perturbation="sample",
                                   random_state=4, progress=False)
        res_a = channel_importance(_rule_model, (X, y), n_repeats=60, batch_size=11, random_state=5, progress=False,
                                   adaptive={"min_repeats": 4, "chunk": 4})
        # random_state=None: rank 0's fresh seed is used everywhere
        res_n = channel_importance(_rule_model, (X, y), n_repeats=3, progress=False, random_state=None)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), cm=res.confusion, base=res.baseline_confusion,
                 cm_s=res_s.confusion, cm_a=res_a.confusion, k_a=res_a.info["n_repeats"],
                 world=res.info["world_size"], nf=res.info["n_forward_images"],
                 seed_n=res_n.info["random_state"], cm_n=res_n.confusion)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_two_ranks_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    X, y = _data()
    ref = channel_importance(_model(), (X, y), n_repeats=6, batch_size=48, random_state=3, progress=False)
    ref_s = channel_importance(_rule_model, (X, y), n_repeats=5, batch_size=7, perturbation="sample",
                               random_state=4, progress=False)
    ref_a = channel_importance(_rule_model, (X, y), n_repeats=60, batch_size=11, random_state=5, progress=False,
                               adaptive={"min_repeats": 4, "chunk": 4})
    outs = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for o in outs:
        assert int(o["world"]) == 2
        np.testing.assert_array_equal(o["cm"], ref.confusion)
        np.testing.assert_array_equal(o["base"], ref.baseline_confusion)
        np.testing.assert_array_equal(o["cm_s"], ref_s.confusion)
        assert int(o["k_a"]) == ref_a.info["n_repeats"]
        np.testing.assert_array_equal(o["cm_a"], ref_a.confusion)
        # forward images are counted over all ranks
        assert int(o["nf"]) == ref.info["n_forward_images"]
    assert int(outs[0]["seed_n"]) == int(outs[1]["seed_n"])
    np.testing.assert_array_equal(outs[0]["cm_n"], outs[1]["cm_n"])
    # every sample is evaluated exactly once per repeat and unit
    assert ref.confusion.sum(axis=(-1, -2)).min() == len(y)


def test_shard_indices_partition():
    idx = np.arange(17) * 3
    shards = [shard_indices(idx, r, 4) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate(shards), idx)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert len(shard_indices(np.arange(1), 1, 2)) == 0
    with pytest.raises(ValueError, match="rank"):
        shard_indices(idx, 4, 4)


# --------------------------------------------------------------------------- chunks and adaptive k
def test_chunks_add_up_exactly():
    X, y = _data()
    full = channel_importance(_rule_model, (X, y), n_repeats=12, random_state=1, progress=False)
    for chunk in (1, 5, 12, 50):
        part = channel_importance(_rule_model, (X, y), n_repeats=12, random_state=1, progress=False, chunk_repeats=chunk)
        np.testing.assert_array_equal(part.confusion, full.confusion)
        np.testing.assert_array_equal(part.importances, full.importances)


def test_adaptive_stops_early_and_matches_fixed_prefix():
    X, y = _data(240)
    fixed = channel_importance(_rule_model, (X, y), n_repeats=100, random_state=2, progress=False)
    ad = channel_importance(_rule_model, (X, y), n_repeats=100, random_state=2, progress=False,
                            adaptive=True)
    k = ad.info["n_repeats"]
    assert ad.n_repeats == k and ad.info["adaptive"]["k_used"] == k
    assert 3 <= k < 100 and k in AdaptiveK().checkpoints(100)  # stops at a planned look
    assert ad.info["adaptive"]["stopped"] in ("resolved", "resolved with ties")
    assert ad.info["adaptive"]["tie_groups"] == [["ch2", "ch3"]]  # both ignored by the model: exactly 0, tied
    np.testing.assert_array_equal(ad.confusion, fixed.confusion[:k])  # the same repeats, just fewer of them
    assert list(ad.ranking) == list(fixed.ranking)
    assert set(ad.ranking[:2]) == {0, 1}  # the two informative channels lead
    assert ad.info["n_forward_images"] < fixed.info["n_forward_images"]


def test_adaptive_top_stops_no_later_and_records_the_goal():
    X, y = _data(240)
    whole = channel_importance(_rule_model, (X, y), n_repeats=100, random_state=2, progress=False, adaptive=True)
    top = channel_importance(_rule_model, (X, y), n_repeats=100, random_state=2, progress=False,
                             adaptive={"top": 1})
    k = top.info["n_repeats"]
    assert k <= whole.info["n_repeats"] and k in AdaptiveK().checkpoints(100)
    assert top.info["adaptive"]["top"] == 1 and top.info["adaptive"]["stopped"].endswith("(top 1)")
    np.testing.assert_array_equal(top.confusion, whole.confusion[:k])
    assert top.ranking[0] == whole.ranking[0]


def test_adaptive_respects_cap_and_deterministic_fill():
    X, y = _data()
    # an unreachable rule (no ties, a level no 12 repeats can reach) runs to the cap
    res = channel_importance(_rule_model, (X, y), n_repeats=12, random_state=0, progress=False,
                             adaptive=AdaptiveK(min_repeats=4, chunk=4, tol=0.0, confidence=1 - 1e-12))
    assert res.info["n_repeats"] == 12 and res.info["adaptive"]["stopped"].startswith("cap")
    occ = channel_importance(_rule_model, (X, y), perturbation="fill", progress=False, adaptive=True)
    assert occ.n_repeats == 1


def test_ranking_settled_rule():
    rng = np.random.default_rng(0)
    clear = np.array([0.5, 0.2, 0.0]) + rng.normal(0, 0.01, (20, 3))
    assert ranking_settled(clear) == (True, "resolved")
    # two units near zero differ by noise only: tied when their confidence sequence fits inside +/- tol
    tie = np.array([0.5, 0.001, 0.0]) + rng.normal(0, 0.002, (20, 3))
    hist: list = []
    assert ranking_settled(tie, rule=AdaptiveK(tol=0.01), history=hist) == (True, "resolved with ties")
    assert hist[-1].tie_groups == [[1, 2]]
    assert not ranking_settled(tie, rule=AdaptiveK(tol=0.0))[0]
    # overlapping sequences and no ties: unsettled however long the ranking stays the same (no "stable" shortcut,
    # which is not valid under optional stopping)
    noisy = np.stack([0.5 + rng.normal(0, 0.3, 20), 0.45 + rng.normal(0, 0.3, 20), np.zeros(20)], 1)
    rule = AdaptiveK(tol=0.0)
    assert [ranking_settled(noisy[:n], rule=rule) for n in (10, 12, 14)] == [(False, "unsettled")] * 3


@pytest.mark.parametrize("bad, err", [
    ({"chunk": 0}, ValueError), ({"min_repeats": 1}, ValueError), ({"bogus": 1}, TypeError),
    ("yes", TypeError), ({"confidence": 1.5}, ValueError), ({"tol": -0.1}, ValueError), ({"top": 0}, ValueError),
    ({"top": True}, ValueError),
])
def test_adaptive_bad_options(bad, err):
    X, y = _data(24)
    with pytest.raises(err):
        channel_importance(_rule_model, (X, y), n_repeats=5, progress=False, adaptive=bad)


def test_bad_chunk_repeats():
    X, y = _data(24)
    with pytest.raises(ValueError, match="chunk_repeats"):
        channel_importance(_rule_model, (X, y), n_repeats=5, progress=False, chunk_repeats=0)


# --------------------------------------------------------------------------- checkpoints
def _die_after(model: torch.nn.Module, n: int) -> None:
    """Make ``model`` raise after ``n`` forward passes (a killed job); its weights stay the same."""
    forward = model.forward
    left = [n]

    def dying(x):
        left[0] -= 1
        if left[0] < 0:
            raise KeyboardInterrupt("simulated interruption")
        return forward(x)

    model.forward = dying


def test_checkpoint_resume_after_interruption_is_identical(tmp_path):
    X, y = _data()
    ck = tmp_path / "run.ckpt"
    model = _model()
    # no bootstrap: its counts are pooled over repeats, so a smaller cap could not reuse the file (tested below)
    opts = dict(n_repeats=30, random_state=7, batch_size=32, progress=False, n_bootstrap=0)
    ref = channel_importance(model, (X, y), **opts)
    _die_after(model, 120)
    with pytest.raises(KeyboardInterrupt):
        channel_importance(model, (X, y), checkpoint=ck, chunk_repeats=4, **opts)
    del model.forward  # "restart the job"
    state = load_checkpoint(ck)
    done = state["confusion"].shape[0]
    assert 0 < done < 30 and done % 4 == 0
    res = channel_importance(model, (X, y), checkpoint=ck, chunk_repeats=4, **opts)
    assert res.info["resumed_repeats"] == done
    np.testing.assert_array_equal(res.confusion, ref.confusion)
    np.testing.assert_array_equal(res.baseline_confusion, ref.baseline_confusion)
    np.testing.assert_array_equal(res.importances, ref.importances)
    # only the missing repeats were computed
    assert res.info["n_forward_images"] == len(y) * 4 * (30 - done)
    # a later call with a larger cap continues from the finished file; a smaller cap uses its prefix
    more = channel_importance(model, (X, y), checkpoint=ck, chunk_repeats=4, **{**opts, "n_repeats": 34})
    assert more.info["resumed_repeats"] == 30 and more.n_repeats == 34
    np.testing.assert_array_equal(more.confusion[:30], ref.confusion)
    less = channel_importance(model, (X, y), checkpoint=ck, **{**opts, "n_repeats": 10})
    assert less.info["n_forward_images"] == 0
    np.testing.assert_array_equal(less.confusion, ref.confusion[:10])


def test_adaptive_resume_gives_same_stop(tmp_path):
    X, y = _data(240)
    opts = dict(n_repeats=100, random_state=2, progress=False, adaptive=True, n_bootstrap=0)
    ref = channel_importance(_rule_model, (X, y), **opts)
    ck = tmp_path / "a.ckpt"
    # a checkpoint that holds more repeats than the adaptive run needs (from a fixed-k run)
    channel_importance(_rule_model, (X, y), n_repeats=100, random_state=2, progress=False, checkpoint=ck, chunk_repeats=50,
                       n_bootstrap=0)
    res = channel_importance(_rule_model, (X, y), checkpoint=ck, **opts)
    assert res.info["n_repeats"] == ref.info["n_repeats"]
    np.testing.assert_array_equal(res.confusion, ref.confusion)


def _corrupt(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "flip":
        blob[-50] ^= 0xFF
    elif how == "truncate":
        blob = blob[: len(blob) - 100]
    elif how == "header":
        blob[25] = ord("}")
    elif how == "garbage":
        blob = bytearray(b"hello world\n")
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("how", ["flip", "truncate", "header", "garbage"])
def test_corrupted_checkpoint_is_detected(tmp_path, how):
    X, y = _data(48)
    ck = tmp_path / "c.ckpt"
    opts = dict(n_repeats=6, random_state=0, progress=False, checkpoint=ck, n_bootstrap=0)
    channel_importance(_rule_model, (X, y), chunk_repeats=3, **opts)
    _corrupt(ck, how)
    with pytest.raises(CheckpointError, match="corrupted|truncated|not a pxpermute checkpoint"):
        channel_importance(_rule_model, (X, y), **opts)


def test_checkpoint_from_other_configuration_is_rejected(tmp_path):
    X, y = _data(48)
    ck = tmp_path / "c.ckpt"
    model = _model()
    base = dict(n_repeats=4, random_state=0, progress=False, checkpoint=ck)
    channel_importance(model, (X, y), **base)
    with pytest.raises(CheckpointError, match="random_state: 0 vs 1"):
        channel_importance(model, (X, y), **{**base, "random_state": 1})
    with pytest.raises(CheckpointError, match="units"):
        channel_importance(model, (X, y), groups=[[0, 1], [2], [3]], **base)
    with pytest.raises(CheckpointError, match="perturbation"):
        channel_importance(model, (X, y), perturbation="sample", **base)
    X2 = X.copy()
    X2[0, 0, 0, 0] += 1.0  # one pixel of a probed image
    with pytest.raises(CheckpointError, match="data differs"):
        channel_importance(model, (X2, y), **base)
    with pytest.raises(CheckpointError, match="data differs"):
        channel_importance(model, (X[:40], y[:40]), **base)
    y2 = y.copy()
    y2[5] = (y2[5] + 1) % 3
    with pytest.raises(CheckpointError, match="data differs"):
        channel_importance(model, (X, y2), **base)
    other = _model()
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] += 1e-4
    with pytest.raises(CheckpointError, match="model differs"):
        channel_importance(other, (X, y), **base)
    # the untouched configuration still resumes (the metric does not matter) ...
    res = channel_importance(model, (X, y), metric="recall", **base)
    assert res.info["resumed_repeats"] == 4 and res.info["n_forward_images"] == 0
    # ... but the median's bootstrap needs per-repeat counts that a mean run does not store:
    # refused by name instead of resampled from the wrong layout
    with pytest.raises(CheckpointError, match="bootstrap_layout"):
        channel_importance(model, (X, y), aggregate="median", **base)


def test_checkpoint_file_is_written_atomically(tmp_path, monkeypatch):
    X, y = _data(48)
    ck = tmp_path / "c.ckpt"
    channel_importance(_rule_model, (X, y), n_repeats=4, random_state=0, progress=False, checkpoint=ck, chunk_repeats=2)
    before = ck.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ck, {"x": 1}, np.zeros((3, 3)), np.zeros((1, 4, 3, 3)), 0)
    assert ck.read_bytes() == before  # the old file is intact, no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


# --------------------------------------------------------------------------- torchrun
_TORCHRUN_SCRIPT = """
import sys
import numpy as np
import torch
from pxpermute import channel_importance
from pxpermute.distributed import init_distributed

rank, world, _ = init_distributed()
torch.manual_seed(0)
X, y = np.load(sys.argv[1] + "/data.npz").values()
model = torch.load(sys.argv[1] + "/model.pt", weights_only=False)
res = channel_importance(model, (X, y), n_repeats=4, batch_size=32, random_state=1, progress=False)
np.savez(sys.argv[1] + f"/rank{rank}.npz", cm=res.confusion, world=res.info.get("world_size", 1))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(tmp_path):
    X, y = _data(64)
    model = _model()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    torch.save(model, tmp_path / "model.pt")
    script = tmp_path / "run.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = channel_importance(model, (X, y), n_repeats=4, random_state=1, batch_size=32, progress=False)
    for r in range(2):
        out = np.load(tmp_path / f"rank{r}.npz")
        assert int(out["world"]) == 2
        np.testing.assert_array_equal(out["cm"], ref.confusion)


def test_checkpoint_roundtrip_with_pooled_extras(tmp_path):
    rng = np.random.default_rng(0)
    fp = {"random_state": 1, "units": [[0], [1]]}
    base, conf = rng.integers(0, 9, (3, 3)), rng.integers(0, 9, (5, 2, 3, 3))
    boot = {"baseline": rng.integers(0, 9, (7, 3, 3)), "confusion": rng.integers(0, 9, (7, 2, 3, 3))}
    save_checkpoint(tmp_path / "x", fp, base, conf, 123, extras=boot)
    st = load_checkpoint(tmp_path / "x", fp)
    np.testing.assert_array_equal(st["baseline"], base)
    np.testing.assert_array_equal(st["confusion"], conf)
    for k in boot:
        np.testing.assert_array_equal(st["extras"][k], boot[k])
    assert st["n_forward_images"] == 123 and st["header"]["repeats_done"] == 5
    with pytest.raises(CheckpointError, match="random_state: 1 vs 2"):
        load_checkpoint(tmp_path / "x", {**fp, "random_state": 2})


def test_auto_batch_size_gives_identical_result():
    X, y = _data(48)
    ref = channel_importance(_rule_model, (X, y), n_repeats=3, random_state=0, progress=False, batch_size=5)
    auto = channel_importance(_rule_model, (X, y), n_repeats=3, random_state=0, progress=False, batch_size="auto")
    np.testing.assert_array_equal(auto.confusion, ref.confusion)
    assert auto.info["batch_size"] == 256
    # large images get smaller CPU batches (bounded input bytes)
    assert auto_batch_size(as_predictor(_rule_model), (8, 128, 128), n_classes=3) == 128
    assert auto_batch_size(as_predictor(_rule_model), (12, 512, 512), n_classes=3) == 16
    with pytest.raises(ValueError, match="'auto'"):
        channel_importance(_rule_model, (X, y), n_repeats=3, progress=False, batch_size="big")


@pytest.mark.slow
def test_runtime_vs_loco_small():
    from pxpermute import scale  # the old import path keeps working
    from pxpermute.datasets.synthetic import make_synthetic

    ds = make_synthetic("apoptotic", n_samples=60, image_size=16, random_state=0)
    r = scale.runtime_vs_loco(ds, n_splits=2, folds=1, n_repeats=3, model="small_cnn", model_kwargs={"width": 4},
                              max_epochs=1)
    assert r["pxpermute_importance"].shape == (1, 2) and r["loco_importance"].shape == (1, 2)
    assert r["speedup"] == pytest.approx(r["loco_s_per_fold"] / r["pxpermute_s_per_fold"])
    assert r["loco_s_per_fold_paper"] == pytest.approx(r["loco_s_per_fold"] + r["train_s_per_model"])
    assert sorted(r["pxpermute_ranking"]) == sorted(r["loco_ranking"]) == sorted(ds.channel_names)
    assert len(r["adaptive_k_used"]) == 1 and 1 <= r["adaptive_k_used"][0] <= 3


def test_ranking_settled_needs_a_gap_larger_than_the_noise():
    # a 0.005 gap under per-repeat noise 0.01 (SD of the difference 0.014): at 40 repeats the
    # simultaneous interval's half-width (~0.0076) exceeds the gap, so the pair is resolved only when the
    # observed gap happens to be large (about 1 run in 7; 0.35 is a wide band over 200 runs), and never
    # in the wrong direction; at 4,000 repeats it is resolved every time
    hits, wrong = 0, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        imp = np.stack([np.full(40, 1.0), 0.035 + rng.normal(0, 0.01, 40), 0.03 + rng.normal(0, 0.01, 40)], 1)
        h = []
        settled, _ = ranking_settled(imp, rule=AdaptiveK(tol=0.0), history=h, cap=100)
        hits += settled
        wrong += h[-1].order != [0, 1, 2] and settled
    assert hits / 200 < 0.35 and wrong == 0
    rng = np.random.default_rng(3)
    imp = np.stack([np.full(4000, 1.0), 0.035 + rng.normal(0, 0.01, 4000), 0.03 + rng.normal(0, 0.01, 4000)], 1)
    assert ranking_settled(imp, rule=AdaptiveK(tol=0.0)) == (True, "resolved")


# --------------------------------------------------------------------------- the group-sequential rule
def test_group_sequential_looks_and_decisions():
    from pxpermute.adaptive import group_sequential_ranking

    rule = AdaptiveK()
    assert rule.checkpoints(100) == [3, 5, 8, 12, 18, 27, 41, 62, 93, 100]
    assert AdaptiveK(min_repeats=5, chunk=5, growth=1.0).checkpoints(20) == [5, 10, 15, 20]
    rng = np.random.default_rng(5)
    R = 12
    imp = np.column_stack([rng.normal(0.4, 0.01, R), rng.normal(0.1, 0.01, R), np.zeros(R), np.zeros(R)])
    d = group_sequential_ranking(imp, rule.checkpoints(100), min_scale=1 / 500)
    assert d.settled and d.order == [0, 1, 2, 3] and d.tie_groups == [[2, 3]]
    assert d.extra["looks_used"] == [3, 5, 8, 12]
    assert d.extra["alpha_per_look"] == pytest.approx(0.05 / 6 / 10)
    # more looks planned -> less alpha per look -> wider intervals
    wide = group_sequential_ranking(imp, list(range(3, 101)), min_scale=1 / 500)
    assert wide.pairs[0]["high"] - wide.pairs[0]["low"] > d.pairs[0]["high"] - d.pairs[0]["low"]
    # before the first look nothing is decided; a near tie with tol = 0 stays open
    assert not group_sequential_ranking(imp[:2], rule.checkpoints(100)).settled
    close = np.column_stack([rng.normal(0.2, 0.02, 60), rng.normal(0.2, 0.02, 60)])
    assert group_sequential_ranking(close, rule.checkpoints(100), tol=0.0).pairs[0]["status"] == "open"
    with pytest.raises(Exception, match="growth"):
        AdaptiveK(growth=0.5)


def test_group_sequential_wrong_order_is_rare_under_optional_stopping():
    # a close pair (true gap 0.004, per-repeat SD 0.01) next to a dominant unit: stopping at the first look where
    # the rule allows must rarely misorder it (the guarantee: <= 5 % familywise)
    rule = AdaptiveK(tol=0.0)
    rng = np.random.default_rng(6)
    wrong = stopped_early = 0
    for _ in range(200):
        imp = np.column_stack([rng.normal(0.304, 0.01, 100), rng.normal(0.300, 0.01, 100), rng.normal(0.5, 0.01, 100)])
        for t in rule.checkpoints(100):
            settled, _ = ranking_settled(imp[:t], rule=rule, cap=100)
            if settled:
                break
        stopped_early += settled and t < 100
        m = imp[:t].mean(0)
        wrong += settled and m[1] > m[0]
    assert wrong / 200 <= 0.05
    assert stopped_early > 0  # the rule does stop early on some runs (the gap is resolvable)
