"""Command line: ``pxpermute demo | run | fetch | info`` (a thin layer over the API).

Every error ends in one line on stderr and a non-zero exit status (``--debug``
adds the traceback): 2 for a bad invocation or a refused (pickled) model file,
1 for any other failure (missing, truncated or mismatched files, unwritable
output, a model that does not fit the data), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "build_parser", "CLIError"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """An error the command line reports as one line (``code`` is the exit status)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad invocation raises instead of printing the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------
# option types: each rejects a bad value with a message saying what was expected
# ---------------------------------------------------------------------------------------------
def _parse(text: str, cast: Any, expected: str, ok: Any = None, why: str = "") -> Any:
    """``cast(text)``, checked by ``ok``; a bad value raises saying what was ``expected`` (the one parsing rule)."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if ok is not None and not ok(v):
        raise argparse.ArgumentTypeError(f"{why or 'expected ' + expected}, got {text}")
    return v


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        return _parse(text, int, f"an integer >= {lo}", lambda v: v >= lo)

    parse.__name__ = f"int>={lo}"
    return parse


def _float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        return _parse(text, float, "a number", lambda v: bool(np.isfinite(v) and (v > lo if lo_open else v >= lo)
                                                             and (v < hi if hi_open else v <= hi)),
                      f"expected a number in {rng}")

    parse.__name__ = "number"
    return parse


def _finite_float(text: str) -> float:
    return _parse(text, float, "a number", np.isfinite,
                  "expected a finite number (NaN/inf would make every channel look the same)")


def _batch_size(text: str) -> int | str:
    return "auto" if text == "auto" else _parse(text, int, "a positive integer or 'auto'", lambda v: v >= 1)


def _max_samples(text: str) -> int | float:
    expected = "a fraction in (0, 1] or a count >= 1"
    if any(ch in text for ch in ".eE"):
        return _parse(text, float, expected, lambda v: 0 < v <= 1, "a fraction must lie in (0, 1]")
    return _parse(text, int, expected, lambda v: v >= 1, "a count must be >= 1")


def _name_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names without empty entries, got {text!r}")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"duplicate names {dup} in {text!r}")
    return names


def _group(text: str) -> tuple[str | None, list[str | int]]:
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = None, text
    elif not name.strip():
        raise argparse.ArgumentTypeError(f"empty group name in {text!r} (use NAME=CH1,CH2 or CH1,CH2)")
    items = [s.strip() for s in rest.split(",")]
    if not rest.strip() or any(not s for s in items):
        raise argparse.ArgumentTypeError(f"expected NAME=CH1,CH2 (channel names or indices), got {text!r}")
    return (name.strip() if name else None), [int(s) if s.lstrip("-").isdigit() else s for s in items]


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def _add_bootstrap_option(parser: Any) -> None:
    """``--n-bootstrap`` (demo and run): on by default, the interval every output shows."""
    parser.add_argument("--n-bootstrap", type=_int_at_least(0), default=999, metavar="B",
                        help="Poisson-bootstrap replicates over the test images (default 999): the interval shown, "
                             "p-values, P(above next), rank intervals; 0 = off (then only the permutation interval)")


def _add_data_dir_option(parser: Any) -> None:
    parser.add_argument("--data-dir", metavar="DIR",
                        help="cache folder (default: $PXPERMUTE_DATA_DIR or the user cache)")


def _one_line(text: Any, limit: int = 1000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_writable(paths: Sequence[Path], flag: str) -> None:
    """Fail before any work if an output file could not be written (folder created if missing)."""
    checked: set[Path] = set()
    for p in paths:
        if p.exists() and p.is_dir():
            raise CLIError(f"{flag}: {p} is a folder, expected a file path")
        parent = p.parent
        if parent in checked:
            continue
        bad = next((a for a in [parent, *parent.parents] if a.exists() and not a.is_dir()), None)
        if bad is not None:
            raise CLIError(f"{flag}: cannot write {p}: {bad} is a file, not a folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(f"{flag}: cannot create the folder {parent}: {err.strerror or err}") from err
        probe = parent / f".pxpermute-write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise CLIError(f"{flag}: cannot write into {parent}: {err.strerror or err}") from err
        checked.add(parent)


def _check_device(text: str | None) -> str | None:
    if text is None:
        return None
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device: invalid device {text!r}; expected e.g. cpu, cuda, cuda:1 or mps",
                       EXIT_USAGE) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "built with CUDA" if torch.backends.cuda.is_built() else "a CPU-only build"
            raise CLIError(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}, "
                           f"{built}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {text}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise CLIError(f"--device: unsupported device type {dev.type!r}; use cpu, cuda or mps", EXIT_USAGE)
    return text


def _table(results: dict, *, ground_truth: Any = None, stain_free: Any = None) -> str:
    """The demo's summary table: one row per channel (best first), one column per perturbation."""
    first = next(iter(results.values()))
    names = first.channel_names
    boot = any(r.bootstrap_importances is not None for r in results.values())
    head = f"{'channel':<10}"
    if ground_truth is not None:
        head += f"{'role':<15}{'planted':>8}"
    for k in results:
        head += f"  {k + ' permutation [95% CI]':>32}"
        if boot:
            head += f"  {'p':>6}"
    if stain_free is not None:
        head += "  stain-free"
    lines = [head, "-" * len(head)]
    for c in first.ranking:
        row = f"{names[c]:<10}"
        if ground_truth is not None:
            row += f"{ground_truth.roles[c]:<15}{ground_truth.relevance[c]:>8.2f}"
        for res in results.values():
            lo, hi = res.ci_low[c], res.ci_high[c]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else ""
            row += f"  {res.importance[c]:>+10.3f} {ci:>21}"
            if boot:
                p = res.p_values[c] if res.bootstrap_importances is not None else float("nan")
                row += f"  {p:>6.3f}" if np.isfinite(p) else f"  {'':>6}"
        if stain_free is not None:
            row += f"  {'yes' if stain_free[c] else 'no':>10}"
        lines.append(row)
    from .inference import COVERAGE_NOTE

    level = f"{100 * float(first.info.get('confidence', 0.95)):g}%"
    kinds = sorted({r.ci_label for r in results.values()})
    notes = [f"[{level} CI]: {'; '.join(kinds)}. The permutation (Monte Carlo) interval of the k repeats alone is "
             "saved with the results (perm_ci_low/high).",
             "Coverage: " + COVERAGE_NOTE]
    if boot:
        notes.append("p: one-sided bootstrap p-value of H0 'the importance on test cells drawn like these, for this "
                     "trained model, is <= 0' (not adjusted for the number of channels).")
    notes.append("An interval that contains 0 is absence of evidence, not evidence that a channel is unused.")
    import textwrap

    for note in notes:
        lines += textwrap.wrap(note, 100, subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pxpermute demo
# ---------------------------------------------------------------------------------------------
def _add_demo(sub, common) -> None:
    p = sub.add_parser(
        "demo", parents=[common],
        help="generate data, train a small classifier, run PXPermute and show the channel ranking",
        description=(
            "End-to-end PXPermute on an embedded data set: the synthetic IFC default (planted, known channel "
            "relevance) or the real Jurkat cell-cycle sample shipped with the package. Trains a classifier, "
            "runs PXPermute (within-image pixel permutation) and the cross-sample variant, prints the channel "
            "ranking with 95%% bootstrap intervals over the test cells (next to the planted truth for synthetic "
            "data; no interval covers retraining) and writes a figure and the "
            "result files."
        ),
    )
    p.add_argument("--data", default="synthetic", choices=["synthetic", "cellcycle"],
                   help="synthetic IFC data with known answer (default) or the embedded real cell-cycle sample")
    p.add_argument("--preset", default="default", help="synthetic preset (default, apoptotic, synapse, wbc, panel20)")
    p.add_argument("--n-samples", type=_int_at_least(10), default=2000,
                   help="synthetic cells to generate (default 2000)")
    p.add_argument("--k", type=_int_at_least(1), default=100, help="PXPermute repeats per channel (paper: 100)")
    p.add_argument("--k-sample", type=_int_at_least(1), default=30,
                   help="repeats of the cross-sample variant (default 30)")
    p.add_argument("--epochs", type=_int_at_least(1), default=12,
                   help="training epochs (early stopping may stop sooner)")
    p.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    p.add_argument("--width", type=_int_at_least(1), default=16,
                   help="filters in the first block of small_cnn (default 16)")
    p.add_argument("--test-fraction", type=_float_in(0, 1, lo_open=True, hi_open=True), default=0.2)
    _add_bootstrap_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pxpermute-output", help="folder for the figure and result files")
    p.add_argument("--no-sample", action="store_true", help="skip the cross-sample permutation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from sklearn.model_selection import train_test_split

    from . import channel_importance
    from .metrics import compute_metric, confusion_matrix
    from .plotting import plot_importance, plot_per_class
    from .training import train_classifier

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {out} is a file, expected a folder")
    _check_writable([out / "channel_importance.png"], "--out")
    progress = not args.quiet
    if args.data == "synthetic":
        from .datasets import SYNTHETIC_PRESETS, make_synthetic

        if args.preset not in SYNTHETIC_PRESETS:
            raise CLIError(f"--preset: unknown preset {args.preset!r}; choose one of {', '.join(SYNTHETIC_PRESETS)}",
                           EXIT_USAGE)
        ds = make_synthetic(args.preset, n_samples=args.n_samples, random_state=args.seed)
    else:
        from .datasets import load_cellcycle_sample

        ds = load_cellcycle_sample()
    print(ds)
    idx = np.arange(len(ds))
    train_idx, test_idx = train_test_split(idx, test_size=args.test_fraction, stratify=ds.labels,
                                           random_state=args.seed)
    print(f"training {args.model} on {len(train_idx)} cells ({args.epochs} epochs max) ...", flush=True)
    t = time.perf_counter()
    model_kwargs = {"width": args.width} if args.model == "small_cnn" else {}
    net = train_classifier(ds, train_indices=train_idx, model=args.model, model_kwargs=model_kwargs,
                           max_epochs=args.epochs, random_state=args.seed, verbose=0)
    t_train = time.perf_counter() - t
    test = ds.subset(test_idx)
    x_test, y_test = test.as_arrays()
    pred = net.predict(x_test)
    f1 = compute_metric(confusion_matrix(y_test, pred, ds.n_classes), "f1_macro")[0]
    print(f"trained in {t_train:.0f} s; test F1-macro {f1:.3f} on {len(test_idx)} held-out cells")

    results = {"pixel": channel_importance(net, test, n_repeats=args.k, random_state=args.seed, progress=progress,
                                           n_bootstrap=args.n_bootstrap)}
    if not args.no_sample:
        results["sample"] = channel_importance(net, test, n_repeats=args.k_sample, perturbation="sample",
                                               random_state=args.seed, progress=progress,
                                               n_bootstrap=args.n_bootstrap)
    for res in results.values():
        res.info["data"] = f"{ds.name}" + (f" (seed {args.seed})" if args.data == "synthetic" else "")
        res.info["model"] = args.model

    gt = ds.ground_truth
    print()
    print(_table(results, ground_truth=gt, stain_free=ds.stain_free))
    if gt is not None:
        from scipy.stats import spearmanr

        from .datasets.synthetic import expected_relevance

        imp = results["pixel"].importance
        if np.ptp(imp) == 0:
            print("\nSpearman(PXPermute, planted relevance) undefined: every channel scored the same "
                  "(the model ignores all channels; train longer)")
        else:
            rho = spearmanr(imp, expected_relevance(gt, perturbation="pixel")).statistic
            print(f"\nSpearman(PXPermute, planted relevance as pixel permutation can see it) = {rho:.2f}")
    print(
        "\nNote: pixel permutation keeps each image's intensity histogram, so a channel whose only signal is its\n"
        "total intensity scores ~0 with PXPermute; the 'sample' column (channel swapped between cells) sees it."
    )
    fig = plot_importance(list(results.values()), labels=[f"{k} permutation" for k in results],
                          ground_truth=gt, normalized=False,
                          title=f"{ds.name}: {args.model}, k={args.k} (sample: {args.k_sample}), seed={args.seed}, "
                          f"n_test={len(test_idx)}, test F1-macro={f1:.2f}")
    fig_path = out / "channel_importance.png"
    fig.savefig(fig_path, dpi=150)
    plot_per_class(results["pixel"]).savefig(out / "per_class.png", dpi=150)
    paths = [results[k].save(out / f"importance_{k}") for k in results]
    summary = {
        "data": ds.name, "n_cells": len(ds), "model": args.model, "k": args.k, "seed": args.seed,
        "test_f1_macro": float(f1), "train_seconds": round(t_train, 1),
        "ranking": results["pixel"].ranked_channels, "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {fig_path}, {out / 'per_class.png'}, {', '.join(str(p) for p in paths)}, {out / 'summary.json'}")
    print(f"done in {summary['total_seconds']:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# pxpermute run
# ---------------------------------------------------------------------------------------------
_PERTURBATIONS = ("pixel", "sample", "fill")


def _adaptive_defaults() -> dict[str, Any]:
    """The defaults of :class:`~pxpermute.adaptive.AdaptiveK` (one source for the help text and the checks)."""
    from dataclasses import fields

    from .adaptive import AdaptiveK

    out: dict[str, Any] = {f.name: f.default for f in fields(AdaptiveK)}
    out["looks"] = AdaptiveK().checkpoints(100)
    return out


_ADAPTIVE_DEFAULTS = _adaptive_defaults()
_METRICS = ("f1", "precision", "recall", "accuracy", "balanced_accuracy", "f1_macro")


def _add_run(sub, common) -> None:
    p = sub.add_parser(
        "run", parents=[common],
        help="channel importance of a saved model on a saved data set (works under torchrun)",
        description=(
            "Run PXPermute (or the sample/fill perturbations) for a saved model on a saved data set; print the "
            "channel ranking and write the result (.json + .npz), the figures and a summary. Model files load "
            "without running code from them: TorchScript, a pxpermute weights file (pxpermute.io.save_model), "
            "or a state_dict with --arch. Under `torchrun --nproc-per-node N -m pxpermute run ...` every process "
            "evaluates a shard of the cells and all get the same result, equal to a single-process run."
        ),
        epilog="Output paths are checked before the run starts. Exit status: 0 ok, 1 error, 2 bad invocation or "
               "refused model file, 130 interrupted.",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="FILE",
                   help="TorchScript file, pxpermute weights file, state_dict (.pt/.pth/.safetensors, needs --arch), "
                        "or pretrained:NAME (a pretrained tutorial model)")
    g.add_argument("--arch", choices=["resnet18", "small_cnn"],
                   help="architecture of a state_dict (channels, classes and small_cnn's width come from the weights)")
    g.add_argument("--channels", type=_int_at_least(1), metavar="N", help="check: the model takes N channels")
    g.add_argument("--classes", type=_int_at_least(2), metavar="K", help="check: the model predicts K classes")
    g.add_argument("--trust-pickle", action="store_true",
                   help="also load a whole pickled nn.Module (torch.save(model)). UNPICKLING RUNS CODE FROM THE FILE: "
                        "only for files from a source you trust")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="FILE",
                   help="HDF5 (pxpermute layout, read lazily, or X/y datasets) or .npz with X (N, C, H, W) and y (N,)")
    g.add_argument("--images-key", help="name of the image array in the file (default: images or X)")
    g.add_argument("--labels-key", help="name of the label array in the file (default: labels or y)")
    g.add_argument("--channel-names", type=_name_list, metavar="A,B,...", help="channel names (override the file's)")
    g.add_argument("--class-names", type=_name_list, metavar="A,B,...", help="class names (override the file's)")
    g = p.add_argument_group("method")
    g.add_argument("--k", type=_int_at_least(1), default=100,
                   help="permutation repeats per channel (paper: 100; the cap with --adaptive)")
    g.add_argument("--perturbation", type=_name_list, default=["pixel"], metavar="P[,P...]",
                   help="pixel (PXPermute, default), sample (channel swapped between cells: sees total-intensity "
                        "signal), fill (occlusion with --fill-value); several give one column each, as in the demo")
    g.add_argument("--metric", default="f1", choices=_METRICS, help="per-class metric (default f1)")
    g.add_argument("--aggregate", default="mean", choices=["mean", "median"], help="over classes and repeats")
    g.add_argument("--fill-value", type=_finite_float, default=0.0,
                   help="constant of the fill perturbation (default 0)")
    g.add_argument("--group", type=_group, action="append", metavar="[NAME=]CH1,CH2",
                   help="score channels together as one unit (names or indices; repeat for several groups)")
    g.add_argument("--independent-group-permutation", action="store_true",
                   help="permute the channels of a group independently (default: one shared permutation)")
    g.add_argument("--max-samples", type=_max_samples, metavar="F|N",
                   help="score a class-stratified subsample: a fraction in (0, 1] or a count")
    _add_bootstrap_option(g)
    g.add_argument("--confidence", type=_float_in(0, 1, lo_open=True, hi_open=True), default=0.95,
                   help="level of the confidence intervals (default 0.95)")
    g.add_argument("--seed", type=int, default=0, help="random_state: same seed, same result (default 0)")
    ad = _ADAPTIVE_DEFAULTS
    g = p.add_argument_group(
        "adaptive k (stop once the ranking is settled)",
        "group-sequential rule: the looks (repeat counts at which the rule is checked) are fixed before the run "
        f"-- the first after {ad['min_repeats']} repeats, each later one x{ad['growth']:g} the previous (at least "
        f"{ad['chunk']} more), the last at --k (defaults, --k 100: {','.join(map(str, ad['looks']))}). At each look every pair of "
        "channels gets a t-interval for its mean difference, each with error rate (1 - --confidence) / (pairs x looks) "
        "(Bonferroni over pairs and looks), so stopping at whichever look the data suggest keeps the guarantee; the "
        "run stops when every pair adjacent in the ranking is resolved (interval excludes 0) or tied (interval "
        "within +/- --adaptive-tol). Covers the permutations only, not the test cells or retraining.")
    g.add_argument("--adaptive", action="store_true",
                   help="add repeats until the ranking is settled, checking at the planned looks (cap --k)")
    g.add_argument("--adaptive-min-repeats", type=_int_at_least(3), metavar="N",
                   help=f"repeats before the first look (>= 3; default {ad['min_repeats']})")
    g.add_argument("--adaptive-chunk", type=_int_at_least(1), metavar="N",
                   help=f"fewest repeats added between looks (default {ad['chunk']})")
    g.add_argument("--adaptive-growth", type=_float_in(1, 10), metavar="F",
                   help=f"each look is this factor times the previous one (1: every --adaptive-chunk repeats; "
                        f"default {ad['growth']:g}); fewer looks cost less confidence each")
    g.add_argument("--adaptive-tol", type=_float_in(0, 1, hi_open=True), metavar="F",
                   help=f"tie tolerance in importance units, e.g. F1: a pair whose interval lies within +/- F is "
                        f"tied (default {ad['tol']:g})")
    g.add_argument("--adaptive-top", type=_int_at_least(1), metavar="M",
                   help="settle only the top M channels (their order, and that each is above all others), not the "
                        "order of the rest: stops much sooner when unimportant channels differ by noise "
                        "(default: the whole ranking)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps (each torchrun process takes cuda:LOCAL_RANK)")
    g.add_argument("--batch-size", type=_batch_size, default=256,
                   help="images per forward pass, or 'auto' (default 256)")
    g.add_argument("--num-workers", type=_int_at_least(0), default=0,
                   help="DataLoader workers prefetching blocks of lazy data")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format on CUDA")
    g.add_argument("--chunk-repeats", type=_int_at_least(1), metavar="N",
                   help="repeats per chunk (does not change the result)")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="partial-result file, written after every chunk; rerun the same command to resume")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="pxpermute-result",
                   help="result path stem (writes STEM.json, STEM.npz, STEM_channel_importance.png, "
                        "STEM_per_class.png, STEM_summary.json), or an existing folder / a path ending in / "
                        "(writes the demo's file names into it)")
    g.add_argument("--no-figures", action="store_true", help="skip the figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def _run_outputs(out: str, perts: list[str], figures: bool) -> dict[str, Any]:
    from ._fileio import bundle_paths

    o = Path(out).expanduser()
    as_folder = out.endswith(("/", os.sep)) or o.is_dir()
    if as_folder:
        stems = {p: o / f"importance_{p}" for p in perts}
        extra = {"figure": o / "channel_importance.png", "per_class": o / "per_class.png",
                 "summary": o / "summary.json"}
    else:
        stems = {p: (o if len(perts) == 1 else Path(f"{o}_{p}")) for p in perts}
        extra = {"figure": Path(f"{o}_channel_importance.png"), "per_class": Path(f"{o}_per_class.png"),
                 "summary": Path(f"{o}_summary.json")}
    for stem in stems.values():
        json_path = bundle_paths(stem)[0]
        expected = stem if stem.suffix in (".json", ".npz") else Path(f"{stem}.json")
        if json_path.with_suffix("") != expected.with_suffix(""):
            raise CLIError(f"--out {out}: the result would be saved as {json_path} (the part after the last dot "
                           f"counts as a file suffix), which another run could overwrite; use a name without a dot, "
                           f"e.g. {o.name.replace('.', '_')}", EXIT_USAGE)
    if not figures:
        extra.pop("figure")
        extra.pop("per_class")
    files = [f for s in stems.values() for f in bundle_paths(s)] + list(extra.values())
    return {"stems": stems, **extra, "files": files}


def _init_distributed(device: str | None):
    try:
        from .distributed import init_distributed
    except ImportError:  # before the engine split
        from .scale import init_distributed
    return init_distributed(device)


def _load_run_model(args: argparse.Namespace, device: str | None):
    from . import io

    spec = args.model
    if spec.startswith("pretrained:"):
        name = spec.split(":", 1)[1]
        try:
            from .models import load_pretrained
        except ImportError as err:
            raise CLIError(f"--model {spec}: this version of pxpermute has no pretrained models") from err
        try:
            return load_pretrained(name, device=device or "cpu"), spec
        except KeyError as err:
            raise CLIError(f"--model {spec}: {err.args[0] if err.args else err}") from err
    model = io.load_model(spec, arch=args.arch, n_channels=args.channels, n_classes=args.classes,
                          trust_pickle=args.trust_pickle, map_location=device or "cpu")
    label = Path(spec).name + (f" ({args.arch})" if args.arch else "")
    return model, label


def _resolve_groups(groups: list | None, channel_names: list[str]) -> dict[str, list[int]] | None:
    if not groups:
        return None
    from .datasets import resolve_channels

    out: dict[str, list[int]] = {}
    for name, items in groups:
        try:
            idx = resolve_channels(items, channel_names)
        except (ValueError, TypeError) as err:
            raise CLIError(f"--group {','.join(map(str, items))}: {_one_line(err)}") from err
        key = name if name is not None else "+".join(channel_names[i] for i in idx)
        if key in out:
            raise CLIError(f"--group: two groups are named {key!r}; give each a distinct NAME=")
        out[key] = idx
    return out


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    perts = list(args.perturbation)
    unknown = [p for p in perts if p not in _PERTURBATIONS]
    if unknown:
        raise CLIError(f"--perturbation: unknown {unknown}; choose from {', '.join(_PERTURBATIONS)}", EXIT_USAGE)
    if args.checkpoint and len(perts) > 1:
        raise CLIError("--checkpoint works with one perturbation per run; run each perturbation separately",
                       EXIT_USAGE)
    adaptive_opts = {k: getattr(args, f"adaptive_{k}") for k in ("min_repeats", "chunk", "growth", "tol", "top")}
    adaptive_opts = {k: v for k, v in adaptive_opts.items() if v is not None}
    adaptive: Any = False
    if args.adaptive or adaptive_opts:
        adaptive = {**adaptive_opts, "confidence": args.confidence}
        first = adaptive.get("min_repeats", _ADAPTIVE_DEFAULTS["min_repeats"])
        if first > args.k:
            raise CLIError(f"--adaptive: the first look comes after {first} repeats, more than --k {args.k}; "
                           "raise --k or lower --adaptive-min-repeats", EXIT_USAGE)
    outputs = _run_outputs(args.out, perts, figures=not args.no_figures)
    _check_writable(outputs["files"], "--out")
    if args.checkpoint:
        _check_writable([Path(args.checkpoint)], "--checkpoint")
    device = _check_device(args.device)

    from . import channel_importance, io

    rank, world, device = _init_distributed(device)
    try:
        ds = io.load_data(args.data, images_key=args.images_key, labels_key=args.labels_key)
        channel_names = list(ds.channel_names)
        if args.channel_names is not None:
            if len(args.channel_names) != ds.n_channels:
                raise CLIError(f"--channel-names gives {len(args.channel_names)} names, but the data has "
                               f"{ds.n_channels} channels ({', '.join(channel_names)})")
            channel_names = list(args.channel_names)
        model, model_label = _load_run_model(args, device)
        k_model = io.check_model_fits(model, ds, device=device)
        n_data = len(ds.class_names)
        n_cls = max(k_model or 0, n_data)
        class_names = list(ds.class_names) + [f"class{i}" for i in range(n_data, n_cls)]
        if args.class_names is not None:
            if len(args.class_names) != n_cls:
                raise CLIError(f"--class-names gives {len(args.class_names)} names, but there are {n_cls} classes "
                               f"(model outputs: {k_model if k_model else 'labels'}, data: {n_data})")
            class_names = list(args.class_names)
        groups = _resolve_groups(args.group, channel_names)
        kw = dict(
            n_repeats=args.k, metric=args.metric, aggregate=args.aggregate, groups=groups,
            shared_group_permutation=not args.independent_group_permutation, batch_size=args.batch_size,
            device=device, random_state=args.seed, channel_names=channel_names, class_names=class_names,
            fill_value=args.fill_value, num_workers=args.num_workers, amp=args.amp, channels_last=args.channels_last,
            progress=not args.quiet and rank == 0, n_bootstrap=args.n_bootstrap, confidence=args.confidence,
            max_samples=args.max_samples, adaptive=adaptive, checkpoint=args.checkpoint,
            chunk_repeats=args.chunk_repeats,
        )
        results = {}
        for pert in perts:
            res = channel_importance(model, ds, perturbation=pert, **kw)
            res.info["data"] = Path(args.data).name
            res.info["model"] = model_label
            results[pert] = res
        if rank == 0:
            _write_run_outputs(args, results, outputs, ds=ds, groups=groups, t0=t0, world=world)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def _write_run_outputs(args, results: dict, outputs: dict, *, ds, groups, t0: float, world: int) -> None:
    first = next(iter(results.values()))
    sf = getattr(ds, "stain_free", None)
    stain_free = sf if groups is None and sf is not None and np.any(sf) else None
    table = _table(results, stain_free=stain_free)
    print(first.title())
    print(table)
    paths = [str(results[p].save(outputs["stems"][p])) for p in results]
    written = list(paths)
    ks = {p: r.n_repeats for p, r in results.items()}
    if "figure" in outputs:
        import matplotlib.pyplot as plt

        from .plotting import plot_importance, plot_per_class

        k_text = ", ".join(f"{p}: k={k}" for p, k in ks.items()) if len(ks) > 1 else f"k={first.n_repeats}"
        title = (f"{first.info.get('data')}: {first.info.get('model')}, {k_text}, seed={args.seed}, "
                 f"n={first.info.get('n_samples', len(ds))}, metric={args.metric}")
        fig = plot_importance(list(results.values()), labels=[f"{p} permutation" for p in results],
                              normalized=False, title=title)
        fig.savefig(outputs["figure"], dpi=150)
        plt.close(fig)
        fig = plot_per_class(first)
        fig.savefig(outputs["per_class"], dpi=150)
        plt.close(fig)
        written += [str(outputs["figure"]), str(outputs["per_class"])]
    summary = {
        "data": str(args.data), "n_cells": len(ds), "model": first.info.get("model"), "seed": args.seed,
        "metric": args.metric, "perturbations": list(results), "k": ks, "baseline_score": first.baseline_score,
        "ranking": first.ranked_channels,
        "importance": {p: dict(zip(r.channel_names, map(float, r.importance))) for p, r in results.items()},
        "result_files": paths, "processes": world, "total_seconds": round(time.perf_counter() - t0, 1),
    }
    from ._fileio import atomic_write, jsonable

    atomic_write(outputs["summary"], json.dumps(jsonable(summary), indent=2).encode())
    written.append(str(outputs["summary"]))
    print(f"\nwrote {', '.join(written)} ({', '.join(f'{p} k={k}' for p, k in ks.items())}, processes={world})")


# ---------------------------------------------------------------------------------------------
# pxpermute fetch
# ---------------------------------------------------------------------------------------------
def _add_fetch(sub, common) -> None:
    p = sub.add_parser(
        "fetch", parents=[common],
        help="download and verify data sets and pretrained models into the cache (for offline use)",
        description=(
            "Download every named data set / model (or --all) into the cache and check each file's SHA-256, so "
            "that tutorials and tests run offline afterwards. Files already present are verified, not downloaded "
            "again. Cache: --data-dir, else $PXPERMUTE_DATA_DIR, else the user cache folder. Offline, each missing "
            "file is reported with its URL and the path to save it at."
        ),
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="items to fetch (see --list)")
    p.add_argument("--all", action="store_true", help="everything that has a download URL")
    p.add_argument("--list", action="store_true", help="list the items and their state, download nothing")
    _add_data_dir_option(p)
    p.set_defaults(func=cmd_fetch)


def _count_states(states) -> str:
    from collections import Counter

    c = Counter(s.state for s in states)
    order = ["verified", "downloaded", "present", "missing", "corrupted"]
    return ", ".join(f"{c[k]} {k}" for k in order if c[k]) or "no files"


def cmd_fetch(args: argparse.Namespace) -> int:
    from . import io
    from .datasets._download import cache_dir

    cat = io.download_catalog()
    unknown = [n for n in args.names if n not in cat]
    if unknown:
        raise CLIError(f"unknown item(s) {', '.join(unknown)}; available: {', '.join(cat)}", EXIT_USAGE)
    root = cache_dir(args.data_dir)
    if args.list:
        print(f"cache: {root}")
        for name, item in cat.items():
            states = io.download_status(name, data_dir=args.data_dir)
            state = _count_states(states) if item.files else "no download URL"
            print(f"  {name:<36} {state:<22} {item.description}")
        return 0
    if not args.names and not args.all:
        raise CLIError(f"name what to fetch, or --all (or --list); available: {', '.join(cat)}", EXIT_USAGE)
    names = list(cat) if args.all else list(dict.fromkeys(args.names))
    failed = 0
    print(f"cache: {root}")
    import logging

    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # we say what happens, one line per item
    for name in names:
        item = cat[name]
        if args.all and item.manual and not item.files:
            print(f"  {name:<36} skipped: {item.manual}")
            continue
        print(f"  {name:<36} checking {len(item.files)} file(s) ...", flush=True)
        try:
            states = io.fetch(name, data_dir=args.data_dir)
        except Exception as err:  # noqa: BLE001  (each item reports its own failure, then the next one runs)
            failed += 1
            print(f"pxpermute fetch: error: {name}: {_one_line(err)}", file=sys.stderr)
            continue
        where = states[0].path.parent if len(states) == 1 else root
        print(f"  {name:<36} {_count_states(states)} ({where})")
    if failed:
        raise CLIError(f"{failed} of {len(names)} item(s) could not be fetched; save the files at the paths named "
                       f"above (cache {root}) and run the same command again to verify them")
    return 0


# ---------------------------------------------------------------------------------------------
# pxpermute info
# ---------------------------------------------------------------------------------------------
def _add_info(sub, common) -> None:
    p = sub.add_parser(
        "info", parents=[common],
        help="versions, compute device, cache location and which data sets are present and verified",
        description="Print the versions of pxpermute and its main dependencies, the compute device, the data cache "
                    "and the state of every data set and model (SHA-256 checked against the registry). Exit status "
                    "1 if a cached file is corrupted.",
    )
    _add_data_dir_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__, io
    from .datasets._download import ENV_VAR, cache_dir

    versions = {"pxpermute": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "captum", "numpy", "scipy", "pandas", "scikit-learn", "skorch", "h5py",
                 "pooch", "matplotlib", "safetensors"):
        versions[dist] = _version(dist)
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            cuda.append(f"cuda:{i} {prop.name} ({prop.total_memory / 2**30:.0f} GiB)")
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    device = {
        "cuda": cuda, "cuda_build": torch.version.cuda, "mps": mps,
        "default": "cuda" if cuda else "mps" if mps else "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
    }
    root = cache_dir(args.data_dir)
    source = "--data-dir" if args.data_dir else (f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "user cache (default)")
    items, corrupted = {}, 0
    for name, item in io.download_catalog().items():
        states = io.download_status(name, data_dir=args.data_dir)
        corrupted += sum(s.state == "corrupted" for s in states)
        items[name] = {"kind": item.kind, "files": len(states), "state": _count_states(states) if states else "manual",
                       "manual": item.manual,
                       "location": str(io._root(item, args.data_dir)), "description": item.description,
                       "problems": [f"{s.path}: {s.state} {s.detail}".strip() for s in states
                                    if s.state in ("corrupted",)]}
    info = {"versions": versions, "device": device, "cache": {"path": str(root), "from": source,
                                                              "exists": root.is_dir()}, "items": items}
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_ERROR if corrupted else 0
    print("versions")
    for k, v in versions.items():
        print(f"  {k:<14} {v or 'not installed'}")
    print("device")
    if cuda:
        print(f"  CUDA {torch.version.cuda}: {'; '.join(cuda)}")
    else:
        build = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch"
        print(f"  CUDA: not available ({build})")
    print(f"  MPS: {'available' if mps else 'not available'}")
    print(f"  CPU: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads; "
          f"default device {device['default']}")
    print(f"cache\n  {root} (from {source}{'' if root.is_dir() else '; does not exist yet'})")
    print("data sets and models (SHA-256 checked)")
    for name, it in items.items():
        print(f"  {name:<36} {it['state']:<22} {it['description']}")
        for prob in it["problems"]:
            print(f"      {prob}")
        if it["state"] == "manual" and it["manual"]:
            print(f"      {it['manual']}")
    return EXIT_ERROR if corrupted else 0


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(
        prog="pxpermute", description="Channel importance for imaging flow cytometry (PXPermute).",
        epilog="Run 'pxpermute COMMAND --help' for a command's options. Exit status: 0 ok, 1 error, 2 bad invocation "
               "or refused model file, 130 interrupted.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(sub, common)
    _add_run(sub, common)
    _add_fetch(sub, common)
    _add_info(sub, common)
    return parser


def _describe(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message of an error."""
    from . import io

    msg = _one_line(err) or type(err).__name__
    if isinstance(err, CLIError):
        return err.code, msg
    if isinstance(err, io.UnsafeModelFileError):
        return EXIT_USAGE, msg
    if isinstance(err, KeyError):  # str(KeyError) quotes its message
        msg = _one_line(err.args[0]) if err.args else "KeyError"
    known = (ValueError, TypeError, OSError, KeyError, IndexError, ImportError)
    if type(err).__name__ == "OutOfMemoryError":
        return EXIT_ERROR, f"out of memory on the device: {msg[:300]} (try a smaller --batch-size)"
    if isinstance(err, known):
        return EXIT_ERROR, msg
    return EXIT_ERROR, f"{type(err).__name__}: {msg} (unexpected; rerun with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"pxpermute: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = debug or bool(getattr(args, "debug", False))

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"pxpermute: warning: {_one_line(message)}", file=sys.stderr)

    saved = warnings.showwarning
    if not debug:
        warnings.showwarning = one_line_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"pxpermute {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  (the one place every error becomes one line)
        code, msg = _describe(err)
        if debug:
            traceback.print_exc()
        print(f"pxpermute {args.command}: error: {msg}", file=sys.stderr)
        return code
    finally:
        warnings.showwarning = saved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
