"""Parallel retraining: wall-clock of a retraining study with n_jobs = 1, 2, ... on this machine.

Workload: :func:`pxpermute.evaluation.leave_one_channel_out` -- the all-channel
cross-validation plus one cross-validation per left-out channel, i.e.
``(C + 1) x n_splits`` independent trainings -- on a synthetic preset with the
small CNN.  Every n_jobs runs the same call; all trainings of the study form one
joblib batch (:func:`pxpermute.training.run_trainings`), each worker with
``cores // n_jobs`` torch threads.

Reported per n_jobs: wall seconds of the study (the worker processes are
started and have imported torch beforehand, reported apart as
``worker_start_s``), trainings, trainings per minute, speed-up against
n_jobs = 1, and whether the importances equal the serial ones (bit for
bit only when both runs give each training the same number of torch threads:
with ``--same-threads`` the serial run uses ``cores // max(n_jobs)`` threads,
otherwise all cores, as a user would run it).  The load average before and
after is recorded, because other processes on a shared machine slow the
parallel run most.

Run:  python benchmarks/parallel_retraining.py [--quick] [--n-jobs 1 2] [--out benchmarks/results/x.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _warm_up() -> int:
    import pxpermute.training  # noqa: F401  (what every training task imports first)

    return os.getpid()


def run(preset: str = "apoptotic", n_samples: int = 600, image_size: int | None = 32, n_splits: int = 5,
        max_epochs: int = 8, width: int = 16, n_jobs: tuple[int, ...] = (1, 2), seed: int = 0,
        same_threads: bool = False) -> dict:
    import joblib

    from pxpermute.datasets.synthetic import make_synthetic
    from pxpermute.evaluation import leave_one_channel_out

    ds = make_synthetic(preset, n_samples=n_samples, image_size=image_size, random_state=seed)
    train = dict(model="small_cnn", model_kwargs={"width": width}, max_epochs=max_epochs, batch_size=64)
    cores = joblib.cpu_count()
    serial_threads = max(1, cores // max(n_jobs)) if same_threads else torch.get_num_threads()
    runs, reference = [], None
    for nj in n_jobs:
        start_s = 0.0
        if nj != 1:  # start the worker processes (they import torch and pxpermute) outside the timed study
            t = time.perf_counter()
            joblib.Parallel(n_jobs=nj)(joblib.delayed(_warm_up)() for _ in range(nj))
            start_s = time.perf_counter() - t
        before = os.getloadavg()[0]
        threads_before = torch.get_num_threads()
        if nj == 1:
            torch.set_num_threads(serial_threads)
        t = time.perf_counter()
        res = leave_one_channel_out(ds, n_splits=n_splits, random_state=seed, n_jobs=nj, progress=False, **train)
        wall = time.perf_counter() - t
        torch.set_num_threads(threads_before)
        imp = res.importances
        if reference is None:
            reference = imp
        row = {"n_jobs": nj, "wall_s": round(wall, 2), "worker_start_s": round(start_s, 2),
               "trainings": int(res.info["n_trainings"]),
               "trainings_per_min": round(60 * res.info["n_trainings"] / wall, 2),
               "threads_per_training": serial_threads if nj == 1 else max(1, cores // nj),
               "loadavg_1min_before": round(before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
               "importances_equal_first_run": bool(np.array_equal(imp, reference)),
               "max_abs_diff_to_first_run": float(np.max(np.abs(imp - reference))),
               "ranking": res.ranked_channels}
        runs.append(row)
    base = runs[0]["wall_s"]
    for row in runs:
        row["speedup_vs_first"] = round(base / row["wall_s"], 2)
    return {"benchmark": "parallel_retraining", "workload": "leave_one_channel_out", "preset": preset,
            "n_samples": n_samples, "image_size": image_size, "n_channels": ds.n_channels, "n_splits": n_splits,
            "model": "small_cnn", "width": width, "max_epochs": max_epochs, "seed": seed, "cores": cores,
            "same_threads": same_threads, "runs": runs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="apoptotic")
    ap.add_argument("--n-samples", type=int, default=600)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--n-splits", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--same-threads", action="store_true",
                    help="serial run with cores // max(n_jobs) torch threads, so results can match bit for bit")
    ap.add_argument("--quick", action="store_true", help="small run: 300 cells 16x16, 3 folds, 4 epochs")
    ap.add_argument("--out", default=None, help="write the JSON here as well")
    args = ap.parse_args(argv)
    kw = dict(preset=args.preset, n_samples=args.n_samples, image_size=args.image_size, n_splits=args.n_splits,
              max_epochs=args.max_epochs, width=args.width, n_jobs=tuple(args.n_jobs), same_threads=args.same_threads)
    if args.quick:
        kw.update(n_samples=300, image_size=16, n_splits=3, max_epochs=4, width=8)
    t = time.perf_counter()
    res = run(**kw)
    res.update(total_s=round(time.perf_counter() - t, 1), torch=torch.__version__,
               cpu=platform.processor() or platform.machine(), python=platform.python_version())
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
