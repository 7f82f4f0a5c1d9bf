"""Reference results on the full real Jurkat cell-cycle data (Blasi et al. 2016), stage by stage.

Runs, in order, and rewrites the JSON file after every stage (so partial results survive a
stopped run; a stage that did not run says so in ``stages``):

1. ``cv_small``    5-fold stratified CV (seed 42) of the small CNN on all channels.
2. ``stain_free``  the same folds with BF + DF only; paired tests all vs stain-free.
3. ``pxpermute``   PXPermute (k = 100, pixel) and the cross-sample variant (k = 100) on every
                   fold's held-out cells; per fold and pooled over folds.
4. ``baselines``   occlusion (fill 0), Integrated Gradients and DeepLift per fold.
5. ``k_ablation``  k = 5 ... 100 (prefixes of the k = 100 run, fold 0) and adaptive k.
6. ``roar``        remove-and-retrain: every ranking's 1- and 2-channel removals retrained
                   (small CNN, 5 folds) over ``--seeds`` seeds.
7. ``cv_resnet``   5-fold CV of ResNet18 on all channels (the published architecture).

Usage::

    PXPERMUTE_DATA_DIR=/path/to/data nice -n 19 python benchmarks/realdata_cellcycle.py \
        --epochs-small 15 --epochs-resnet 15 --deadline 17:35

``--deadline HH:MM`` (UTC) skips a stage that would start after it; the JSON records what ran,
at what scale, on which hardware, and how long it took.

JSON schema (``schema: "pxpermute-cellcycle-reference/1"``; every key below is present only once
its stage has run -- look at ``stages`` first)::

    schema, started, updated                  str (UTC times)
    dataset      {name, title, doi, n_cells, class_counts{phase: n}, channels, stain_free,
                  duplicates_dropped, subset}
    hardware     {machine, device, torch_threads, note}
    cv           {n_splits, random_state, valid_fraction, stratified}
    recipe       {small_cnn{model, model_kwargs, max_epochs}, resnet18{...}, common}
    stages       {<stage>: {status: done|failed|skipped, seconds, finished, note}}
    performance  {"small_cnn/all" | "small_cnn/stain_free" | "resnet18/all":
                  {model, model_kwargs, max_epochs, channels, f1_macro[fold], f1_macro_mean,
                   f1_macro_std, accuracy[fold], accuracy_mean, accuracy_std,
                   f1_per_class{phase: [fold]}, epochs_trained[fold], seconds}}
    stain_free_test  {reference, other, metric, alternative, mean_diff, t, p_ttest, t_corrected,
                      p_corrected_ttest, p_wilcoxon, note}
    importance   {"pxpermute" | "cross_sample":
                    {per_fold: [IMP], pooled: IMP + {fold_importances[fold][ch], fold_ci_low[ch],
                     fold_ci_high[ch], fold_ci_covers, ci_covers, method}},
                  "occlusion" | "integrated_gradients" | "deeplift":
                    {per_fold: [IMP], ranking_per_fold, mean_over_folds[ch], ranking, cells_per_fold}}
                 IMP = {channels, importance[ch], normalized[ch], ci_low[ch], ci_high[ch], ranking
                        (most important first), n_repeats, baseline_score, per_class_drop{phase: [ch]},
                        per_class_index[ch] (the channel order of per_class_drop)}
    k_ablation   {fold, perturbation, channels, rows: [{k, importance[ch], ci_low, ci_high, ranking}],
                  first_stable_k}
    adaptive_k   {fold, max_k, k_used, rule, ranking, importance[ch], seconds}
    remove_and_retrain  {model, model_kwargs, max_epochs, seeds, rankings{method: [ch]},
                         rows: [{seed, method, n_removed, channels, fold, f1_macro}],
                         summary: [{method, n_removed, mean, std, count}], interval_covers}
    normalization_check {features, classifier, variants{name: {high[ch], low[ch], f1_macro,
                         f1_per_class{phase}, clipped_pixels_per_cell{ch: {phase}}}}}
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "cellcycle_reference.json"
SCHEMA = "pxpermute-cellcycle-reference/1"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(doc: dict, path: Path) -> None:
    from pxpermute._fileio import atomic_write, jsonable

    doc["updated"] = _now()
    atomic_write(path, json.dumps(jsonable(doc), indent=1, allow_nan=False).encode())


def _cv_entry(cv, seconds: float, model: str, epochs: int, kwargs: dict) -> dict:
    return {
        "model": model,
        "model_kwargs": kwargs,
        "max_epochs": epochs,
        "channels": cv.channels,
        "f1_macro": cv.f1_macro.tolist(),
        "f1_macro_mean": cv.f1_macro_mean,
        "f1_macro_std": cv.f1_macro_std,
        "accuracy": cv.accuracy.tolist(),
        "accuracy_mean": cv.accuracy_mean,
        "accuracy_std": cv.accuracy_std,
        "f1_per_class": {c: cv.f1_per_class[:, i].tolist() for i, c in enumerate(cv.class_names)},
        "epochs_trained": [len(m.history) if m is not None else None for m in cv.models],
        "seconds": round(seconds, 1),
    }


def _imp_entry(res) -> dict:
    """One ImportanceResult as JSON: per channel mean, CI, normalized value, ranking, per-class drops."""
    out = {
        "channels": list(res.channel_names),
        "importance": np.asarray(res.importance, float).tolist(),
        "normalized": [float(v) for v in res.normalized().values],
        "ci_low": None if res.ci_low is None else np.asarray(res.ci_low, float).tolist(),
        "ci_high": None if res.ci_high is None else np.asarray(res.ci_high, float).tolist(),
        "ranking": list(res.ranked_channels),
        "n_repeats": int(res.info.get("n_repeats", res.importances.shape[0])),
        "baseline_score": float(res.baseline_score) if res.baseline_score is not None else None,
    }
    try:
        pc = res.per_class()
        out["per_class_drop"] = {str(c): [float(v) for v in pc[c].values] for c in pc.columns}
        out["per_class_index"] = [str(i) for i in pc.index]
    except Exception:  # attribution results have no per-class drops
        pass
    return out


def _pooled_entry(results, label: str) -> dict:
    from pxpermute.result import ImportanceResult

    pooled = ImportanceResult.concat(results)
    entry = _imp_entry(pooled)
    fold_imp = np.asarray(pooled.fold_importances, float)  # (F, C)
    entry["fold_importances"] = fold_imp.tolist()
    if fold_imp.shape[0] > 1:
        from scipy import stats

        m = fold_imp.mean(0)
        half = stats.t.ppf(0.975, fold_imp.shape[0] - 1) * fold_imp.std(0, ddof=1) / np.sqrt(fold_imp.shape[0])
        entry["fold_ci_low"] = (m - half).tolist()
        entry["fold_ci_high"] = (m + half).tolist()
        entry["fold_ci_covers"] = "t-interval over the 5 fold means (models and test cells of the folds)"
    entry["ci_covers"] = "t-interval over all repeats of all folds (the permutations only)"
    entry["method"] = label
    return entry


def _normalization_check(ds) -> dict:
    """How much class information the normalization's clipping destroys (no training needed).

    A multinomial logistic regression (5-fold, seed 42) on per-channel intensity features
    (sum, sum of squares, max, 50/90/99th percentile) of the normalized images, clipped to
    [0, 1] with the upper value from all pixels ("pixels") or from the per-image maxima
    ("image_max"), and without clipping.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pxpermute.models import fit_percentile_normalization

    x, y = ds.as_arrays()
    n, c = x.shape[:2]
    out = {"features": "per channel: sum, sum of squares, max, 50/90/99th percentile",
           "classifier": "LogisticRegression(class_weight='balanced'), StratifiedKFold(5, seed 42)", "variants": {}}
    for name, high_from, clip in (("pixels (clipped)", "pixels", True), ("image_max (clipped)", "image_max", True),
                                  ("pixels (not clipped)", "pixels", False)):
        norm = fit_percentile_normalization(ds, high_from=high_from, clip=clip, random_state=42)
        z = norm(x).reshape(n, c, -1)
        feats = np.concatenate([z.sum(2), (z**2).sum(2), z.max(2),
                                np.percentile(z, [50, 90, 99], axis=2).transpose(1, 2, 0).reshape(n, -1)], 1)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
        pred = cross_val_predict(clf, feats, y, cv=StratifiedKFold(5, shuffle=True, random_state=42))
        clipped = (norm(x) >= 1.0).reshape(n, c, -1).sum(2) if clip else np.zeros((n, c))
        out["variants"][name] = {
            "high": norm.high.tolist(), "low": norm.low.tolist(),
            "f1_macro": float(f1_score(y, pred, average="macro")),
            "f1_per_class": dict(zip(ds.class_names, f1_score(y, pred, average=None).round(4).tolist())),
            "clipped_pixels_per_cell": {ch: {cl: float(clipped[y == k, j].mean()) for k, cl in enumerate(ds.class_names)}
                                        for j, ch in enumerate(ds.channel_names)},
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("PXPERMUTE_DATA_DIR"))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--epochs-small", type=int, default=15)
    p.add_argument("--epochs-resnet", type=int, default=15)
    p.add_argument("--width", type=int, default=32, help="SmallCNN width")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--roar-epochs", type=int, default=None, help="epochs of the remove-and-retrain models "
                   "(default --epochs-small)")
    p.add_argument("--ig-cells", type=int, default=300, help="held-out cells per fold for IG/DeepLift")
    p.add_argument("--stages",
                   default="cv_small,stain_free,pxpermute,baselines,k_ablation,roar,normalization,cv_resnet")
    p.add_argument("--deadline", default=None, help="HH:MM UTC; stages that would not fit are skipped")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep stages already in --out")
    p.add_argument("--subset", type=int, default=None, help="smoke test: a stratified subset of this many cells")
    p.add_argument("--n-splits", type=int, default=5)
    p.add_argument("--cache", default=None, help="folder for pickled CV results (models), reused by --resume")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pxpermute.datasets import load_cellcycle
    from pxpermute.importance import channel_importance
    from pxpermute.panel import paired_tests
    from pxpermute.training import cross_validate

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = None
    if args.deadline:
        hh, mm = (int(v) for v in args.deadline.split(":"))
        today = dt.datetime.now(dt.timezone.utc)
        deadline = today.replace(hour=hh, minute=mm, second=0, microsecond=0)

    def left() -> float:
        return float("inf") if deadline is None else (deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()

    ds = load_cellcycle(data_dir=args.data_dir, download=False)
    if args.subset:
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(ds)), train_size=args.subset, stratify=ds.labels, random_state=0)
        ds = ds.subset(np.sort(keep))
    doc: dict = {}
    if args.resume and out.exists():
        doc = json.loads(out.read_text())
    doc.setdefault("schema", SCHEMA)
    doc.setdefault("started", _now())
    doc["dataset"] = {
        "name": "cellcycle",
        "title": ds.provenance.get("title"),
        "doi": ds.provenance.get("doi"),
        "n_cells": len(ds),
        "class_counts": ds.class_counts(),
        "channels": ds.channel_names,
        "stain_free": [c for c, s in zip(ds.channel_names, ds.stain_free) if s],
        "duplicates_dropped": ds.provenance.get("duplicates_dropped"),
        "subset": args.subset,
    }
    doc["hardware"] = {
        "machine": platform.platform(),
        "device": "cpu",
        "torch_threads": args.threads,
        "note": "2 CPU cores shared with other jobs; wall-clock times are upper bounds",
    }
    doc["cv"] = {"n_splits": args.n_splits, "random_state": 42, "valid_fraction": 0.2, "stratified": True}
    doc.setdefault("stages", {})
    doc.setdefault("performance", {})
    doc.setdefault("importance", {})
    small_kw = {"width": args.width}
    doc["recipe"] = {
        "small_cnn": {"model": "small_cnn", "model_kwargs": small_kw, "max_epochs": args.epochs_small},
        "resnet18": {"model": "resnet18", "model_kwargs": {}, "max_epochs": args.epochs_resnet},
        "common": "pxpermute.training defaults (see training.py): percentile normalization fitted on the "
                  "training part, flips + noise, AdamW 1e-3, batch 128, ReduceLROnPlateau + early stopping on "
                  "validation F1-macro, oversampling",
    }
    _write(doc, out)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    cache: dict = {}

    def mark(stage: str, status: str, seconds: float | None = None, note: str | None = None) -> None:
        doc["stages"][stage] = {"status": status, "seconds": None if seconds is None else round(seconds, 1),
                                "finished": _now(), "note": note}
        _write(doc, out)
        print(f"[{_now()}] {stage}: {status} ({seconds if seconds is None else round(seconds)} s) {note or ''}",
              flush=True)

    def cv(channels, model="small_cnn", epochs=None, seed=42, kwargs=None):
        import pickle

        epochs = epochs or args.epochs_small
        key = (model, tuple(channels) if channels else None, seed, epochs)
        if key in cache:
            return cache[key]
        fname = None
        if args.cache:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
            tag = "-".join(channels) if channels else "all"
            fname = Path(args.cache) / f"{model}_{tag}_w{(kwargs or small_kw).get('width', 0)}_seed{seed}_ep{epochs}_n{len(ds)}.pkl"
            if fname.exists():
                cache[key] = pickle.loads(fname.read_bytes())
                return cache[key]
        t = time.time()
        res = cross_validate(ds, n_splits=args.n_splits, channels=channels, model=model,
                             model_kwargs=kwargs if kwargs is not None else small_kw,
                             max_epochs=epochs, random_state=seed, progress=False)
        cache[key] = (res, time.time() - t)
        if fname is not None:
            fname.write_bytes(pickle.dumps(cache[key]))
        return cache[key]

    for stage in stages:
        if args.resume and doc["stages"].get(stage, {}).get("status") == "done":
            continue
        t0 = time.time()
        if left() <= 0:
            mark(stage, "skipped", None, "the deadline had passed before the stage could start")
            continue
        try:
            if stage == "normalization":
                doc["normalization_check"] = _normalization_check(ds)
            elif stage == "cv_small":
                res, sec = cv(None)
                doc["performance"]["small_cnn/all"] = _cv_entry(res, sec, "small_cnn", args.epochs_small, small_kw)
            elif stage == "stain_free":
                allc, _ = cv(None)
                sf, sec = cv(["BF", "DF"])
                doc["performance"]["small_cnn/stain_free"] = _cv_entry(sf, sec, "small_cnn", args.epochs_small, small_kw)
                tests = paired_tests(allc.f1_macro, sf.f1_macro, test_fraction=1.0 / args.n_splits)
                doc["stain_free_test"] = {"reference": "small_cnn/all", "other": "small_cnn/stain_free",
                                          "metric": "f1_macro", "alternative": "greater", **tests,
                                          "note": f"paired over the {args.n_splits} CV folds; corrected = Nadeau & Bengio"}
            elif stage in ("pxpermute", "baselines", "k_ablation"):
                allc, _ = cv(None)
                results: dict[str, list] = {}
                if stage == "pxpermute":
                    for pert in ("pixel", "sample"):
                        runs = []
                        for f, (net, te) in enumerate(zip(allc.models, allc.test_indices)):
                            r = channel_importance(net.module_, ds.subset(te), n_repeats=args.k, perturbation=pert,
                                                   random_state=f, progress=False)
                            runs.append(r)
                        cache[("imp", pert)] = runs
                        results[pert] = runs
                    doc["importance"]["pxpermute"] = {
                        "per_fold": [_imp_entry(r) for r in results["pixel"]],
                        "pooled": _pooled_entry(results["pixel"], f"PXPermute (pixel), k={args.k}")}
                    doc["importance"]["cross_sample"] = {
                        "per_fold": [_imp_entry(r) for r in results["sample"]],
                        "pooled": _pooled_entry(results["sample"], f"cross-sample, k={args.k}")}
                elif stage == "baselines":
                    from pxpermute.baselines import attribution_importance, occlusion_importance

                    occ, ig, dl = [], [], []
                    for f, (net, te) in enumerate(zip(allc.models, allc.test_indices)):
                        sub = ds.subset(te)
                        occ.append(occlusion_importance(net.module_, sub, progress=False))
                        rng = np.random.default_rng(f)
                        few = ds.subset(np.sort(rng.choice(te, size=min(args.ig_cells, te.size), replace=False)))
                        ig.append(attribution_importance(net.module_, few, method="integrated_gradients",
                                                         progress=False, random_state=f))
                        dl.append(attribution_importance(net.module_, few, method="deeplift", progress=False,
                                                         random_state=f))
                    for name, runs in (("occlusion", occ), ("integrated_gradients", ig), ("deeplift", dl)):
                        doc["importance"][name] = {"per_fold": [_imp_entry(r) for r in runs],
                                                   "ranking_per_fold": [list(r.ranked_channels) for r in runs]}
                        mean = np.mean([np.asarray(r.importance, float) for r in runs], axis=0)
                        doc["importance"][name]["mean_over_folds"] = mean.tolist()
                        doc["importance"][name]["ranking"] = [ds.channel_names[i] for i in np.argsort(-mean)]
                    doc["importance"]["integrated_gradients"]["cells_per_fold"] = args.ig_cells
                    doc["importance"]["deeplift"]["cells_per_fold"] = args.ig_cells
                else:  # k_ablation
                    from pxpermute.panel import k_ablation

                    pix = cache.get(("imp", "pixel"))
                    net, te = allc.models[0], allc.test_indices[0]
                    sub = ds.subset(te)
                    base = pix[0] if pix else channel_importance(net.module_, sub, n_repeats=args.k, random_state=0,
                                                                 progress=False)
                    ks = [k for k in (5, 10, 20, 30, 40, 50, 100, 200, 500, 1000) if k <= base.importances.shape[0]]
                    ks = ks or [int(base.importances.shape[0])]
                    abl = k_ablation(None, result=base, ks=ks)
                    rows = []
                    for k in ks:
                        r = abl.at(k)
                        rows.append({"k": k, "importance": np.asarray(r.importance, float).tolist(),
                                     "ci_low": np.asarray(r.ci_low, float).tolist() if k > 1 else None,
                                     "ci_high": np.asarray(r.ci_high, float).tolist() if k > 1 else None,
                                     "ranking": list(r.ranked_channels)})
                    doc["k_ablation"] = {"fold": 0, "perturbation": "pixel", "channels": ds.channel_names,
                                         "rows": rows, "first_stable_k": getattr(abl, "first_stable_k", None)}
                    t = time.time()
                    ad = channel_importance(net.module_, sub, n_repeats=1000, adaptive=True, random_state=0,
                                            progress=False)
                    doc["adaptive_k"] = {"fold": 0, "max_k": 1000, "k_used": int(ad.info.get("n_repeats")),
                                         "rule": ad.info.get("adaptive"), "ranking": list(ad.ranked_channels),
                                         "importance": np.asarray(ad.importance, float).tolist(),
                                         "seconds": round(time.time() - t, 1)}
            elif stage == "roar":
                import pandas as pd

                allc, _ = cv(None)
                rankings = {}
                for key, name in (("pxpermute", "PXPermute"), ("cross_sample", "cross-sample"),
                                  ("occlusion", "Occlusion"), ("integrated_gradients", "IntegratedGradients"),
                                  ("deeplift", "DeepLift")):
                    entry = doc["importance"].get(key)
                    if entry:
                        rankings[name] = entry.get("ranking") or entry["pooled"]["ranking"]
                rows = []
                roar_epochs = args.roar_epochs or args.epochs_small
                for seed in args.seeds:
                    rng = np.random.default_rng(seed)
                    ranks = dict(rankings)
                    ranks["Random"] = [ds.channel_names[i] for i in rng.permutation(ds.n_channels)]
                    for n_removed in (0, 1, 2):
                        for method, ranking in ranks.items():
                            keep = ranking[: ds.n_channels - n_removed]
                            chans = [c for c in ds.channel_names if c in keep]
                            res, _ = cv(chans if n_removed else None, seed=seed, epochs=roar_epochs)
                            for fold, f1 in enumerate(res.f1_macro):
                                rows.append({"seed": seed, "method": method, "n_removed": n_removed,
                                             "channels": ",".join(chans), "fold": fold, "f1_macro": float(f1)})
                    # a seed's table is written as soon as it is complete
                    df = pd.DataFrame(rows)
                    summ = (df.groupby(["method", "n_removed"])["f1_macro"]
                            .agg(["mean", "std", "count"]).reset_index())
                    doc["remove_and_retrain"] = {
                        "model": "small_cnn", "model_kwargs": small_kw, "max_epochs": roar_epochs,
                        "seeds": sorted(set(df["seed"])), "rankings": rankings, "rows": rows,
                        "summary": summ.to_dict(orient="records"),
                        "interval_covers": "std over seeds x folds (training randomness and the CV split)",
                    }
                    _write(doc, out)
            elif stage == "cv_resnet":
                res, sec = cv(None, model="resnet18", epochs=args.epochs_resnet, kwargs={})
                doc["performance"]["resnet18/all"] = _cv_entry(res, sec, "resnet18", args.epochs_resnet, {})
            else:
                raise ValueError(f"unknown stage {stage!r}")
            mark(stage, "done", time.time() - t0)
        except Exception as err:  # keep what ran; say what failed
            import traceback

            traceback.print_exc()
            mark(stage, "failed", time.time() - t0, f"{type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
