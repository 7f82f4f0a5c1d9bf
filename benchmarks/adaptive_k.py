"""Adaptive k vs fixed k = 100 on the synthetic presets: forward passes saved, ranking kept?

For each preset: generate data, train one classifier (the package recipe,
:func:`pxpermute.training.train_classifier`), then run PXPermute on the held-out
cells with the published k = 100 and with ``adaptive=True`` (cap 100, default
rule of :class:`pxpermute.scale.AdaptiveK`).  Reported per preset: k used,
forward images and seconds of both, the fraction of forward passes saved, and
whether the rankings agree -- exactly, on the channels that carry signal a pixel
permutation can see (planted relevance > 0), and as Kendall's tau.

The adaptive run uses the same seed, so its repeats are exactly the first k of
the fixed run (counter-based permutations); differences in ranking come only
from stopping earlier.

Run:  python benchmarks/adaptive_k.py [--quick] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

PRESETS = ("default", "apoptotic", "synapse", "wbc", "panel20")


def run_preset(preset: str, *, n_samples: int, model: str, max_epochs: int, k: int, seed: int = 0,
               image_size: int | None = None, model_kwargs: dict | None = None) -> dict:
    from scipy.stats import kendalltau
    from sklearn.model_selection import train_test_split

    from pxpermute import channel_importance
    from pxpermute.datasets.synthetic import expected_relevance, make_synthetic
    from pxpermute.training import train_classifier

    ds = make_synthetic(preset, n_samples=n_samples, image_size=image_size, random_state=seed)
    tr, te = train_test_split(np.arange(len(ds)), test_size=0.25, stratify=ds.labels, random_state=seed)
    t = time.perf_counter()
    net = train_classifier(ds, train_indices=tr, model=model, model_kwargs=model_kwargs, max_epochs=max_epochs,
                           random_state=seed)
    t_train = time.perf_counter() - t
    test = ds.subset(te)
    t = time.perf_counter()
    fixed = channel_importance(net, test, n_repeats=k, random_state=seed, progress=False)
    t_fixed = time.perf_counter() - t
    t = time.perf_counter()
    ad = channel_importance(net, test, n_repeats=k, random_state=seed, progress=False, adaptive=True)
    t_ad = time.perf_counter() - t
    assert np.array_equal(ad.confusion, fixed.confusion[: ad.n_repeats])  # same repeats, fewer of them

    rel = expected_relevance(ds.ground_truth, perturbation="pixel")
    signal = [int(i) for i in fixed.ranking if rel[i] > 0]
    ad_signal = [int(i) for i in ad.ranking if rel[i] > 0]
    return {
        "preset": preset, "channels": ds.n_channels, "n_test": len(te), "train_s": round(t_train, 1),
        "f1_macro_test": round(float(fixed.baseline_score), 3),  # mean per-class F1 = F1-macro
        "k_fixed": k, "k_adaptive": int(ad.info["n_repeats"]), "stopped": ad.info["adaptive"]["stopped"],
        "forward_images_fixed": int(fixed.info["n_forward_images"]),
        "forward_images_adaptive": int(ad.info["n_forward_images"]),
        "forward_saved_fraction": round(1 - ad.info["n_forward_images"] / fixed.info["n_forward_images"], 3),
        "seconds_fixed": round(t_fixed, 2), "seconds_adaptive": round(t_ad, 2),
        "same_ranking": bool(list(ad.ranking) == list(fixed.ranking)),
        "same_ranking_signal_channels": bool(ad_signal == signal),
        "kendall_tau": round(float(kendalltau(ad.importance, fixed.importance).statistic), 3),
        "ranking_fixed": fixed.ranked_channels,
        "ranking_adaptive": ad.ranked_channels,
        "signal_channels": [ds.channel_names[i] for i in signal],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--width", type=int, default=None, help="small_cnn width (default 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="800 cells, 8 epochs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, ep = (800, 8) if args.quick else (args.n_samples, args.max_epochs)
    rows = []
    for p in args.presets:
        rows.append(run_preset(p, n_samples=n, model=args.model, max_epochs=ep, k=args.k, image_size=args.image_size,
                               model_kwargs={"width": args.width} if args.width else None))
        print(json.dumps(rows[-1]), flush=True)
    fi = sum(r["forward_images_fixed"] for r in rows)
    fa = sum(r["forward_images_adaptive"] for r in rows)
    out = {"model": args.model, "width": args.width, "image_size": args.image_size, "n_samples": n, "max_epochs": ep,
           "k": args.k, "presets": rows,
           "total_forward_saved_fraction": round(1 - fa / fi, 3),
           "same_ranking_all": all(r["same_ranking"] for r in rows),
           "same_signal_ranking_all": all(r["same_ranking_signal_channels"] for r in rows),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
