"""Engine throughput vs the pure forward passes it needs (issue: foundation benchmark).

For each (C, H, W, k) configuration, times
  (a) channel_importance(model, N images, n_repeats=k)    -- perturbation + forward + confusion matrices
  (b) the bare forward passes of the same model over the same number of images, N * (1 + C * k),
      in batches of the same size, on a pre-made tensor (no data handling at all)
in one process, interleaved (a, b, a, b ...), and prints JSON with the ratio a / b: the ratio of the
best times and, per round, the ratio of the adjacent pair (median, min, max over `--rounds`), with the
load average before and after (on a shared machine the per-round ratios show how much load distorts it).
Run:  python benchmarks/engine_overhead.py [--device cuda] [--amp] [--channels-last] [--quick] [--out FILE]
      python benchmarks/engine_overhead.py --issue17 --rounds 7   # the issue-17 CPU target: 2x32x32,
            k = 4, ResNet18, batch 256; JSON to benchmarks/results/engine_overhead_cpu_<date>.json
(--amp / --channels-last apply to both the engine and the bare forward passes.  --before-after also times,
in the same interleaved rounds, the engine with pixel permutations by a stable torch.argsort ("generic_argsort",
the path before the CPU fast path) and the pre-issue-17 hot path.  Every round also times the call with
n_bootstrap=0, "without_bootstrap": the default Poisson bootstrap over test cells comes on top of the engine.)
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
import torchvision

from pxpermute import channel_importance


def resnet18(c: int, k: int) -> torch.nn.Module:
    m = torchvision.models.resnet18(num_classes=k)
    m.conv1 = torch.nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def pure_forward(model, n_images: int, batch: int, shape, device, amp: bool = False,
                 channels_last: bool = False) -> float:
    import contextlib

    x = torch.randn(batch, *shape, device=device)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    done = 0
    t = time.perf_counter()
    with torch.inference_mode(), ctx:
        while done < n_images:
            b = min(batch, n_images - done)
            model(x[:b]).argmax(1)
            done += b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


class before_issue17:
    """Context manager: the engine's hot path as before issue 17 item 3, for a same-process comparison.

    Every perturbed forward pass checks its outputs immediately (NaN/inf and label range read back to
    the host: one device sync per pass) and the key head is computed as a 1-element tensor moved to
    the device per call.  Counting (bincount on CPU) and the CPU block path are unchanged code anyway.
    """

    def __enter__(self):
        import pxpermute.keys as keys
        from pxpermute.predictor import _Predictor

        self.call, self.head = _Predictor.__call__, keys._head
        orig = self.call

        def call(pred, x, n_classes, *, deferred=None):  # drop the deferred check
            return orig(pred, x, n_classes)

        def head(seed, unit, tag):
            h = keys._mix64(torch.tensor([seed], dtype=torch.int64))
            return int(keys._mix64_(h ^ keys._as_i64(tag * 0x100000001B3 + unit)))

        _Predictor.__call__, keys._head = call, head
        return self

    def __exit__(self, *exc):
        import pxpermute.keys as keys
        from pxpermute.predictor import _Predictor

        _Predictor.__call__, keys._head = self.call, self.head


class generic_argsort:
    """Context manager: pixel permutations by ``torch.argsort(keys, stable=True)`` (the path before the
    CPU fast path of :func:`pxpermute.perturb._pixel_permutation_cpu`; identical permutations)."""

    def __enter__(self):
        import pxpermute.perturb as pp

        self.fast = pp._pixel_permutation_cpu
        pp._pixel_permutation_cpu = lambda base, n_pixels: None
        return self

    def __exit__(self, *exc):
        import pxpermute.perturb as pp

        pp._pixel_permutation_cpu = self.fast


def _variant(what: str, times: list[float], t_fwd: list[float]) -> dict:
    """Ratios of one engine variant's times to the pure forward runs of the same rounds."""
    pair = np.array(times) / np.array(t_fwd)
    return {"what": what, "engine_s_all": [round(v, 4) for v in times], "ratio": round(min(times) / min(t_fwd), 4),
            "ratio_median_of_pairs": round(float(np.median(pair)), 4),
            "ratio_min_max_of_pairs": [round(float(pair.min()), 4), round(float(pair.max()), 4)],
            "ratio_of_medians": round(float(np.median(times) / np.median(t_fwd)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    ap.add_argument("--channels-last", action="store_true", help="channels-last memory format (CUDA only)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--before-after", action="store_true",
                    help="also time the pre-issue-17 hot path (per-pass checks) in the same interleaved rounds")
    ap.add_argument("--issue17", action="store_true",
                    help="only the issue-17 CPU target configuration (2x32x32, k=4, N=256), JSON to results/")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    configs = [  # (C, H, W, k, N)
        (2, 32, 32, 10, 256),
        (6, 32, 32, 5, 256),
        (12, 64, 64, 3, 64),
        (8, 128, 128, 2, 32),
    ]
    if device.type == "cuda":
        configs = [(c, h, w, k * 10, n * 8) for c, h, w, k, n in configs]
    if args.quick:
        configs = configs[:2]
    if args.issue17:
        configs = [(2, 32, 32, 4, 256)]
        if args.out is None:
            date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            args.out = str(Path(__file__).parent / "results" / f"engine_overhead_{device.type}_{date}.json")
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "batch_size": args.batch_size,
           "amp": args.amp, "channels_last": args.channels_last, "rounds": args.rounds,
           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "load_avg_start": [round(v, 2) for v in os.getloadavg()], "results": []}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    for C, H, W, k, N in configs:
        torch.manual_seed(0)
        model = resnet18(C, 4).to(device).eval()
        if args.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        rng = np.random.default_rng(0)
        X = rng.random((N, C, H, W), dtype=np.float32)
        y = rng.integers(0, 4, N)
        n_img = N * (1 + C * k)
        channel_importance(model, (X[:8], y[:8]), n_repeats=1, progress=False, random_state=0)  # warm-up
        pure_forward(model, args.batch_size, args.batch_size, (C, H, W), device, args.amp, args.channels_last)
        t_eng, t_fwd, t_old, t_arg, t_nob = [], [], [], [], []
        for _ in range(args.rounds):
            if args.before_after:
                with generic_argsort():
                    t = time.perf_counter()
                    res_arg = channel_importance(model, (X, y), n_repeats=k, batch_size=args.batch_size,
                                                 progress=False, random_state=0, device=device, amp=args.amp,
                                                 channels_last=args.channels_last)
                    t_arg.append(time.perf_counter() - t)
                with before_issue17(), generic_argsort():
                    t = time.perf_counter()
                    res_old = channel_importance(model, (X, y), n_repeats=k, batch_size=args.batch_size,
                                                 progress=False, random_state=0, device=device, amp=args.amp,
                                                 channels_last=args.channels_last)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = channel_importance(model, (X, y), n_repeats=k, batch_size=args.batch_size, progress=False,
                                     random_state=0, device=device, amp=args.amp, channels_last=args.channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_eng.append(time.perf_counter() - t)
            t = time.perf_counter()  # the same run without the default bootstrap over test cells (n_bootstrap=999)
            res_nob = channel_importance(model, (X, y), n_repeats=k, batch_size=args.batch_size, progress=False,
                                         random_state=0, device=device, amp=args.amp,
                                         channels_last=args.channels_last, n_bootstrap=0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_nob.append(time.perf_counter() - t)
            t_fwd.append(pure_forward(model, n_img, args.batch_size, (C, H, W), device, args.amp, args.channels_last))
            assert res.info["n_forward_images"] == n_img
        te, tf = min(t_eng), min(t_fwd)
        # pairs: each engine run against the forward run right after it
        main_ratios = {k_: v for k_, v in _variant("", t_eng, t_fwd).items() if k_ != "what"}
        out["results"].append({"C": C, "H": H, "W": W, "k": k, "N": N, "forward_images": n_img,
                               "engine_s": round(te, 4), "pure_forward_s": round(tf, 4),
                               "engine_img_per_s": round(n_img / te, 1),
                               "pure_forward_s_all": [round(v, 4) for v in t_fwd], **main_ratios,
                               "load_avg_after": [round(v, 2) for v in os.getloadavg()]})
        assert np.array_equal(res_nob.confusion, res.confusion)
        row = out["results"][-1]
        row["without_bootstrap"] = _variant(
            "the same call with n_bootstrap=0: perturbation + forward + confusion matrices only (the engine as the "
            "issue defines it); the default adds a Poisson bootstrap over test cells (999 replicates)", t_nob, t_fwd)
        if t_arg:
            assert np.array_equal(res_arg.confusion, res.confusion)  # the same permutations either way
            row["generic_argsort"] = _variant(generic_argsort.__doc__.split("\n")[0], t_arg, t_fwd)
        if t_old:
            assert np.array_equal(res_old.confusion, res.confusion)  # the same numbers either way
            row["before"] = _variant(before_issue17.__doc__.split("\n")[0], t_old, t_fwd)
        print(json.dumps(out["results"][-1]), flush=True)
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
