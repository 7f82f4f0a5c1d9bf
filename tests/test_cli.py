"""`pxpermute run | fetch | info` end to end: safe model loading, one-line errors, engine parity, offline fetch.

The table ``BAD`` lists hostile but plausible invocations; each row is the argv, the
expected exit status and a piece of the message.  A new case is one line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpermute import ImportanceResult, channel_importance
from pxpermute.cli import main
from pxpermute.io import (
    ModelFileError,
    UnsafeModelFileError,
    check_model_fits,
    inspect_model_file,
    load_data,
    load_model,
    save_model,
)
from pxpermute.models import SmallCNN

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["BF", "DNA", "SSC", "empty"]


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 4, 16, 16)).astype(np.float32)
    X[y == 1, 0, :8] += 2.0
    X[y == 2, 1, :, :8] += 2.0
    X[:, 3] = 0.0
    return X, y


def _model(c: int = 4, k: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(c, k, width=4).eval()


class _Evil:
    """Unpickling this runs ``os.mkdir(marker)``: the stand-in for code hidden in a model file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    X, y = _data()
    np.savez(d / "data.npz", X=X, y=y, channel_names=np.array(CHANNELS))
    m = _model()
    torch.save(m.state_dict(), d / "weights.pt")
    save_model(m, d / "model.pxp", arch="small_cnn", channel_names=CHANNELS)
    torch.jit.script(m).save(str(d / "scripted.pt"))
    torch.save(m, d / "pickled.pt")
    torch.save({"model": _Evil(str(d / "pwned"))}, d / "evil.pt")
    torch.save(_model(c=5).state_dict(), d / "five_channels.pt")
    torch.save(_model(k=2).state_dict(), d / "two_classes.pt")
    raw = (d / "weights.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    ts = (d / "scripted.pt").read_bytes()
    (d / "truncated_script.pt").write_bytes(ts[: len(ts) // 2])
    (d / "junk.pt").write_bytes(b"this is not a model\n" * 10)
    (d / "empty.pt").write_bytes(b"")
    (d / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    npz = (d / "data.npz").read_bytes()
    (d / "truncated.npz").write_bytes(npz[: len(npz) // 2])
    np.savez(d / "no_x.npz", images_wrong=X, y=y)
    np.savez(d / "three_d.npz", X=X[:, 0], y=y)
    np.savez(d / "float_labels.npz", X=X, y=np.linspace(0.1, 0.9, len(y)))
    Xn = X.copy()
    Xn[5, 1, 2, 2] = np.nan
    np.savez(d / "nan.npz", X=Xn, y=y)
    (d / "data.csv").write_text("a,b\n1,2\n")
    from pxpermute.datasets import write_hdf5_dataset

    write_hdf5_dataset(d / "data.h5", X, y, channel_names=CHANNELS)
    h5 = (d / "data.h5").read_bytes()
    (d / "truncated.h5").write_bytes(h5[:1000])
    (d / "a_file").write_text("not a folder")
    (d / "broken.ckpt").write_bytes(b"garbage checkpoint")
    return d


def _run_main(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_one_line_error(err: str, out: str) -> None:
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, err
    assert all(ln.startswith("pxpermute") for ln in lines), err


# (argv, exit status, part of the message); {d} is the fixture folder
RUN = ["run", "--data", "{d}/data.npz", "--k", "2", "--quiet", "--no-figures", "--out", "{d}/out/res"]
BAD = [
    # bad invocations
    (["run", "--data", "{d}/data.npz"], 2, "--model"),
    (["frobnicate"], 2, "invalid choice"),
    ([*RUN, "--model", "{d}/model.pxp", "--frobnicate"], 2, "unrecognized arguments"),
    ([*RUN, "--model", "{d}/model.pxp", "--k", "0"], 2, "integer >= 1"),
    ([*RUN, "--model", "{d}/model.pxp", "--k", "ten"], 2, "'ten'"),
    ([*RUN, "--model", "{d}/model.pxp", "--perturbation", "pixels"], 2, "unknown ['pixels']"),
    ([*RUN, "--model", "{d}/model.pxp", "--metric", "auc"], 2, "invalid choice"),
    ([*RUN, "--model", "{d}/model.pxp", "--max-samples", "1.5"], 2, "(0, 1]"),
    ([*RUN, "--model", "{d}/model.pxp", "--max-samples", "0"], 2, "count must be >= 1"),
    ([*RUN, "--model", "{d}/model.pxp", "--fill-value", "nan"], 2, "finite"),
    ([*RUN, "--model", "{d}/model.pxp", "--batch-size", "0"], 2, "'auto'"),
    ([*RUN, "--model", "{d}/model.pxp", "--confidence", "1"], 2, "(0, 1)"),
    ([*RUN, "--model", "{d}/model.pxp", "--n-bootstrap", "-1"], 2, "integer >= 0"),
    ([*RUN, "--model", "{d}/model.pxp", "--adaptive"], 2, "first look comes after 3 repeats"),
    ([*RUN, "--model", "{d}/model.pxp", "--adaptive-growth", "0.5"], 2, "[1, 10]"),
    ([*RUN, "--model", "{d}/model.pxp", "--perturbation", "pixel,sample", "--checkpoint", "{d}/c.ckpt"], 2,
     "one perturbation per run"),
    ([*RUN, "--model", "{d}/model.pxp", "--group", "=BF"], 2, "empty group name"),
    ([*RUN, "--model", "{d}/model.pxp", "--channel-names", "a,a,b,c"], 2, "duplicate names"),
    ([*RUN, "--model", "{d}/model.pxp", "--arch", "vgg"], 2, "invalid choice"),
    ([*RUN, "--model", "{d}/model.pxp", "--device", "tpu:x"], 2, "invalid device"),
    # missing, empty, truncated or foreign model files
    ([*RUN, "--model", "{d}/nope.pt"], 1, "does not exist"),
    ([*RUN, "--model", "{d}"], 1, "is a folder"),
    ([*RUN, "--model", "{d}/empty.pt"], 1, "is empty"),
    ([*RUN, "--model", "{d}/truncated.pt"], 1, "truncated or corrupted"),
    ([*RUN, "--model", "{d}/truncated_script.pt"], 1, "truncated or corrupted"),
    ([*RUN, "--model", "{d}/junk.pt"], 1, "not a PyTorch model file"),
    ([*RUN, "--model", "{d}/junk.safetensors", "--arch", "small_cnn"], 1, "safetensors"),
    ([*RUN, "--model", "pretrained:no_such_model"], 1, "no_such_model"),
    # files that would run code: refused with exit status 2
    ([*RUN, "--model", "{d}/pickled.pt"], 2, "--trust-pickle"),
    ([*RUN, "--model", "{d}/evil.pt"], 2, "posix.mkdir"),
    # weights without or with the wrong architecture
    ([*RUN, "--model", "{d}/weights.pt"], 1, "pass --arch small_cnn"),
    ([*RUN, "--model", "{d}/weights.pt", "--arch", "resnet18"], 1, "look like 'small_cnn'"),
    ([*RUN, "--model", "{d}/model.pxp", "--arch", "resnet18"], 1, "holds small_cnn weights"),
    ([*RUN, "--model", "{d}/weights.pt", "--arch", "small_cnn", "--channels", "5"], 1, "weights are for 4 channels"),
    ([*RUN, "--model", "{d}/weights.pt", "--arch", "small_cnn", "--classes", "7"], 1, "weights are for 3 classes"),
    # a model that does not fit the data
    ([*RUN, "--model", "{d}/five_channels.pt", "--arch", "small_cnn"], 1, "does not fit the data"),
    ([*RUN, "--model", "{d}/two_classes.pt", "--arch", "small_cnn"], 1, "predicts 2 classes"),
    # data files
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/nope.npz", "--out", "{d}/out/r"], 1, "does not exist"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/truncated.npz", "--out", "{d}/out/r"], 1,
     "truncated or corrupted"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/no_x.npz", "--out", "{d}/out/r"], 1, "must contain arrays 'X'"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/three_d.npz", "--out", "{d}/out/r"], 1, "(N, C, H, W)"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/float_labels.npz", "--out", "{d}/out/r"], 1, "integer"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/data.csv", "--out", "{d}/out/r"], 1, "unsupported data file"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/truncated.h5", "--out", "{d}/out/r"], 1, "HDF5"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/data.h5", "--images-key", "pix", "--out", "{d}/out/r"], 1,
     "no dataset 'pix'"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/nan.npz", "--k", "2", "--quiet", "--out", "{d}/out/r"], 1,
     "NaN"),
    # names and groups
    ([*RUN, "--model", "{d}/model.pxp", "--group", "BF,XYZ"], 1, "unknown channel name 'XYZ'"),
    ([*RUN, "--model", "{d}/model.pxp", "--group", "BF,9"], 1, "out of range"),
    ([*RUN, "--model", "{d}/model.pxp", "--group", "a=BF", "--group", "a=DNA"], 1, "two groups are named 'a'"),
    ([*RUN, "--model", "{d}/model.pxp", "--channel-names", "a,b"], 1, "gives 2 names, but the data has 4 channels"),
    ([*RUN, "--model", "{d}/model.pxp", "--class-names", "x,y"], 1, "there are 3 classes"),
    # devices
    ([*RUN, "--model", "{d}/model.pxp", "--device", "cuda:99"], 1, "cuda:99"),
    # output paths, checked before the run
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/data.npz", "--out", "{d}/a_file/res"], 1,
     "is a file, not a folder"),
    (["run", "--model", "{d}/model.pxp", "--data", "{d}/data.npz", "--out", "{d}/a_file/sub/"], 1,
     "is a file, not a folder"),
    ([*RUN, "--model", "{d}/model.pxp", "--checkpoint", "{d}/a_file/c.ckpt"], 1, "--checkpoint"),
    ([*RUN, "--model", "{d}/model.pxp", "--checkpoint", "{d}/broken.ckpt"], 1, "broken.ckpt"),
    # other commands
    (["fetch", "no_such_dataset"], 2, "unknown item"),
    (["fetch"], 2, "--all"),
    (["demo", "--preset", "nope", "--out", "{d}/demo"], 2, "unknown preset"),
    (["demo", "--test-fraction", "1.5", "--out", "{d}/demo"], 2, "(0, 1)"),
    (["demo", "--out", "{d}/a_file"], 1, "is a file"),
]


@pytest.mark.parametrize("argv, code, message", BAD, ids=[f"{i:02d}-{m[:30]}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_invocation_is_one_line(files, capsys, argv, code, message):
    rc, out, err = _run_main([a.format(d=files) for a in argv], capsys)
    assert rc == code, err
    assert message in err, err
    _assert_one_line_error(err, out)


def test_debug_shows_the_traceback(files, capsys):
    rc, out, err = _run_main(["--debug", *[a.format(d=files) for a in RUN], "--model", files / "junk.pt"], capsys)
    assert rc == 1 and "Traceback" in err and "not a PyTorch model file" in err
    rc, out, err = _run_main([*[a.format(d=files) for a in RUN], "--model", files / "junk.pt", "--debug"], capsys)
    assert rc == 1 and "Traceback" in err


def test_no_output_without_a_writable_path_and_no_half_results(files, capsys):
    out = files / "a_file" / "res"
    rc, _, err = _run_main([*[a.format(d=files) for a in RUN[:-2]], "--model", files / "model.pxp", "--out", out],
                           capsys)
    assert rc == 1 and "--out" in err
    assert not list(files.glob("out/**/*.json"))  # nothing from a failed run


def test_real_process_errors_are_one_line(files):
    """The same as the table, through `python -m pxpermute` (what a user's shell sees)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pxpermute", *[a.format(d=files) for a in RUN], "--model", str(files / "evil.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "error:" in ln]) == 1
    assert not (files / "pwned").exists()


# --------------------------------------------------------------------------- safe loading
def test_deciding_never_runs_the_files_code(files):
    marker = files / "pwned"
    info = inspect_model_file(files / "evil.pt")
    assert info.kind == "pickle" and "posix.mkdir" in info.imports
    with pytest.raises(UnsafeModelFileError):
        load_model(files / "evil.pt")
    with pytest.raises(UnsafeModelFileError, match="trust-pickle"):
        load_model(files / "pickled.pt", arch="small_cnn")
    assert not marker.exists()
    # the opt-in really unpickles (which is why it is opt-in): the hidden call runs
    with pytest.raises(ModelFileError):
        load_model(files / "evil.pt", trust_pickle=True)  # a dict holding None is not a model
    assert marker.is_dir()
    marker.rmdir()


def test_every_safe_format_loads_the_same_network(files):
    X, _ = _data(8)
    x = torch.from_numpy(X)
    ref = _model()(x)
    kinds = {}
    for name, kw in [("weights.pt", {"arch": "small_cnn"}), ("model.pxp", {}), ("scripted.pt", {}),
                     ("pickled.pt", {"trust_pickle": True})]:
        kinds[name] = inspect_model_file(files / name).kind
        with torch.no_grad():
            torch.testing.assert_close(load_model(files / name, **kw)(x), ref)
    assert kinds == {"weights.pt": "state_dict", "model.pxp": "pxpermute", "scripted.pt": "torchscript",
                     "pickled.pt": "pickle"}
    info = inspect_model_file(files / "model.pxp")
    assert (info.arch, info.n_channels, info.n_classes, info.channel_names) == ("small_cnn", 4, 3, CHANNELS)


def test_trained_network_with_normalization_round_trips(tmp_path):
    from pxpermute.models import PercentileNormalization
    from pxpermute.training import build_network

    net = build_network(4, 3, model="small_cnn", model_kwargs={"width": 4},
                        normalizer=PercentileNormalization([0, 1, 2, 3], [2, 3, 4, 9])).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    loaded = load_model(tmp_path / "net.pt", arch="small_cnn")
    x = torch.randn(3, 4, 16, 16) * 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert loaded.normalize.high.tolist() == [2, 3, 4, 9]


def test_check_model_fits_names_the_problem(files):
    ds = load_data(files / "data.npz")
    assert check_model_fits(_model(), ds) == 3
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(4, 16, 16\)"):
        check_model_fits(_model(c=5), ds)


# --------------------------------------------------------------------------- engine parity
def test_run_matches_the_engine_with_every_option(files, capsys):
    X, y = _data()
    out = files / "parity" / "res"
    argv = ["run", "--model", files / "model.pxp", "--data", files / "data.h5", "--k", "4", "--seed", "7",
            "--metric", "recall", "--aggregate", "median", "--group", "stains=DNA,SSC", "--group", "BF",
            "--n-bootstrap", "9", "--max-samples", "0.5", "--batch-size", "7", "--class-names", "G1,S,G2",
            "--confidence", "0.9", "--independent-group-permutation", "--chunk-repeats", "2", "--out", out,
            "--quiet", "--no-figures"]
    rc, text, err = _run_main(argv, capsys)
    assert rc == 0, err
    res = ImportanceResult.load(out)
    ref = channel_importance(_model(), (X, y), n_repeats=4, random_state=7, metric="recall", aggregate="median",
                             groups={"stains": ["DNA", "SSC"], "BF": ["BF"]}, n_bootstrap=9, max_samples=0.5,
                             batch_size=64, channel_names=CHANNELS, class_names=["G1", "S", "G2"], confidence=0.9,
                             shared_group_permutation=False, progress=False)
    np.testing.assert_array_equal(res.confusion, ref.confusion)
    np.testing.assert_array_equal(res.bootstrap_confusion, ref.bootstrap_confusion)
    np.testing.assert_allclose(res.importances, ref.importances)
    assert res.channel_names == ["stains", "BF"] and res.class_names == ["G1", "S", "G2"]
    assert res.info["metric"] == "recall" and res.info["n_samples"] == 30
    assert "stains" in text and "p: one-sided bootstrap" in text


@pytest.mark.parametrize("perturbation", ["sample", "fill"])
def test_run_perturbations_and_fill_value(files, capsys, perturbation):
    X, y = _data()
    out = files / f"pert_{perturbation}" / "res"
    rc, _, err = _run_main(["run", "--model", files / "scripted.pt", "--data", files / "data.npz", "--k", "3",
                            "--perturbation", perturbation, "--fill-value", "1.5", "--out", out, "--quiet",
                            "--no-figures"], capsys)
    assert rc == 0, err
    ref = channel_importance(_model(), (X, y), n_repeats=3, perturbation=perturbation, fill_value=1.5,
                             random_state=0, progress=False)
    np.testing.assert_array_equal(ImportanceResult.load(out).confusion, ref.confusion)


def test_run_adaptive_and_checkpoint_resume(files, capsys):
    ck = files / "resume" / "run.ckpt"
    argv = ["run", "--model", files / "model.pxp", "--data", files / "data.npz", "--k", "8", "--adaptive",
            "--adaptive-min-repeats", "3", "--adaptive-chunk", "2", "--checkpoint", ck,
            "--out", files / "resume" / "res", "--quiet", "--no-figures"]
    rc, _, err = _run_main(argv, capsys)
    assert rc == 0, err
    first = ImportanceResult.load(files / "resume" / "res")
    assert first.info["adaptive"]["chunk"] == 2 and first.n_repeats <= 8 and ck.exists()
    rc, _, err = _run_main(argv, capsys)
    assert rc == 0, err
    again = ImportanceResult.load(files / "resume" / "res")
    assert again.info["resumed_repeats"] > 0
    np.testing.assert_array_equal(again.confusion, first.confusion)


def test_adaptive_growth_reaches_adaptive_k(files, capsys):
    from pxpermute.adaptive import AdaptiveK

    out = files / "growth" / "res"
    rc, _, err = _run_main(["run", "--model", files / "model.pxp", "--data", files / "data.npz", "--k", "10",
                            "--adaptive-growth", "1", "--n-bootstrap", "0", "--out", out,
                            "--quiet", "--no-figures"], capsys)
    assert rc == 0, err
    info = ImportanceResult.load(out).info["adaptive"]
    assert info["growth"] == 1.0 and info["min_repeats"] == AdaptiveK().min_repeats
    looks = AdaptiveK(growth=1.0).checkpoints(10)
    assert looks == [3, 5, 7, 9, 10] and AdaptiveK().checkpoints(10) == [3, 5, 8, 10]
    assert info["k_used"] in looks and info["evaluations"] == looks.index(info["k_used"]) + 1


def test_adaptive_help_describes_the_group_sequential_rule(capsys):
    rc, out, _ = _run_main(["run", "--help"], capsys)
    assert rc == 0
    text = " ".join(out.split())
    for phrase in ("group-sequential", "fixed before the run", "Bonferroni over pairs and looks", "--adaptive-growth",
                   "+/- --adaptive-tol", "first after 3 repeats"):
        assert phrase in text, phrase


def test_run_writes_the_demos_table_and_figures(files, capsys):
    folder = files / "as_folder"
    folder.mkdir()
    rc, text, err = _run_main(["run", "--model", files / "weights.pt", "--arch", "small_cnn", "--data",
                               files / "data.npz", "--k", "3", "--perturbation", "pixel,sample", "--out", folder,
                               "--quiet"], capsys)
    assert rc == 0, err
    # the demo's file names and table columns
    for name in ("channel_importance.png", "per_class.png", "summary.json", "importance_pixel.json",
                 "importance_sample.npz"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "channel_importance.png").stat().st_size > 10_000
    assert "pixel permutation [95% CI]" in text and "sample permutation [95% CI]" in text
    # the default interval is the bootstrap over test cells (issue 21), and it says what it does not cover
    assert "[95% CI]: bootstrap over test cells (999 replicates)" in text and "covers retraining" in text
    assert ImportanceResult.load(folder / "importance_pixel").n_bootstrap == 999
    for ch in CHANNELS:
        assert ch in text
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["k"] == {"pixel": 3, "sample": 3} and sorted(summary["ranking"]) == sorted(CHANNELS)
    assert ImportanceResult.load(folder / "importance_sample").info["perturbation"] == "sample"
    # a stem: STEM.json/.npz next to STEM_channel_importance.png etc.
    stem = files / "as_stem" / "exp1"
    rc, _, err = _run_main(["run", "--model", files / "model.pxp", "--data", files / "data.npz", "--k", "2",
                            "--out", stem, "--quiet"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in stem.parent.iterdir()) == [
        "exp1.json", "exp1.npz", "exp1_channel_importance.png", "exp1_per_class.png", "exp1_summary.json"]


@pytest.mark.slow
def test_run_under_torchrun_equals_single_process(files, tmp_path):
    """`torchrun --nproc-per-node 2 -m pxpermute run ...`: one result file, identical to one process."""
    X, y = _data()
    out = tmp_path / "res"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pxpermute",
           "run", "--model", str(files / "model.pxp"), "--data", str(files / "data.h5"), "--k", "4", "--seed", "1",
           "--batch-size", "16", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = ImportanceResult.load(out)
    ref = channel_importance(_model(), (X, y), n_repeats=4, random_state=1, batch_size=16, progress=False)
    np.testing.assert_array_equal(res.confusion, ref.confusion)
    assert res.info["world_size"] == 2 and proc.stdout.count("wrote ") == 1  # only rank 0 writes
    assert (tmp_path / "res_channel_importance.png").exists()
    # a refused model under torchrun: every process says so in one line (torchrun then reports the failure)
    bad = [*cmd[: cmd.index("run") + 1], "--model", str(files / "pickled.pt"), "--data", str(files / "data.h5"),
           "--out", str(tmp_path / "bad")]
    proc = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("pxpermute run: error:") == 2 and "--trust-pickle" in proc.stderr


def test_out_with_a_dot_never_overwrites_another_run(files, capsys):
    """`--out run.seed1` then `--out run.seed2`: two results, or a refusal before the run -- never one file."""
    argv = ["run", "--model", files / "model.pxp", "--data", files / "data.npz", "--k", "2", "--quiet", "--no-figures"]
    folder = files / "dots"
    codes = []
    for seed in (1, 2):
        rc, _, err = _run_main([*argv, "--seed", str(seed), "--out", folder / f"run.seed{seed}"], capsys)
        codes.append(rc)
        if rc:
            assert rc == 2 and "without a dot" in err
            _assert_one_line_error(err, "")
    if codes == [0, 0]:
        seeds = {ImportanceResult.load(folder / f"run.seed{s}.json").info["random_state"] for s in (1, 2)}
        assert seeds == {1, 2}
    else:
        assert codes == [2, 2] and not list(folder.glob("*.json"))


def test_run_with_a_pretrained_tutorial_model(tmp_path, capsys):
    """`--model pretrained:NAME` on the embedded cell-cycle sample equals the engine on load_pretrained."""
    from pxpermute.datasets import load_cellcycle_sample
    from pxpermute.models import pretrained_registry

    models = {n: e for n, e in pretrained_registry()["models"].items() if e.get("n_channels") == 3}
    ds = load_cellcycle_sample()
    X, y = ds.subset(np.arange(0, len(ds), 12)).as_arrays()
    np.savez(tmp_path / "cc.npz", X=X, y=y, channel_names=np.array(ds.channel_names),
             class_names=np.array(ds.class_names))
    if not models:  # a checkout without pretrained models says so in one line
        rc, out, err = _run_main(["run", "--model", "pretrained:cellcycle_all_fold0", "--data", tmp_path / "cc.npz",
                                  "--out", tmp_path / "r"], capsys)
        assert rc == 1 and "pretrained" in err
        _assert_one_line_error(err, out)
        return
    from pxpermute.models import load_pretrained

    name = sorted(models)[0]
    rc, out, err = _run_main(["run", "--model", f"pretrained:{name}", "--data", tmp_path / "cc.npz", "--k", "3",
                              "--device", "cpu", "--out", tmp_path / "r", "--quiet", "--no-figures"], capsys)
    assert rc == 0, err
    ref = channel_importance(load_pretrained(name, device="cpu"), (X, y), n_repeats=3, random_state=0,
                             class_names=ds.class_names, progress=False)
    res = ImportanceResult.load(tmp_path / "r")
    np.testing.assert_array_equal(res.confusion, ref.confusion)
    assert res.info["model"] == f"pretrained:{name}" and "DNA" in out


# --------------------------------------------------------------------------- fetch and info
def _shared_data() -> Path:
    env = os.environ.get("PXPERMUTE_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    probe = root / "blasi2016_cellcycle" / "Experiment_1" / "G1" / "Ch3_CP0008.tif"
    if not probe.exists():
        pytest.skip(f"real data file {probe.name} not found: set PXPERMUTE_DATA_DIR to the data folder")
    return root


def test_fetch_verifies_files_already_present(capsys):
    root = _shared_data()
    rc, out, err = _run_main(["fetch", "cellcycle", "reference", "--data-dir", root], capsys)
    assert rc == 0, err
    assert "21 verified" in out and "40 verified" in out


def test_fetch_offline_names_the_place_to_put_files(tmp_path, capsys, monkeypatch):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    rc, out, err = _run_main(["fetch", "apoptotic", "--data-dir", tmp_path], capsys)
    assert rc == 1
    assert str(tmp_path / "apoptotic_cells" / "X_M1.h5") in err and "github.com/theislab/dali" in err
    _assert_one_line_error(err.split("\n", 1)[1], out)  # the summary line
    rc, out, err = _run_main(["fetch", "--all", "--data-dir", tmp_path], capsys)
    assert rc == 1 and "Traceback" not in err
    assert "wbc" in out and "skipped" in out  # no public URL: said, not failed
    assert err.count("pxpermute fetch: error:") >= 4


def test_fetch_and_info_detect_a_corrupted_file(tmp_path, capsys):
    root = _shared_data()
    src = root / "blasi2016_cellcycle"
    shutil.copytree(src, tmp_path / "blasi2016_cellcycle")
    rc, out, err = _run_main(["fetch", "cellcycle", "--data-dir", tmp_path], capsys)
    assert rc == 0 and "21 verified" in out, err
    victim = tmp_path / "blasi2016_cellcycle" / "Experiment_1" / "G1" / "Ch4_CP0008.tif"
    victim.write_bytes(victim.read_bytes()[:1000])
    rc, out, err = _run_main(["fetch", "cellcycle", "--data-dir", tmp_path], capsys)
    assert rc == 1 and "corrupted" in err and "Traceback" not in err
    rc, out, err = _run_main(["info", "--data-dir", tmp_path, "--json"], capsys)
    assert rc == 1
    items = json.loads(out)["items"]
    assert items["cellcycle"]["state"] == "20 verified, 1 corrupted"
    assert any("Ch4_CP0008.tif" in p for p in items["cellcycle"]["problems"])


def test_info_reports_versions_device_cache_and_data(capsys):
    root = _shared_data()
    rc, out, err = _run_main(["info", "--data-dir", root, "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    import pxpermute

    assert info["versions"]["pxpermute"] == pxpermute.__version__
    assert info["versions"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert info["versions"]["numpy"] == np.__version__ and "captum" in info["versions"]
    assert info["device"]["default"] in ("cpu", "cuda", "mps") and info["device"]["torch_threads"] >= 1
    assert info["cache"]["path"] == str(root)
    assert info["items"]["cellcycle"]["state"] == "21 verified"
    assert info["items"]["reference"]["state"] == "40 verified"
    assert info["items"]["wbc"]["state"] == "manual"
    rc, out, err = _run_main(["info", "--data-dir", root], capsys)
    assert rc == 0 and "versions" in out and str(root) in out and "cellcycle" in out and "CPU:" in out
