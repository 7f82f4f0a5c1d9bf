"""Command line: ``pxpermute demo`` and friends (thin layer over the API, no logic of its own)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="generate data, train a small classifier, run PXPermute and show the channel ranking",
        description=(
            "End-to-end PXPermute on an embedded data set: the synthetic IFC default (planted, known channel "
            "relevance) or the real Jurkat cell-cycle sample shipped with the package. Trains a classifier, "
            "runs PXPermute (within-image pixel permutation) and the cross-sample variant, prints the channel "
            "ranking with 95%% CIs (next to the planted truth for synthetic data) and writes a figure and the "
            "result files."
        ),
    )
    p.add_argument("--data", default="synthetic", choices=["synthetic", "cellcycle"],
                   help="synthetic IFC data with known answer (default) or the embedded real cell-cycle sample")
    p.add_argument("--preset", default="default", help="synthetic preset (default, apoptotic, synapse, wbc, panel20)")
    p.add_argument("--n-samples", type=int, default=2000, help="synthetic cells to generate (default 2000)")
    p.add_argument("--k", type=int, default=100, help="PXPermute repeats per channel (paper: 100)")
    p.add_argument("--k-sample", type=int, default=30, help="repeats of the cross-sample variant (default 30)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (early stopping may stop sooner)")
    p.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    p.add_argument("--width", type=int, default=16, help="filters in the first block of small_cnn (default 16)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pxpermute-output", help="folder for the figure and result files")
    p.add_argument("--no-sample", action="store_true", help="skip the cross-sample permutation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from sklearn.model_selection import train_test_split

    from . import channel_importance
    from .metrics import compute_metric, confusion_matrix
    from .plotting import plot_importance, plot_per_class
    from .training import train_classifier

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    if args.data == "synthetic":
        from .datasets import make_synthetic

        ds = make_synthetic(args.preset, n_samples=args.n_samples, random_state=args.seed)
    else:
        from .datasets import load_cellcycle_sample

        ds = load_cellcycle_sample()
    print(ds)
    idx = np.arange(len(ds))
    train_idx, test_idx = train_test_split(idx, test_size=args.test_fraction, stratify=ds.labels, random_state=args.seed)
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

    results = {"pixel": channel_importance(net, test, n_repeats=args.k, random_state=args.seed, progress=progress)}
    if not args.no_sample:
        results["sample"] = channel_importance(net, test, n_repeats=args.k_sample, perturbation="sample",
                                               random_state=args.seed, progress=progress)
    for res in results.values():
        res.info["data"] = f"{ds.name}" + (f" (seed {args.seed})" if args.data == "synthetic" else "")
        res.info["model"] = args.model

    gt = ds.ground_truth
    print()
    print(_table(results, ds))
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
                          ground_truth=gt, normalized=False, title=f"{ds.name}: {args.model}, k={args.k} (sample: {args.k_sample}), seed={args.seed}, "
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


def _table(results: dict, ds) -> str:
    gt = ds.ground_truth
    names = results["pixel"].channel_names
    head = f"{'channel':<10}"
    if gt is not None:
        head += f"{'role':<15}{'planted':>8}"
    for k in results:
        head += f"  {k + ' permutation [95% CI]':>32}"
    head += "  stain-free"
    lines = [head, "-" * len(head)]
    order = results["pixel"].ranking
    for c in order:
        row = f"{names[c]:<10}"
        if gt is not None:
            row += f"{gt.roles[c]:<15}{gt.relevance[c]:>8.2f}"
        for res in results.values():
            lo, hi = res.ci_low[c], res.ci_high[c]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else ""
            row += f"  {res.importance[c]:>+10.3f} {ci:>21}"
        row += f"  {'yes' if ds.stain_free[c] else 'no':>10}"
        lines.append(row)
    return "\n".join(lines)


import numpy as np  # noqa: E402  (used by _table)


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="channel importance of a saved model on a saved data set (works under torchrun)",
        description=(
            "Run PXPermute (or the sample/fill perturbations) for a saved model on a saved data set and write the "
            "result (.json + .npz). Under `torchrun --nproc-per-node N -m pxpermute run ...` every process "
            "evaluates a shard of the cells and all get the same result, equal to a single-process run."
        ),
    )
    p.add_argument("--model", required=True,
                   help="TorchScript file or torch.save'd full nn.Module (unpickling runs code: trusted files only)")
    p.add_argument("--data", required=True,
                   help="HDF5 written by pxpermute.datasets.write_hdf5_dataset (read lazily) or .npz with X, y")
    p.add_argument("--out", default="pxpermute-result", help="result path stem (writes STEM.json and STEM.npz)")
    p.add_argument("--k", type=int, default=100, help="permutation repeats per channel (the cap with --adaptive)")
    p.add_argument("--perturbation", default="pixel", choices=["pixel", "sample", "fill"])
    p.add_argument("--metric", default="f1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (each torchrun process takes cuda:LOCAL_RANK)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers prefetching blocks of lazy data")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format on CUDA")
    p.add_argument("--adaptive", action="store_true", help="stop adding repeats once the ranking is settled")
    p.add_argument("--checkpoint", default=None, help="partial-result file to write and resume from")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from . import channel_importance
    from .scale import init_distributed, load_data, load_model

    rank, world, device = init_distributed(args.device)
    try:
        model = load_model(args.model, map_location=device or "cpu")
        data = load_data(args.data)
        res = channel_importance(
            model, data, n_repeats=args.k, perturbation=args.perturbation, metric=args.metric, random_state=args.seed,
            batch_size=args.batch_size, device=device, num_workers=args.num_workers, amp=args.amp,
            channels_last=args.channels_last, adaptive=args.adaptive, checkpoint=args.checkpoint,
            progress=not args.quiet,
        )
        if rank == 0:
            path = res.save(args.out)
            print(res.summary())
            print(f"wrote {path} and {path.with_suffix('.npz')} (k={res.n_repeats}, processes={world})")
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pxpermute", description="Channel importance for imaging flow cytometry (PXPermute).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    _add_demo(sub)
    _add_run(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
