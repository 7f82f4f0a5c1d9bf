"""The panel decision: non-inferiority at a margin, fixed-sequence testing, nested rankings.

* error rates of the decision on a process whose truth is known (fold losses with a known mean and
  the correlation of overlapping CV training sets; benchmarks/panel_decision_simulation.py is the
  large version);
* the sequence logic of ``compare_panels`` / ``minimal_panel`` on planted per-fold scores (training
  replaced by a stub that returns known scores, so the decisions are deterministic);
* nested cross-validation: the ranking that picks fold f's panel never saw fold f's test cells.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.model_selection import StratifiedKFold

import pxpermute.evaluation.crossval as crossval
import pxpermute.training as training
from pxpermute import ImportanceResult
from pxpermute.datasets.synthetic import make_synthetic
from pxpermute.evaluation import NestedRanking, compare_panels, minimal_panel, nested_rankings
from pxpermute.evaluation.panels import noninferiority_sequence, panel_decisions
from pxpermute.inference import nb_test_train_ratio

TINY = dict(model="small_cnn", model_kwargs={"width": 4}, max_epochs=1, batch_size=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------
# 1. error rates on a known process
# ---------------------------------------------------------------------------
def draw_losses(rng, n, J, delta, sigma, rho):
    return delta + sigma * (rng.standard_normal((n, 1)) * math.sqrt(rho) + rng.standard_normal((n, J)) * math.sqrt(1 - rho))


def test_decision_error_rates_on_a_known_process():
    """A panel truly 0.028 F1 worse (margin 0.02) is rarely accepted; an equal one usually is."""
    rng = np.random.default_rng(2)
    J, n, alpha, margin, sigma = 5, 1000, 0.05, 0.02, 0.01
    r = nb_test_train_ratio(J, 0.2)  # 0.3125: 5 folds, 20 % validation split
    rho = r / (1 + r)  # the correlation the Nadeau-Bengio correction assumes (exact for this process)
    worse = draw_losses(rng, n, J, 0.028, sigma, rho)
    at_margin = draw_losses(rng, n, J, margin, sigma, rho)
    equal = draw_losses(rng, n, J, 0.0, sigma, rho)
    acc = {"worse": 0, "margin": 0, "equal": 0, "seq_false": 0, "old_point_rule": 0}
    for i in range(n):
        ref = 0.9 + rng.normal(0, 0.02, J)
        panels = {"equal": ref - equal[i], "margin": ref - at_margin[i], "worse": ref - worse[i]}
        dec = {r["panel"]: r for r in noninferiority_sequence(ref, panels, margin=margin, alpha=alpha,
                                                               test_train_ratio=r)}
        if i < 20:  # the same decision as compare_panels' table
            full = panel_decisions(ref, panels, margin=margin, alpha=alpha, test_train_ratio=r)
            assert full["fixed_sequence"].tolist() == [d["decision"] for d in dec.values()]
        for k in ("worse", "margin", "equal"):
            acc[k] += dec[k]["ni_outcome"] == "non-inferior"
        # familywise: in the sequence equal -> at margin -> worse, any acceptance of a panel losing >= margin
        acc["seq_false"] += dec["margin"]["decision"] == "non-inferior" or dec["worse"]["decision"] == "non-inferior"
        acc["old_point_rule"] += worse[i].mean() <= margin
    mc = 3 * math.sqrt(alpha * (1 - alpha) / n)
    assert acc["worse"] / n <= alpha + mc
    assert acc["seq_false"] / n <= alpha + mc
    assert alpha - mc <= acc["margin"] / n <= alpha + mc  # the size is exact at the margin, not just conservative
    assert acc["equal"] / n >= 0.7  # power for an equal panel (about 0.83 for this process)
    assert acc["old_point_rule"] / n > 2 * alpha  # the former rule accepted the worse panel far more often


def test_panel_decisions_sequence_and_holm():
    ref = np.array([0.90, 0.91, 0.92, 0.90, 0.91])
    panels = {"top-3": ref - [0.001, 0.0, 0.002, 0.001, 0.0], "top-2": ref - [0.2, 0.1, 0.15, 0.1, 0.2],
              "top-1": ref - [0.0, 0.001, 0.0, 0.0, 0.001]}
    out = panel_decisions(ref, panels, margin=0.02, test_train_ratio=0.3125)
    # top-1 would be non-inferior on its own, but the sequence stopped at top-2: no claim about it
    assert out["ni_outcome"].tolist() == ["non-inferior", "worse", "non-inferior"]
    assert out["fixed_sequence"].tolist() == ["non-inferior", "inconclusive", "not tested"]
    p = out["p_corrected_ttest"].to_numpy()
    assert out["p_holm"].min() == pytest.approx(min(1.0, 3 * p.min()))
    assert out["test_train_ratio"].eq(0.3125).all()


# ---------------------------------------------------------------------------
# 2. the sequence in compare_panels / minimal_panel, on planted per-fold scores
# ---------------------------------------------------------------------------
LOSS = {"CD3": 0.3, "MHCII": 0.05, "F-actin": 0.01}  # F1 lost without each stain (others: nothing)


def fake_cross_validate_many(dataset, channel_subsets, *, n_splits, folds=None, random_state=None, n_jobs=None,
                             progress=False, desc="", valid_fraction=0.2, **kw):
    """Stand-in for the training: F1 per fold = 0.95 - losses of the missing stains + a fold effect."""
    ds = dataset
    split = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state).split(
        np.zeros(len(ds)), ds.labels))
    fold_ids = list(range(n_splits)) if folds is None else list(folds)
    out = []
    for ch in channel_subsets:
        names = [ds.channel_names[i] for i in ch]
        f1 = np.array([0.95 - sum(v for c, v in LOSS.items() if c not in names) + 0.01 * np.sin(3 * f)
                       + 0.002 * np.sin(f * len(names))
                       for f in fold_ids])
        out.append(training.CVResult(
            models=[None] * len(fold_ids), train_indices=[split[f][0] for f in fold_ids],
            test_indices=[split[f][1] for f in fold_ids], f1_macro=f1, accuracy=f1.copy(),
            f1_per_class=np.zeros((len(fold_ids), ds.n_classes)), y_pred=[ds.labels[split[f][1]] for f in fold_ids],
            channels=names, channel_indices=list(ch), class_names=list(ds.class_names), random_state=random_state,
            params={"n_splits": n_splits, "valid_fraction": valid_fraction, **({} if folds is None else {"folds": fold_ids})}))
    return out


@pytest.fixture(scope="module")
def syn():
    return make_synthetic("synapse", n_samples=150, image_size=16, random_state=0)


@pytest.fixture
def stub_training(monkeypatch):
    monkeypatch.setattr(training, "cross_validate_many", fake_cross_validate_many)


def test_minimal_panel_tests_from_the_largest_panel_down(syn, stub_training):
    stains = [c for c, s in zip(syn.channel_names, syn.stain_free) if not s]
    order = ["CD3", "MHCII", "F-actin"] + [c for c in stains if c not in LOSS]
    mp = minimal_panel(syn, order, margin=0.02, n_splits=5, progress=False)
    path = mp.searches["ranking"].path
    # largest panel first (all stains but one), down to the first panel not shown non-inferior
    assert path.n_stains.iloc[0] == len(stains) - 1
    assert path.n_stains.tolist() == list(range(len(stains) - 1, 0, -1))
    assert path.non_inferior.tolist()[:-1] == [True] * (len(path) - 1) and not path.non_inferior.iloc[-1]
    # top-2 loses 0.01 (< margin, shown), top-1 0.06: the answer is CD3 + MHCII
    assert mp.stains == ["CD3", "MHCII"] and mp.info["decision"] == "non-inferior"
    assert path.ni_outcome.iloc[-1] == "worse"
    # the ratio from the split sizes: 150 cells, 5 folds -> 30 test, 120 - ceil(24) = 96 fitted
    assert mp.info["test_train_ratio"] == pytest.approx(30 / 96)
    # a margin no panel meets -> inconclusive, keep all channels (not "the best panel seen")
    mp2 = minimal_panel(syn, order, margin=0.001, n_splits=5, progress=False)
    assert mp2.info["decision"] == "inconclusive" and not mp2.searches["ranking"].found
    assert mp2.panel == list(syn.channel_names) or sorted(mp2.panel) == sorted(syn.channel_names)
    assert len(mp2.searches["ranking"].path) == 1  # the sequence stopped at its first panel
    assert "inconclusive" in mp2.summary()


def test_compare_panels_sequence_puts_stain_free_last(syn, stub_training):
    cmp = compare_panels(syn, ["CD3", "MHCII", "F-actin"], k=(1, 2, 3), n_splits=5, margin=0.02, progress=False)
    t = cmp.tests
    assert t["panel"].tolist() == ["stain-free + top-3", "stain-free + top-2", "stain-free + top-1", "stain-free"]
    assert t["fixed_sequence"].tolist() == ["non-inferior", "non-inferior", "inconclusive", "not tested"]
    assert t["ni_outcome"].tolist()[2:] == ["worse", "worse"]
    assert cmp.info["test_train_ratio"] == pytest.approx(30 / 96)
    d = cmp.cv_results["all channels"].f1_macro - cmp.cv_results["stain-free + top-3"].f1_macro
    up = d.mean() + stats.t.ppf(0.95, 4) * math.sqrt((0.2 + 30 / 96) * d.var(ddof=1))
    assert t["ni_upper"].iloc[0] == pytest.approx(up)


# ---------------------------------------------------------------------------
# 3. nested cross-validation
# ---------------------------------------------------------------------------
def rotating_ranking(seen):
    """A ranking function that records its data and ranks differently in every call."""

    def rank(sub):
        seen.append(sub.images.copy())
        stains = [c for c, s in zip(sub.channel_names, sub.stain_free) if not s]
        r = len(seen) % len(stains)
        return stains[r:] + stains[:r]

    return rank


def test_nested_rankings_never_see_the_judged_cells(syn):
    seen = []
    cmp = compare_panels(syn, rotating_ranking(seen), k=(1, 2), n_splits=3, progress=False, **TINY)
    assert cmp.info["nested"] and len(seen) == 3
    ref = cmp.cv_results["all channels"]
    sf = [c for c, s in zip(syn.channel_names, syn.stain_free) if s]
    for f, (imgs, te, tr) in enumerate(zip(seen, ref.test_indices, ref.train_indices)):
        got = {x.tobytes() for x in imgs}
        assert not any(syn.images[i].tobytes() in got for i in te), f"fold {f}: a judged cell informed its ranking"
        assert len(imgs) == len(tr) and all(syn.images[i].tobytes() in got for i in tr)
        # fold f's panel is the top of fold f's own ranking, judged on fold f's test cells
        top2 = cmp.info["fold_rankings"][f][:2]
        row = cmp.scores[(cmp.scores.panel == "stain-free + top-2") & (cmp.scores.fold == f)]
        assert set(row.channels.item().split(",")) == set(sf + top2)
        one = cmp.cv_results[f"stain-free + top-2 [fold {f}]"]
        np.testing.assert_array_equal(one.test_indices[0], te)
        assert row.f1_macro.item() == pytest.approx(one.f1_macro[0])
    assert len({tuple(r[:2]) for r in cmp.info["fold_rankings"]}) == 3  # the panels really differ by fold
    assert "nested" in cmp.statement()


def test_builtin_pxpermute_ranking_is_nested(monkeypatch):
    real = crossval.cv_importance
    seen = []

    def recording(data, **kw):
        seen.append(data.images.copy())
        return real(data, **kw)

    monkeypatch.setattr(crossval, "cv_importance", recording)
    syn = make_synthetic("synapse", n_samples=320, image_size=16, random_state=1)  # 9 classes in every inner split
    cmp = compare_panels(syn, "pxpermute", k=1, n_splits=2, n_repeats=2, progress=False, **TINY)
    assert cmp.info["nested"] and len(seen) == 2 and cmp.info["ranking_trainings"] == 2 * 2
    for imgs, te in zip(seen, cmp.cv_results["all channels"].test_indices):
        got = {x.tobytes() for x in imgs}
        assert not any(syn.images[i].tobytes() in got for i in te)


def test_nested_ranking_reuse_and_validation(syn, stub_training):
    seen = []
    nr = nested_rankings(syn, rotating_ranking(seen), n_splits=5, random_state=7, progress=False)
    assert isinstance(nr, NestedRanking) and len(seen) == 5 and len(nr.consensus()) == len(nr.fold_rankings[0])
    cmp = compare_panels(syn, nr, k=(1, 2), n_splits=5, random_state=None, progress=False)
    mp = minimal_panel(syn, nr, n_splits=5, random_state=7, progress=False, max_stains=2)
    assert len(seen) == 5  # reused, not recomputed
    assert cmp.info["nested"] and mp.info["nested"] and cmp.info["random_state"] == 7
    assert cmp.info["fold_rankings"] == [[c for c in r if c in cmp.info["fold_rankings"][0]] for r in nr.fold_rankings]
    sf = [c for c, s in zip(syn.channel_names, syn.stain_free) if s]
    assert mp.info["ranked_stains"] == [c for c in nr.consensus() if c not in sf]
    if mp.searches["ranking"].found:  # the reported panel: the top of the consensus ranking
        assert mp.stains == mp.info["ranked_stains"][: len(mp.stains)]
    # trainings of the comparison are reused: the minimal-panel sequence top-2 -> top-1 -> stain-free needs none
    again = minimal_panel(syn, nr, n_splits=5, random_state=7, progress=False, max_stains=2, reuse=cmp)
    assert again.n_trainings == 0 and mp.n_trainings > 0
    np.testing.assert_allclose(again.path.f1_mean, mp.path.f1_mean)
    with pytest.raises(ValueError, match="reuse"):
        minimal_panel(syn, ["CD3"], n_splits=5, random_state=8, progress=False, reuse=cmp)
    with pytest.raises(ValueError, match="outer folds"):
        compare_panels(syn, nr, k=1, n_splits=3, progress=False)
    with pytest.raises(ValueError, match="random_state"):
        compare_panels(syn, nr, k=1, n_splits=5, random_state=1, progress=False)
    with pytest.raises(ValueError, match="nested=True"):
        compare_panels(syn, ["CD3"], k=1, nested=True, progress=False)
    with pytest.raises(ValueError, match="only used nested"):
        minimal_panel(syn, nr, n_splits=5, nested=False, progress=False)


def test_fixed_ranking_from_the_same_data_warns(syn):
    res = ImportanceResult(np.ones((1, syn.n_channels)), channel_names=syn.channel_names, info={"data": syn.name})
    with pytest.warns(UserWarning, match="selection on the test data"), pytest.raises(ValueError, match="exceeds"):
        compare_panels(syn, res, k=99, n_splits=2, progress=False)


def test_docstring_examples_run():
    import doctest

    import pxpermute.evaluation.panels as panels

    out = doctest.testmod(panels, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert out.attempted > 0 and out.failed == 0
