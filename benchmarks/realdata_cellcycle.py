"""Reference results on the full real Jurkat cell-cycle data (Blasi et al. 2016), stage by stage.

Runs, in order, and rewrites the JSON file after every stage (so partial results survive a
stopped run; a stage that did not run says so in ``stages``):

1. ``cv_small``    5-fold stratified CV (seed 42) of the small CNN on all channels.
2. ``stain_free``  the same folds with BF + DF only; paired tests all vs stain-free.
3. ``pxpermute``   PXPermute (k = 100, pixel) and the cross-sample variant (k = 100) on every
                   fold's held-out cells; per fold and pooled over folds.
4. ``baselines``   occlusion (fill 0), Integrated Gradients and DeepLift per fold.
5. ``k_ablation``  k = 5 ... 100 (prefixes of the k = 100 run, fold 0) and adaptive k.
6. ``roar``        remove-and-retrain: EVERY channel subset retrained once per seed (small CNN,
                   the seed's 5 folds, ``--roar-epochs``) over ``--seeds`` seeds; every ranking's
                   1- and 2-channel removals are look-ups, "Random" is the exact mean over all
                   subsets of that size, and each method is compared with Random by the paired
                   difference per (seed, fold). Written after every subset; a ``--deadline``
                   leaves the stage ``partial`` with what ran.
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
    remove_and_retrain  {model, model_kwargs, max_epochs, n_splits, seeds, seeds_complete, complete, note,
                         rankings{method: [ch]}, random, interval_covers,
                         runs: [{seed, channels, n_removed, f1_macro[fold], test_sizes[fold]}],
                         rows: [{seed, method, n_removed, channels, fold, f1_macro}],
                         summary: [{method, n_removed, channels, mean, std, count, seeds}],
                         paired: [{method, n_removed, channels, n_pairs, mean_diff, ci_low, ci_high,
                                   ci_low_corrected, ci_high_corrected, p_t}]  (method - Random),
                         by_subset: [{channels, n_removed, mean, std, count}]}
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
# the reference results ship with the package (pxpermute.datasets.cellcycle.reference_results reads them)
DEFAULT_OUT = HERE.parent / "pxpermute" / "data" / "cellcycle_reference.json"
SCHEMA = "pxpermute-cellcycle-reference/1"


def _module(net):
    """The torch module of a fold model (a skorch net when trained here, a plain module when pretrained)."""
    return getattr(net, "module_", net)


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
        "epochs_trained": (list(cv.params["epochs"]) if cv.params.get("epochs") else
                           [len(m.history) if getattr(m, "history", None) is not None else None for m in cv.models]),
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
    entry["ci_covers"] = ("ci_low/high: ImportanceResult.concat's interval over the fold importances (folds - 1 "
                          "degrees of freedom; retraining and test cells, approximately)")
    if getattr(pooled, "perm_ci_low", None) is not None:
        entry["perm_ci_low"] = np.asarray(pooled.perm_ci_low, float).tolist()
        entry["perm_ci_high"] = np.asarray(pooled.perm_ci_high, float).tolist()
        entry["perm_ci_covers"] = "the permutations only (the folds' permutation standard errors combined)"
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


def _roar(doc: dict, ds, cv, args, left, save) -> dict:
    """Remove-and-retrain on every channel subset, paired per (seed, fold), Random as an exact average.

    With C channels, removing n of them leaves one of C-choose-n subsets; every distinct subset is
    trained once per seed (``cross_validate``, small CNN, the seed's own 5 folds), so any ranking's
    curve is a look-up and "Random" is the *exact* expectation over random rankings: the mean of
    all subsets of that size, per (seed, fold).  Each method is compared with Random by the paired
    difference (method minus Random) over the seed x fold pairs: mean, a t-interval over the pairs
    and the Nadeau-Bengio corrected interval (folds share training cells).  What these intervals
    cover: the randomness of training (seeds) and of the CV split (folds) on THIS data set; not new
    data, new donors or another experiment.
    """
    import itertools

    from scipy import stats

    chans = list(ds.channel_names)
    nc = len(chans)
    epochs = args.roar_epochs or args.epochs_small
    width = args.roar_width or args.width
    rankings: dict[str, list[str]] = {}
    for key, name in (("pxpermute", "PXPermute"), ("cross_sample", "cross-sample"), ("occlusion", "Occlusion"),
                      ("integrated_gradients", "IntegratedGradients"), ("deeplift", "DeepLift")):
        entry = doc["importance"].get(key)
        if entry:
            rankings[name] = list(entry.get("ranking") or entry["pooled"]["ranking"])
    subsets = [tuple(c for c in chans if c in keep)
               for n_removed in range(nc) for keep in itertools.combinations(chans, nc - n_removed)]
    runs: list[dict] = []
    out = {"model": "small_cnn", "model_kwargs": {"width": width}, "max_epochs": epochs,
           "n_splits": args.n_splits, "seeds": list(args.seeds), "rankings": rankings, "runs": runs,
           "random": "exact expectation over random rankings: the mean over all C-choose-(C-n) kept subsets of the "
                     "same (seed, fold)",
           "interval_covers": "the seed x fold pairs: training randomness (seeds) and the CV split (folds) on this "
                              "data set; not new data. t: t-interval over the pairs as if independent; corrected: "
                              "Nadeau-Bengio (variance x (1/J + n_test/n_train), n_train = the 64 % of cells "
                              "actually trained on)",
           "complete": False, "note": None}
    doc["remove_and_retrain"] = out  # saved after every subset, so partial results survive
    durations: list[float] = []
    skipped = []
    for seed in args.seeds:
        for sub in subsets:
            n_removed = nc - len(sub)
            est = float(np.median(durations)) if durations else 0.0
            if left() < est:
                skipped.append(f"seed {seed} {','.join(sub)}")
                continue
            t = time.time()
            res, _ = cv(None if n_removed == 0 else list(sub), seed=seed, epochs=epochs, kwargs={"width": width})
            if time.time() - t > 5:  # freshly trained (not from the cache): a duration estimate
                durations.append(time.time() - t)
            runs.append({"seed": seed, "channels": list(sub), "n_removed": n_removed,
                         "f1_macro": [float(v) for v in res.f1_macro],
                         "test_sizes": [int(len(te)) for te in res.test_indices]})
            _roar_summary(out, chans, rankings, stats)
            save()
    out["complete"] = not skipped
    if skipped:
        out["note"] = (f"deadline reached: {len(skipped)} of {len(args.seeds) * len(subsets)} seed x subset "
                       f"cross-validations not run ({'; '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''})")
    _roar_summary(out, chans, rankings, stats)
    return out


def _roar_summary(out: dict, chans, rankings, stats) -> None:
    """Fill ``rows``, ``summary`` and ``paired`` of the remove-and-retrain entry from its ``runs``."""
    import itertools

    nc = len(chans)
    f1 = {(r["seed"], tuple(r["channels"])): np.asarray(r["f1_macro"]) for r in out["runs"]}
    seeds = sorted({r["seed"] for r in out["runs"]})
    rows, summary, paired = [], [], []
    n_frac = 0.2 / (0.8 * 0.8)  # n_test / n_train: 1/5 tested, 4/5 x 80 % trained (20 % validation)
    for n_removed in range(nc):
        all_subs = [tuple(c for c in chans if c in keep) for keep in itertools.combinations(chans, nc - n_removed)]
        # seeds for which every subset of this size has run: Random is exact there
        full = [s for s in seeds if all((s, sub) in f1 for sub in all_subs)]
        methods = {m: tuple(c for c in chans if c in r[: nc - n_removed]) for m, r in rankings.items()}
        per = {m: [f1[(s, sub)] for s in full] for m, sub in methods.items()}
        per["Random"] = [np.mean([f1[(s, sub)] for sub in all_subs], axis=0) for s in full]
        for m, vals in per.items():
            if not vals:
                continue
            v = np.concatenate(vals)
            for s, fold_vals in zip(full, vals):
                for fold, val in enumerate(fold_vals):
                    rows.append({"seed": s, "method": m, "n_removed": n_removed,
                                 "channels": "Random (all subsets)" if m == "Random" else ",".join(methods[m]),
                                 "fold": fold, "f1_macro": float(val)})
            summary.append({"method": m, "n_removed": n_removed,
                            "channels": None if m == "Random" else list(methods[m]), "mean": float(v.mean()),
                            "std": float(v.std(ddof=1)) if v.size > 1 else None, "count": int(v.size),
                            "seeds": full})
            if m == "Random" or n_removed == 0:
                continue
            d = np.round(v - np.concatenate(per["Random"]), 12)  # exact ties stay exactly 0
            j = d.size
            entry = {"method": m, "n_removed": n_removed, "channels": list(methods[m]), "n_pairs": int(j),
                     "mean_diff": float(d.mean())}
            if j > 1:
                sd = float(d.std(ddof=1))
                q = float(stats.t.ppf(0.975, j - 1))
                half = q * sd / np.sqrt(j)
                half_c = q * sd * np.sqrt(1.0 / j + n_frac)
                entry.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half),
                             ci_low_corrected=float(d.mean() - half_c), ci_high_corrected=float(d.mean() + half_c),
                             p_t=float(stats.ttest_1samp(d, 0.0).pvalue) if sd > 0 else None)
            paired.append(entry)
    # the subsets themselves: mean over the (seed, fold) pairs that ran
    by_sub = []
    for sub in sorted({tuple(r["channels"]) for r in out["runs"]}, key=lambda c: (-len(c), c)):
        v = np.concatenate([f1[(s, sub)] for s in seeds if (s, sub) in f1])
        by_sub.append({"channels": list(sub), "n_removed": nc - len(sub), "mean": float(v.mean()),
                       "std": float(v.std(ddof=1)) if v.size > 1 else None, "count": int(v.size)})
    out.update(rows=rows, summary=summary, paired=paired, by_subset=by_sub,
               seeds_complete=sorted({s for s in seeds
                                      if all((s, tuple(c for c in chans if c in k)) in f1
                                             for n in range(nc) for k in itertools.combinations(chans, nc - n))}))



_STAGE_KEYS = {"cv_small": [("performance", "small_cnn/all")],
               "stain_free": [("performance", "small_cnn/stain_free"), ("stain_free_test",)],
               "pxpermute": [("importance", "pxpermute"), ("importance", "cross_sample")],
               "baselines": [("importance", "occlusion"), ("importance", "integrated_gradients"),
                             ("importance", "deeplift")],
               "k_ablation": [("k_ablation",), ("adaptive_k",)],
               "roar": [("remove_and_retrain",)],
               "normalization": [("normalization_check",)],
               "cv_resnet": [("performance", "resnet18/all")]}


def _merge(out: Path, others: list[Path]) -> int:
    """Copy the stages that are done (or partial) in ``others`` into ``out``; recompute the ROAR summary."""
    from scipy import stats

    doc = json.loads(out.read_text())
    for path in others:
        other = json.loads(path.read_text())
        stages = dict(other.get("stages", {}))
        for stage, keys in _STAGE_KEYS.items():  # a run stopped inside a stage: what it had saved
            if stage not in stages and any(k[-1] in (other.get(k[0], {}) if len(k) == 2 else other) for k in keys):
                stages[stage] = {"status": "partial", "seconds": None, "finished": other.get("updated"),
                                 "note": "the run was stopped inside this stage; the results saved until then"}
        for stage, info in stages.items():
            if info.get("status") not in ("done", "partial"):
                continue
            if doc["stages"].get(stage, {}).get("status") == "done" and info.get("status") != "done":
                continue
            for key in _STAGE_KEYS.get(stage, []):
                src, dst = other, doc
                for part in key[:-1]:
                    src = src.get(part, {})
                    dst = dst.setdefault(part, {})
                if key[-1] in src:
                    dst[key[-1]] = src[key[-1]]
            doc["stages"][stage] = dict(info, note=((info.get("note") or "") + f" [merged from {path.name}; "
                                                    f"run parameters: {other.get('run_args')}]").strip())
            print(f"merged {stage} ({info.get('status')}) from {path}")
    rr = doc.get("remove_and_retrain")
    if rr:  # rankings from this file's importance stages
        rankings = {}
        for key, name in (("pxpermute", "PXPermute"), ("cross_sample", "cross-sample"), ("occlusion", "Occlusion"),
                          ("integrated_gradients", "IntegratedGradients"), ("deeplift", "DeepLift")):
            entry = doc.get("importance", {}).get(key)
            if entry:
                rankings[name] = list(entry.get("ranking") or entry["pooled"]["ranking"])
        rr["rankings"] = rankings
        _roar_summary(rr, doc["dataset"]["channels"], rankings, stats)
    _write(doc, out)
    return 0



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
    p.add_argument("--roar-width", type=int, default=None, help="SmallCNN width of the remove-and-retrain models "
                   "(default --width)")
    p.add_argument("--adaptive-max", type=int, default=1000, help="largest k of the adaptive-k run")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="copy the finished stages of these result files (parallel runs of this script with --out "
                        "elsewhere) into --out, recompute the remove-and-retrain summary with the rankings, and exit")
    p.add_argument("--ig-cells", type=int, default=300, help="held-out cells per fold for IG/DeepLift")
    p.add_argument("--stages",
                   default="cv_small,stain_free,pxpermute,baselines,k_ablation,roar,normalization,cv_resnet")
    p.add_argument("--deadline", default=None, help="HH:MM UTC; stages that would not fit are skipped")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep stages already in --out")
    p.add_argument("--subset", type=int, default=None, help="smoke test: a stratified subset of this many cells")
    p.add_argument("--n-splits", type=int, default=5)
    p.add_argument("--pretrained", action="store_true",
                   help="take the all-channel and stain-free SmallCNN folds from the package's pretrained tutorial "
                        "models (pxpermute.pretrained.load_cv) when their recipe equals --width/--epochs-small/seed 42")
    p.add_argument("--cache", default=None, help="folder for pickled CV results (models), reused by --resume")
    args = p.parse_args(argv)
    if args.pretrained and args.subset:
        p.error("--pretrained needs the full data set (the stored folds are checked against it); drop --subset")

    import torch

    torch.set_num_threads(args.threads)
    from pxpermute.datasets import load_cellcycle
    from pxpermute.importance import channel_importance
    from pxpermute.panel import paired_tests
    from pxpermute.training import cross_validate

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return _merge(out, [Path(m) for m in args.merge])
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
    doc["run_args"] = {k: v for k, v in vars(args).items() if k not in ("data_dir", "out", "cache", "merge")}
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
        key = (model, tuple(channels) if channels else None, seed, epochs, (kwargs or small_kw).get("width", 0))
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
        group = {None: "cellcycle_all", ("BF", "DF"): "cellcycle_stainfree"}.get(tuple(channels) if channels else None)
        if args.pretrained and model == "small_cnn" and seed == 42 and group is not None:
            from pxpermute.pretrained import groups, load_cv

            spec = groups()[group]
            if (spec["train"]["max_epochs"] == epochs and spec["train"]["model_kwargs"] == (kwargs or small_kw)
                    and spec["n_splits"] == args.n_splits and spec["random_state"] == seed):
                res = load_cv(group, ds, device="cpu")
                cache[key] = (res, float(spec.get("train_seconds") or 0.0))
                print(f"[{_now()}] {group}: pretrained folds loaded (recipe matches; trained in "
                      f"{cache[key][1]:.0f} s by scripts/train_tutorial_models.py)", flush=True)
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
                            r = channel_importance(_module(net), ds.subset(te), n_repeats=args.k, perturbation=pert,
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
                        occ.append(occlusion_importance(_module(net), sub, progress=False))
                        rng = np.random.default_rng(f)
                        few = ds.subset(np.sort(rng.choice(te, size=min(args.ig_cells, te.size), replace=False)))
                        ig.append(attribution_importance(_module(net), few, method="integrated_gradients",
                                                         progress=False, random_state=f))
                        dl.append(attribution_importance(_module(net), few, method="deeplift", progress=False,
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
                    base = pix[0] if pix else channel_importance(_module(net), sub, n_repeats=args.k, random_state=0,
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
                    ad = channel_importance(_module(net), sub, n_repeats=args.adaptive_max, adaptive=True,
                                            random_state=0, progress=False)
                    doc["adaptive_k"] = {"fold": 0, "max_k": args.adaptive_max, "k_used": int(ad.info.get("n_repeats")),
                                         "rule": ad.info.get("adaptive"), "ranking": list(ad.ranked_channels),
                                         "importance": np.asarray(ad.importance, float).tolist(),
                                         "seconds": round(time.time() - t, 1)}
            elif stage == "roar":
                doc["remove_and_retrain"] = _roar(doc, ds, cv, args, left, lambda: _write(doc, out))
                if not doc["remove_and_retrain"]["complete"]:
                    mark(stage, "partial", time.time() - t0, doc["remove_and_retrain"]["note"])
                    continue
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
