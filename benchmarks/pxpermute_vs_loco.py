"""PXPermute vs leave-one-channel-out (LOCO) retraining: wall-clock on the same data and hardware.

Protocol (as in the paper's run-time comparison, Shetab Boushehri et al. 2024,
where per fold PXPermute took 65 min and LOCO 364 min on WBC -- 5.6x):

1. synthetic data (a preset of :func:`pxpermute.datasets.synthetic.make_synthetic`);
2. stratified cross-validation with all channels (:func:`pxpermute.training.cross_validate`,
   the package's single retraining routine) -- the model both methods start from;
3. PXPermute: :func:`pxpermute.channel_importance` with each fold's model on that
   fold's test cells (k repeats; optionally adaptive k as well);
4. LOCO: for each channel, the same cross-validation without that channel; the
   importance is the F1-macro drop against step 2.

Per fold, LOCO costs C retrainings (C + 1 counting the all-channel model, the
paper's convention) and PXPermute one importance run.  Reported: seconds, the
speed-up ratios LOCO / PXPermute, and how well the two rankings agree (Spearman).
Everything runs in one process, so the ratio is measured under the same load.

Run:  python benchmarks/pxpermute_vs_loco.py [--quick] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def run(preset: str = "wbc", n_samples: int = 1500, image_size: int | None = None, model: str = "resnet18",
        max_epochs: int = 100, n_splits: int = 5, folds: int | None = None, k: int = 100, adaptive: bool = True,
        seed: int = 0, device: str = "cpu", batch_size: int = 256, progress: bool = False,
        width: int | None = None) -> dict:
    from pxpermute.datasets.synthetic import make_synthetic
    from pxpermute.evaluation import runtime_vs_loco

    ds = make_synthetic(preset, n_samples=n_samples, image_size=image_size, random_state=seed)
    r = runtime_vs_loco(ds, n_splits=n_splits, folds=folds, n_repeats=k, adaptive=adaptive, random_state=seed,
                        batch_size=batch_size, device=device, progress=progress, model=model, max_epochs=max_epochs,
                        model_kwargs={"width": width} if width else None)
    out = {"preset": preset}
    for key, v in r.items():
        if isinstance(v, np.ndarray):
            v = np.round(v, 4).tolist()
        elif isinstance(v, float):
            v = round(v, 3)
        out[key] = v
    out["paper_wbc"] = {"pxpermute_min": 65, "loco_min": 364, "speedup": 5.6}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wbc")
    ap.add_argument("--n-samples", type=int, default=1500)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "small_cnn"])
    ap.add_argument("--max-epochs", type=int, default=100, help="the recipe's cap; early stopping (10) usually ends sooner")
    ap.add_argument("--width", type=int, default=None, help="small_cnn width (default 32)")
    ap.add_argument("--n-splits", type=int, default=5)
    ap.add_argument("--folds", type=int, default=None,
                    help="run PXPermute and LOCO on only this many folds (time per fold is reported)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--no-adaptive", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="small run: 400 cells 16x16, small_cnn width 8, <= 30 epochs, timed on 1 of 5 folds")
    ap.add_argument("--out", default=None, help="write the JSON here as well")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    kw = dict(preset=args.preset, n_samples=args.n_samples, image_size=args.image_size, model=args.model,
              max_epochs=args.max_epochs, n_splits=args.n_splits, folds=args.folds, k=args.k,
              adaptive=not args.no_adaptive, device=args.device, width=args.width)
    if args.quick:
        kw.update(n_samples=400, image_size=16, model="small_cnn", width=8, max_epochs=min(args.max_epochs, 30), folds=1)
    t = time.perf_counter()
    res = run(**kw)
    res.update(total_s=round(time.perf_counter() - t, 1), device=args.device, threads=torch.get_num_threads(),
               torch=torch.__version__, cpu=platform.processor() or platform.machine())
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
