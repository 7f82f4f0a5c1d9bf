"""Runtime comparisons, each measured in ONE process with both times (issue 17, item 4).

1. PXPermute (fixed k and adaptive k) vs leave-one-channel-out (LOCO) retraining
   - on the real Jurkat cell-cycle data (:func:`pxpermute.datasets.load_cellcycle`, found through
     ``PXPERMUTE_DATA_DIR``; optionally a stratified subset), and
   - on synthetic presets (:func:`pxpermute.datasets.synthetic.make_synthetic`).
   Protocol per data set: one fold of a stratified ``n_splits``-fold split (seed 42); the
   all-channel model is trained with the published recipe (:func:`pxpermute.training.cross_validate`:
   AdamW 1e-3, batch 128, flips + noise, oversampling, plateau schedule, early stopping on validation
   F1-macro) with ``--model`` (default the small CNN: the shared 2-core machine is far too loaded for
   ResNet18 trainings within the time budget; ``--model resnet18`` is the published network) and
   ``--epochs`` epochs; PXPermute runs with that model on the fold's
   held-out cells; LOCO retrains the same recipe once per left-out channel on the same fold
   (:func:`pxpermute.evaluation.leave_one_channel_out` with the all-channel run as reference).
   Reported: seconds of each part, the ratios LOCO / PXPermute (C trainings, and C + 1 counting the
   all-channel model as the paper does), seconds per training epoch, and the ratio extrapolated to
   other epoch counts: LOCO time grows linearly with epochs while PXPermute's does not, so
   ratio(E) ~= C * E * (seconds per epoch) / (PXPermute seconds).
2. The engine's cross-sample variant (``perturbation="sample"``) vs captum's ``FeaturePermutation``
   (which permutes each channel across the images of the batch), ResNet18 at 2x32x32, at equal work:
   both run N * (1 + C * k) forward images for the engine, N * k * (1 + C) for captum (captum
   repeats its unperturbed forward in every call); times per forward image are reported too.
   Interleaved over ``--rounds`` rounds; medians and spreads.

Everything is recorded in the JSON (load average before/after, torch threads, epochs, subset sizes).

Run:  PXPERMUTE_DATA_DIR=/work/shared/data nice -n 19 python benchmarks/runtime_comparison.py \
          [--epochs 5] [--model small_cnn] [--real-cap 100] [--presets apoptotic default] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _per_class_cap(ds, cap: int | None, seed: int = 0):
    """At most ``cap`` cells per class, drawn at random (all cells of the rarer classes are kept)."""
    if not cap:
        return ds
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(ds.n_classes):
        idx = np.flatnonzero(ds.labels == c)
        keep.append(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False))
    return ds.subset(np.sort(np.concatenate(keep)))


def px_vs_loco(ds, *, label: str, epochs: int, k: int, n_splits: int, model: str, batch_size: int,
               save_model: str | None = None) -> dict:
    from pxpermute import channel_importance
    from pxpermute.evaluation import leave_one_channel_out
    from pxpermute.training import cross_validate

    C = ds.n_channels
    kw = dict(model=model, max_epochs=epochs)
    load0 = _load()
    t = time.perf_counter()
    ref = cross_validate(ds, n_splits=n_splits, folds=[0], random_state=42, progress=False, **kw)
    t_ref = time.perf_counter() - t
    ep = [int(len(m.history)) for m in ref.models]
    test = ds.subset(ref.test_indices[0])
    net = ref.models[0]
    if save_model:  # the fold's model and test cells, reused by benchmarks/adaptive_k.py --cellcycle-model
        import pickle

        Path(save_model).write_bytes(pickle.dumps({"net": net, "test_indices": ref.test_indices[0], "label": label,
                                                   "train_s": t_ref, "epochs": epochs, "model": model}))
    opts = dict(n_repeats=k, random_state=0, batch_size=batch_size, progress=False)
    t = time.perf_counter()
    fixed = channel_importance(net, test, **opts)
    t_px = time.perf_counter() - t
    t = time.perf_counter()
    ada = channel_importance(net, test, adaptive=True, **opts)
    t_ada = time.perf_counter() - t
    t = time.perf_counter()
    loco = leave_one_channel_out(ds, n_splits=n_splits, random_state=42, reference=ref, folds=[0], progress=False, **kw)
    t_loco = time.perf_counter() - t
    s_epoch = t_ref / max(1, ep[0])
    out = {
        "data": label, "n_cells": len(ds), "n_test_cells": len(test), "image_shape": list(ds.image_shape),
        "channels": list(ds.channel_names), "n_splits": n_splits, "fold": 0, "model": model,
        "max_epochs": epochs, "epochs_trained": ep, "f1_macro_all_channels": round(float(ref.f1_macro[0]), 4),
        "train_all_channels_s": round(t_ref, 2), "train_s_per_epoch": round(s_epoch, 3),
        "pxpermute_fixed": {"k": k, "seconds": round(t_px, 2), "n_forward_images": int(fixed.info["n_forward_images"]),
                            "ranking": list(fixed.ranked_channels),
                            "per_repeat_importances": np.round(fixed.importances, 6).tolist()},
        "pxpermute_adaptive": {"k_cap": k, "k_used": int(ada.info["n_repeats"]), "seconds": round(t_ada, 2),
                               "n_forward_images": int(ada.info["n_forward_images"]),
                               "stopped": (ada.info.get("adaptive") or {}).get("stopped"),
                               "rule": {k_: v for k_, v in (ada.info.get("adaptive") or {}).items()
                                        if k_ in ("method", "min_repeats", "chunk", "growth", "confidence", "tol")},
                               "ranking": list(ada.ranked_channels)},
        "loco": {"seconds": round(t_loco, 2), "n_trainings": int(loco.info["n_trainings"]),
                 "ranking": list(loco.ranked_channels), "importance": np.round(loco.importance, 4).tolist()},
        "ratio_loco_over_px_fixed": round(t_loco / t_px, 3),
        "ratio_loco_plus_ref_over_px_fixed": round((t_loco + t_ref) / t_px, 3),
        "ratio_loco_over_px_adaptive": round(t_loco / t_ada, 3),
        "ratio_loco_plus_ref_over_px_adaptive": round((t_loco + t_ref) / t_ada, 3),
        "extrapolated_ratio_loco_over_px_fixed": {
            str(e): round(C * e * s_epoch / t_px, 2) for e in (10, 20, 50, 100)},
        "extrapolation_note": ("LOCO cost is C trainings x epochs x seconds per epoch (measured here), PXPermute's "
                               "does not depend on epochs; early stopping usually ends the published recipe "
                               "(max 100 epochs) well before 100"),
        "load_avg_before": load0, "load_avg_after": _load(),
    }
    print(json.dumps({k_: out[k_] for k_ in ("data", "ratio_loco_over_px_fixed", "ratio_loco_over_px_adaptive",
                                              "train_s_per_epoch")}), flush=True)
    return out


def engine_vs_captum(*, k: int, n: int, rounds: int, batch_size: int) -> dict:
    import torchvision
    from captum.attr import FeaturePermutation

    from pxpermute import channel_importance

    C, H, W, K = 2, 32, 32, 4
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=K)
    model.conv1 = torch.nn.Conv2d(C, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.eval()
    rng = np.random.default_rng(0)
    X = rng.random((n, C, H, W), dtype=np.float32)
    y = rng.integers(0, K, n)
    xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)
    mask = torch.arange(C).view(1, C, 1, 1).expand(1, C, H, W)
    fp = FeaturePermutation(model)
    calls = {"n": 0}

    def count(_m, inp, _o):
        calls["n"] += inp[0].shape[0]

    channel_importance(model, (X[:8], y[:8]), n_repeats=1, perturbation="sample", progress=False)  # warm-up
    t_eng, t_cap, fwd_cap = [], [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        res = channel_importance(model, (X, y), n_repeats=k, perturbation="sample", batch_size=batch_size,
                                 random_state=0, progress=False)
        t_eng.append(time.perf_counter() - t)
        h = model.register_forward_hook(count)
        calls["n"] = 0
        t = time.perf_counter()
        with torch.no_grad():
            for r in range(k):
                torch.manual_seed(r)
                fp.attribute(xt, target=yt, feature_mask=mask, perturbations_per_eval=1)
        t_cap.append(time.perf_counter() - t)
        h.remove()
        fwd_cap = calls["n"]
    n_eng = int(res.info["n_forward_images"])
    te, tc = float(np.median(t_eng)), float(np.median(t_cap))
    ratios = np.array(t_cap) / np.array(t_eng)
    return {"model": "resnet18", "C": C, "H": H, "W": W, "n_images": n, "k": k, "rounds": rounds,
            "engine": {"perturbation": "sample", "seconds": [round(v, 3) for v in t_eng], "median_s": round(te, 3),
                       "n_forward_images": n_eng, "ms_per_forward_image": round(1e3 * te / n_eng, 4)},
            "captum_feature_permutation": {"seconds": [round(v, 3) for v in t_cap], "median_s": round(tc, 3),
                                           "n_forward_images": int(fwd_cap),
                                           "ms_per_forward_image": round(1e3 * tc / max(1, fwd_cap), 4)},
            "ratio_captum_over_engine_median": round(float(np.median(ratios)), 3),
            "ratio_spread_min_max": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
            "ratio_per_forward_image": round((tc / max(1, fwd_cap)) / (te / n_eng), 3),
            "note": "captum permutes the channel across the whole input batch (n images) and repeats the "
                    "unperturbed forward in each of its k calls; the engine swaps channels across the test set "
                    "(a Feistel bijection) and forwards the unperturbed images once",
            "load_avg_after": _load()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n-splits", type=int, default=5)
    ap.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--real-cap", type=int, default=100, help="at most this many real cells per class (0: all)")
    ap.add_argument("--presets", nargs="*", default=["apoptotic", "default"])
    ap.add_argument("--preset-samples", type=int, default=400)
    ap.add_argument("--captum-k", type=int, default=4)
    ap.add_argument("--captum-n", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["real", "presets", "captum"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-model", default=None, help="pickle the real-data fold model here (for adaptive_k.py)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out_path = Path(args.out or Path(__file__).parent / "results" / f"runtime_comparison_cpu_{date}.json")
    doc = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "niceness": os.nice(0), "args": vars(args), "load_avg_start": _load(),
           "note": "shared 2-core machine under heavy load from other jobs; both times of every ratio come from "
                   "the same process within minutes of each other", "px_vs_loco": [], "captum": None}

    def save() -> None:
        doc["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=2) + "\n")

    if "real" not in args.skip:
        from pxpermute.datasets import load_cellcycle

        full = load_cellcycle(download=False)
        ds = _per_class_cap(full, args.real_cap)
        r = px_vs_loco(ds, label=f"cellcycle (Blasi 2016, {len(ds)} of {len(full)} cells, <= {args.real_cap} per class)",
                       epochs=args.epochs, k=args.k, n_splits=args.n_splits, model=args.model,
                       batch_size=args.batch_size, save_model=args.save_model)
        doc["px_vs_loco"].append(r)
        save()
    if "captum" not in args.skip:
        doc["captum"] = engine_vs_captum(k=args.captum_k, n=args.captum_n, rounds=args.rounds,
                                         batch_size=args.batch_size)
        print(json.dumps(doc["captum"]), flush=True)
        save()
    if "presets" not in args.skip:
        from pxpermute.datasets.synthetic import make_synthetic

        for p in args.presets:
            ds = make_synthetic(p, n_samples=args.preset_samples, random_state=0)
            doc["px_vs_loco"].append(px_vs_loco(ds, label=f"synthetic:{p}", epochs=args.epochs, k=args.k,
                                                n_splits=args.n_splits, model=args.model, batch_size=args.batch_size))
            save()
    doc["load_avg_end"] = _load()
    save()
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
