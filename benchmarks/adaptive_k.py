"""Adaptive k vs fixed k = 100: forward passes saved, ranking kept?  Presets, real data, close-pair simulation.

1. **Synthetic presets**: generate data, train one classifier (the package recipe,
   :func:`pxpermute.training.train_classifier`), then run PXPermute on the held-out
   cells with the published k = 100 and with ``adaptive=True`` (cap 100, the default
   rule of :class:`pxpermute.adaptive.AdaptiveK`).
2. **Real cell-cycle data** (``--cellcycle-model``): the fold-0 small CNN that
   ``benchmarks/runtime_comparison.py --save-model`` trained (published recipe, 20 epochs),
   on that fold's held-out cells; or ``--cellcycle-train`` trains it here.
3. **Close-pair simulation** (``--simulation N``, issue 21's acceptance): the adaptive part of
   ``benchmarks/uncertainty_simulation.py`` (a dominant channel, a close pair 0.031 vs 0.018,
   a noise channel, two ignored ones; 400 cells): how often the close pair ends in the wrong
   order (vs infinitely many repeats on the same cells) for fixed k = 100, the previous rule
   (Lai t confidence sequence, first look after 5, chunks of 5) and the current default rule,
   on the same simulated test sets.  Acceptance: within 0.01 of fixed k = 100.

Reported per data set: k used, forward images and seconds of both runs, the fraction of
forward passes saved, and whether the rankings agree -- exactly, and on the adjacent pairs
whose 95 % intervals at k = 100 do not overlap ("separated" pairs, the issue's criterion).
The adaptive run uses the same seed, so its repeats are exactly the first k of the fixed run
(counter-based permutations); differences in ranking come only from stopping earlier.

Run:  python benchmarks/adaptive_k.py [--quick] [--simulation 1000] [--cellcycle-model PKL] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = ("default", "apoptotic", "synapse", "wbc", "artefact", "panel20")


def _separated_pairs(imp: np.ndarray) -> tuple[list[int], list[bool]]:
    """Order at k = R and, per adjacent pair, whether the 95 % t intervals of the two channels are disjoint."""
    from scipy import stats

    R = imp.shape[0]
    m = imp.mean(0)
    h = stats.t.ppf(0.975, R - 1) * imp.std(0, ddof=1) / np.sqrt(R)
    order = [int(i) for i in np.argsort(-m, kind="stable")]
    return order, [bool(m[a] - h[a] > m[b] + h[b]) for a, b in zip(order[:-1], order[1:])]


def _rules() -> dict:
    """The stopping goals replayed on the fixed run's repeats (same seed: adaptive's repeats are its prefix)."""
    from pxpermute.adaptive import AdaptiveK

    return {"default (whole ranking, tol 0.005)": AdaptiveK(),
            "whole ranking, tol 0.02": AdaptiveK(tol=0.02),
            "top 1": AdaptiveK(top=1), "top 2": AdaptiveK(top=2), "top 3": AdaptiveK(top=3)}


def replay(imp: np.ndarray, *, n_cells: int, cap: int) -> dict:
    """Where each goal of :func:`_rules` stops on the per-repeat importances ``imp`` (k = cap run), and whether its
    order agrees with k = cap on every pair the goal covers whose 95 % intervals at k = cap are disjoint."""
    from scipy import stats

    from pxpermute.adaptive import ranking_settled
    from pxpermute.inference import checked_pairs, effective_top

    C = imp.shape[1]
    R = imp.shape[0]
    m = imp.mean(0)
    h = stats.t.ppf(0.975, R - 1) * imp.std(0, ddof=1) / np.sqrt(R)
    order_full = [int(i) for i in np.argsort(-m, kind="stable")]
    out = {}
    for name, rule in _rules().items():
        k_stop, why, dec = cap, "cap", None
        for t in rule.checkpoints(cap):
            hist: list = []
            settled, reason = ranking_settled(imp[:t], rule=rule, history=hist, n_samples=n_cells, cap=cap)
            k_stop, dec = t, hist[-1]
            if settled:
                why = reason if t < cap else "cap"
                break
        ma = imp[:k_stop].mean(0)
        pos = {u: i for i, u in enumerate(np.argsort(-ma, kind="stable"))}
        # pairs the goal covers, taken on the k = cap order: whole ranking -> every pair; top m -> pairs with a
        # member in the k = cap top m
        top = effective_top(rule.top, C)
        covered = [(a, b) for i, a in enumerate(order_full) for b in order_full[i + 1:] if top is None or i < top]
        sep = [(a, b) for a, b in covered if m[a] - h[a] > m[b] + h[b]]
        # a pair the rule declared tied (within +/- tol, with the stated confidence) makes no order claim
        group = {u: gi for gi, g in enumerate(dec.tie_groups if dec else []) for u in g}
        tied = [(a, b) for a, b in sep if a in group and group.get(a) == group.get(b)]
        claimed = [(a, b) for a, b in sep if (a, b) not in tied]
        agree = [pos[a] < pos[b] for a, b in claimed]
        out[name] = {"k": int(k_stop), "stopped": why, "fewer_passes_factor": round((1 + C * cap) / (1 + C * k_stop), 2),
                     "k100_separated_pairs_covered": len(sep),
                     "of_them_declared_tied": len(tied),
                     "max_k100_gap_in_a_declared_tie": round(max([abs(m[a] - m[b]) for a, b in tied], default=0.0), 5),
                     "agrees_on_all_of_them": bool(all(pos[a] < pos[b] for a, b in sep)),
                     "agrees_on_all_not_declared_tied": bool(all(agree)),
                     "open_pairs_at_stop": sum(p_["status"] == "open" for p_ in dec.pairs) if dec else None,
                     "pairs_checked": len(checked_pairs(dec.order, rule.top)) if dec else None}
    return out


def compare(net, test, names: list[str], *, k: int, seed: int = 0, batch_size: int = 256) -> dict:
    """Fixed k and adaptive (cap k) on the same model and cells, timed in this process."""
    from scipy.stats import kendalltau

    from pxpermute import channel_importance

    opts = dict(n_repeats=k, random_state=seed, progress=False, batch_size=batch_size, n_bootstrap=0)
    t = time.perf_counter()
    fixed = channel_importance(net, test, **opts)
    t_fixed = time.perf_counter() - t
    t = time.perf_counter()
    ad = channel_importance(net, test, adaptive=True, **opts)
    t_ad = time.perf_counter() - t
    assert np.array_equal(ad.confusion, fixed.confusion[: ad.n_repeats])  # same repeats, fewer of them
    order, sep = _separated_pairs(fixed.importances)
    ad_pos = {u: i for i, u in enumerate(np.argsort(-ad.importances.mean(0), kind="stable"))}
    sep_ok = [ad_pos[a] < ad_pos[b] for (a, b), s in zip(zip(order[:-1], order[1:]), sep) if s]
    info = ad.info["adaptive"]
    return {
        "n_test": len(test), "channels": len(names), "f1_macro_test": round(float(fixed.baseline_score), 3),
        "k_fixed": k, "k_adaptive": int(ad.info["n_repeats"]), "stopped": info["stopped"],
        "tie_groups": info.get("tie_groups"), "open_pairs": info.get("open_pairs"),
        "forward_images_fixed": int(fixed.info["n_forward_images"]),
        "forward_images_adaptive": int(ad.info["n_forward_images"]),
        "forward_saved_fraction": round(1 - ad.info["n_forward_images"] / fixed.info["n_forward_images"], 3),
        "fewer_passes_factor": round(fixed.info["n_forward_images"] / ad.info["n_forward_images"], 2),
        "seconds_fixed": round(t_fixed, 2), "seconds_adaptive": round(t_ad, 2),
        "same_ranking": bool(list(ad.ranking) == list(fixed.ranking)),
        "k100_separated_adjacent_pairs": int(sum(sep)), "k100_adjacent_pairs": len(sep),
        "same_order_on_k100_separated_pairs": bool(all(sep_ok)),
        "kendall_tau": round(float(kendalltau(ad.importance, fixed.importance).statistic), 3),
        "ranking_fixed": [names[i] for i in order],
        "ranking_adaptive": [names[i] for i in np.argsort(-ad.importances.mean(0), kind="stable")],
        "importance_fixed": np.round(fixed.importances.mean(0), 4).tolist(),
        "importance_adaptive": np.round(ad.importances.mean(0), 4).tolist(),
        "per_repeat_sd_fixed": np.round(fixed.importances.std(0, ddof=1), 4).tolist(),
        "goals_replayed": replay(fixed.importances, n_cells=len(test), cap=k),
        "per_repeat_importances_fixed": np.round(fixed.importances, 5).tolist(),
    }


def run_preset(preset: str, *, n_samples: int, model: str, max_epochs: int, k: int, seed: int = 0,
               image_size: int | None = None, model_kwargs: dict | None = None) -> dict:
    from sklearn.model_selection import train_test_split

    from pxpermute.datasets.synthetic import expected_relevance, make_synthetic
    from pxpermute.training import train_classifier

    ds = make_synthetic(preset, n_samples=n_samples, image_size=image_size, random_state=seed)
    tr, te = train_test_split(np.arange(len(ds)), test_size=0.25, stratify=ds.labels, random_state=seed)
    t = time.perf_counter()
    net = train_classifier(ds, train_indices=tr, model=model, model_kwargs=model_kwargs, max_epochs=max_epochs,
                           random_state=seed)
    t_train = time.perf_counter() - t
    row = {"data": f"synthetic:{preset}", "train_s": round(t_train, 1)}
    row.update(compare(net, ds.subset(te), list(ds.channel_names), k=k, seed=seed))
    rel = expected_relevance(ds.ground_truth, perturbation="pixel")
    row["signal_channels"] = [ds.channel_names[i] for i in range(ds.n_channels) if rel[i] > 0]
    return row


def run_cellcycle(pkl: str | None, *, k: int, epochs: int, data_dir: str | None) -> dict:
    import pickle

    from pxpermute.datasets import load_cellcycle

    ds = load_cellcycle(data_dir=data_dir, download=False)
    if pkl == "pretrained":
        from pxpermute.pretrained import load_cv

        cv = load_cv("cellcycle_all", ds, device="cpu")
        net, test_idx = cv.models[0], cv.test_indices[0]
        src = "shipped pretrained fold 0 of cellcycle_all (width-32 SmallCNN, 20 epochs, seed 42)"
        t_train = None
    elif pkl and Path(pkl).exists():
        saved = pickle.loads(Path(pkl).read_bytes())
        net, test_idx = saved["net"], saved["test_indices"]
        src = f"fold-0 model from runtime_comparison.py ({saved['model']}, {saved['epochs']} epochs)"
        t_train = saved.get("train_s")
    else:
        from pxpermute.training import cross_validate

        t = time.perf_counter()
        ref = cross_validate(ds, n_splits=5, folds=[0], random_state=42, progress=False, model="small_cnn",
                             max_epochs=epochs)
        t_train = time.perf_counter() - t
        net, test_idx = ref.models[0], ref.test_indices[0]
        src = f"fold 0 of 5 (seed 42), small_cnn, {epochs} epochs, trained here"
    row = {"data": "cellcycle (Blasi 2016, all cells)", "model_source": src,
           "train_s": None if t_train is None else round(float(t_train), 1)}
    row.update(compare(net, ds.subset(np.asarray(test_idx)), list(ds.channel_names), k=k, seed=0))
    return row


def close_pair_simulation(n_sims: int, seed: int = 2024, n: int = 400, kmax: int = 100, k_ref: int = 4000) -> dict:
    """Issue 21's acceptance on the same simulated test sets for every rule (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import uncertainty_simulation as us

    from pxpermute.adaptive import AdaptiveK, ranking_settled

    rules = {"previous_lai_cs_min5_chunk5": AdaptiveK(min_repeats=5, chunk=5, growth=1.0, method="t"),
             "default": AdaptiveK()}
    rng = np.random.default_rng(seed)
    mu = np.array([1.2, 0.45, 0.36, 0.0, 0.5, 0.5])
    beta = np.array([1.2, 0.45, 0.36, 0.3, 0.0, 0.0])
    A, B = 1, 2
    U = len(mu)
    ks: dict[str, list[int]] = {"fixed_k100": [], **{r: [] for r in rules}}
    wrong = dict.fromkeys(ks, 0)
    same_full = dict.fromkeys(ks, 0)
    ambiguous = 0
    for _ in range(n_sims):
        y, d = us.draw(n, mu, rng)
        run = us.FastRun(y, d, beta, kmax, rng)
        ref = us.FastRun(y, d, beta, k_ref, rng, channels=[A, B]).imp
        delta = float(ref[:, 0].mean() - ref[:, 1].mean())
        amb = abs(delta) < 3 * float(np.std(ref[:, 0] - ref[:, 1], ddof=1) / np.sqrt(k_ref))
        ambiguous += amb
        full_order = list(np.argsort(-run.imp.mean(0), kind="stable"))
        for name in ks:
            k = kmax
            if name in rules:
                for t in rules[name].checkpoints(kmax):
                    k = t
                    if ranking_settled(run.imp[:t], rule=rules[name], n_samples=n, cap=kmax)[0]:
                        break
            ks[name].append(k)
            m = run.imp[:k].mean(0)
            wrong[name] += (not amb) and bool(np.sign(m[A] - m[B]) != np.sign(delta))
            same_full[name] += list(np.argsort(-m, kind="stable")) == full_order
    valid = n_sims - ambiguous
    passes = lambda v: U * np.asarray(v, float) + 1  # noqa: E731  (forward passes per cell: baseline + U per repeat)
    summ = {name: {"wrong_order_vs_same_cells_infinite_k": round(wrong[name] / max(valid, 1), 4),
                   "mean_k": round(float(np.mean(ks[name])), 1), "median_k": float(np.median(ks[name])),
                   "forward_passes_saved_vs_k100": round(1 - float(np.mean(passes(ks[name]))) / float(passes(kmax)), 3),
                   "full_ranking_same_as_fixed_k100": round(same_full[name] / n_sims, 3)} for name in ks}
    base = summ["fixed_k100"]["wrong_order_vs_same_cells_infinite_k"]
    return {"n_sims": n_sims, "seed": seed, "n_cells": n, "k_max": kmax, "k_reference": k_ref,
            "channels": ["dominant", "closeA", "closeB", "noise", "ignored1", "ignored2"],
            "test_sets_with_ambiguous_reference_order": int(ambiguous), "rules": summ,
            "rule_options": {r: {"method": v.method, "looks": v.checkpoints(kmax), "tol": v.tol}
                             for r, v in rules.items()},
            "acceptance_wrong_order_within_0.01_of_fixed_k100": {
                name: bool(abs(s["wrong_order_vs_same_cells_infinite_k"] - base) <= 0.01) for name, s in summ.items()}}


def summarize_goals(rows: list[dict], k: int) -> dict:
    """Per goal: k per data set, mean k, pass factors, agreement with k = 100 (see :func:`replay`)."""
    goals = {}
    for g in rows[0]["goals_replayed"]:
        ks = [r["goals_replayed"][g]["k"] for r in rows]
        fac = [r["goals_replayed"][g]["fewer_passes_factor"] for r in rows]
        goals[g] = {"k_per_dataset": dict(zip([r["data"] for r in rows], ks)), "mean_k": round(float(np.mean(ks)), 1),
                    "k_cap_over_mean_k": round(k / float(np.mean(ks)), 2),
                    "mean_fewer_passes_factor": round(float(np.mean(fac)), 2),
                    "total_fewer_passes_factor": round(
                        sum(r["n_test"] * (1 + r["channels"] * k) for r in rows)
                        / sum(r["n_test"] * (1 + r["channels"] * kk) for r, kk in zip(rows, ks)), 2),
                    "agrees_with_k100_on_separated_pairs_all": all(
                        r["goals_replayed"][g]["agrees_on_all_of_them"] for r in rows),
                    "agrees_with_k100_on_separated_pairs_not_declared_tied_all": all(
                        r["goals_replayed"][g]["agrees_on_all_not_declared_tied"] for r in rows),
                    "max_k100_gap_in_a_declared_tie": max(
                        r["goals_replayed"][g]["max_k100_gap_in_a_declared_tie"] for r in rows)}
    return goals


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
    ap.add_argument("--cellcycle-model", default=None,
                    help="pickle from runtime_comparison.py --save-model (real data, fold 0), or 'pretrained' for "
                         "the shipped fold-0 model")
    ap.add_argument("--cellcycle-train", action="store_true", help="train the real-data fold-0 model here")
    ap.add_argument("--cellcycle-epochs", type=int, default=20)
    ap.add_argument("--simulation", type=int, default=0, help="close-pair simulation with this many test sets")
    ap.add_argument("--replay", default=None,
                    help="recompute goals_replayed/goals_summary from the per-repeat importances stored in this JSON "
                         "(no training, no forward passes) and rewrite it")
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.replay:
        doc = json.loads(Path(args.replay).read_text())
        for r in doc["datasets"]:
            r["goals_replayed"] = replay(np.asarray(r["per_repeat_importances_fixed"]), n_cells=r["n_test"],
                                         cap=r["k_fixed"])
        doc["goals_summary"] = summarize_goals(doc["datasets"], doc["k"])
        Path(args.replay).write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["goals_summary"], indent=1))
        return
    torch.set_num_threads(args.threads)
    n, ep = (800, 8) if args.quick else (args.n_samples, args.max_epochs)
    from pxpermute.adaptive import AdaptiveK

    rows = []
    load0 = [round(v, 2) for v in os.getloadavg()]
    for p in args.presets:
        rows.append(run_preset(p, n_samples=n, model=args.model, max_epochs=ep, k=args.k, image_size=args.image_size,
                               model_kwargs={"width": args.width} if args.width else None))
        print(json.dumps(rows[-1]), flush=True)
    if args.cellcycle_model or args.cellcycle_train:
        rows.append(run_cellcycle(args.cellcycle_model, k=args.k, epochs=args.cellcycle_epochs,
                                  data_dir=os.environ.get("PXPERMUTE_DATA_DIR")))
        print(json.dumps(rows[-1]), flush=True)
    rule = AdaptiveK()
    out = {"note": args.note, "rule": {"method": rule.method, "looks": rule.checkpoints(args.k), "tol": rule.tol,
                                       "confidence": rule.confidence},
           "model": args.model, "width": args.width, "image_size": args.image_size, "n_samples": n,
           "max_epochs": ep, "k": args.k, "datasets": rows}
    if rows:
        fi = sum(r["forward_images_fixed"] for r in rows)
        fa = sum(r["forward_images_adaptive"] for r in rows)
        out.update({
            "mean_k_adaptive": round(float(np.mean([r["k_adaptive"] for r in rows])), 1),
            "mean_fewer_passes_factor": round(float(np.mean([r["fewer_passes_factor"] for r in rows])), 2),
            "total_fewer_passes_factor": round(fi / fa, 2),
            "mean_forward_saved_fraction": round(float(np.mean([r["forward_saved_fraction"] for r in rows])), 3),
            "total_forward_saved_fraction": round(1 - fa / fi, 3),
            "same_ranking_all": all(r["same_ranking"] for r in rows),
            "same_order_on_k100_separated_pairs_all": all(r["same_order_on_k100_separated_pairs"] for r in rows)})
    if rows:
        out["goals_summary"] = summarize_goals(rows, args.k)
        print(json.dumps(out["goals_summary"], indent=1), flush=True)
    if args.simulation:
        out["close_pair_simulation"] = close_pair_simulation(args.simulation)
        print(json.dumps(out["close_pair_simulation"]), flush=True)
    out.update({"torch": torch.__version__, "threads": torch.get_num_threads(), "load_avg_start": load0,
                "load_avg_end": [round(v, 2) for v in os.getloadavg()]})
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
