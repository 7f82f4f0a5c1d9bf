"""Text users read fits the book's page: every line of a repr, summary, message or warning is <= 100 characters.

The tutorials are rendered in an online book about 100 characters wide.  Built from small objects (a tiny data
set, a 2-fold 1-epoch cross-validation of a tiny CNN, PXPermute with k=2), with the package's longest names
(the synapse preset's class names, twelve WBC channels, and deliberately long channel names).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from pxpermute import channel_importance
from pxpermute._text import fill, glue, warning_text
from pxpermute.datasets import make_synthetic
from pxpermute.datasets.base import as_dataset

WIDTH = 100


def check_width(text: str, what: str) -> None:
    long = [line for line in str(text).splitlines() if len(line) > WIDTH]
    assert not long, f"{what}: {len(long)} line(s) over {WIDTH} characters, e.g. {long[0]!r}"


def corner_model(images):
    """Reads the top-left corner of the first channels: a pixel permutation changes its answers (8 classes)."""
    x = np.asarray(images)[:, :, :3, :3].mean(axis=(2, 3))
    return np.argmax(x[:, :8], axis=1)


@pytest.fixture(scope="module")
def wbc():
    return make_synthetic("wbc", n_samples=64, image_size=16, random_state=0)


@pytest.fixture(scope="module")
def cv():
    """(data, CVResult, what cv_or_train printed): a 2-fold, 1-epoch cross-validation of a tiny CNN."""
    from pxpermute.pretrained import cv_or_train

    ds = make_synthetic("synapse", n_samples=120, image_size=16, random_state=0)
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        out = cv_or_train("cellcycle_all", ds, n_splits=2, random_state=0, model="small_cnn",
                          model_kwargs={"width": 4}, max_epochs=1, batch_size=32)
    return ds, out, printed.getvalue()


def test_fill_keeps_short_text_and_glued_phrases():
    assert fill("a short line") == "a short line"
    text = fill("x " * 60 + glue("do not split me") + " y" * 30, width=40)
    assert "do not split me" in text
    assert all(len(line) <= 40 for line in text.splitlines())
    msg = warning_text(glue("importance exactly 0 under pixel permutation") + " for A, B" + " word" * 40)
    first, *rest = msg.splitlines()
    assert first == "importance exactly 0 under pixel permutation" and all(len(line) <= WIDTH for line in rest)


@pytest.mark.parametrize("preset", ["default", "synapse", "wbc", "apoptotic", "panel20"])
def test_dataset_repr(preset):
    ds = make_synthetic(preset, n_samples=60, image_size=16, random_state=0)
    text = repr(ds)
    check_width(text, f"repr of the {preset} data set")
    for name in ds.channel_names + ds.class_names:
        assert name in text  # nothing dropped, no name split over two lines
    small = as_dataset((np.zeros((4, 2, 8, 8), np.float32), np.array([0, 1, 0, 1])))
    assert "\n" not in repr(small)  # a repr that fits stays on one line, as before


def test_cv_result_repr_and_summary(cv):
    ds, res, _ = cv
    check_width(repr(res), "CVResult repr")
    check_width(res.summary(), "CVResult.summary()")
    assert "F1-macro" in repr(res) and all(c in repr(res) for c in ds.channel_names)
    for name in ds.class_names:
        assert f"F1[{name}]" in res.summary()


def test_cv_or_train_message(cv):
    out = cv[2]
    assert "training 2 folds" in out and "the pretrained group differs" in out
    check_width(out, "cv_or_train message")


def test_importance_repr_summary_and_warning(cv):
    ds, res, _ = cv
    test = ds.subset(res.test_indices[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imp = channel_importance(res.models[0], test, n_repeats=2, random_state=0, progress=False)
    for w in caught:
        check_width(str(w.message), f"warning {w.category.__name__}")
    check_width(repr(imp), "ImportanceResult repr")
    check_width(imp.summary(), "ImportanceResult.summary()")
    check_width(imp.summary(width=100), "ImportanceResult.summary(width=100)")


def test_zero_importance_warning_keeps_its_meaning_and_fits(wbc):
    with pytest.warns(UserWarning, match="importance exactly 0 under pixel permutation") as rec:
        imp = channel_importance(corner_model, wbc, n_repeats=2, random_state=0, progress=False)
    zero = imp.info["unchanged_under_pixel_permutation"]
    msg = next(str(w.message) for w in rec if "exactly 0" in str(w.message))
    assert msg.splitlines()[0] == "importance exactly 0 under pixel permutation"  # after 'path:line: UserWarning: '
    check_width(msg, "zero-importance warning")
    flat = " ".join(msg.split())
    assert all(c in flat for c in zero) and "perturbation='sample'" in flat and "intensity histogram" in flat
    # the filter the package and the tests use still matches
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*importance exactly 0 under pixel permutation")
        channel_importance(corner_model, wbc, n_repeats=2, random_state=0, progress=False)


def test_long_channel_names_split_the_table_into_blocks(wbc):
    names = [f"a rather long channel name, number {i}" for i in range(wbc.n_channels)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = channel_importance(corner_model, wbc, n_repeats=2, random_state=0, progress=False, n_bootstrap=20,
                                 channel_names=names)
    for width in (88, 100):
        text = imp.summary(width=width)
        assert all(len(line) <= width for line in text.splitlines()), text
        assert text.count("rank  channel") == 2  # two blocks, each repeating rank and channel
        for head in ("value", "CI", "P(>next)", "ranks", "norm."):
            assert head in text
        for n in names:
            assert text.count(n) >= 2  # in both blocks, never split
    check_width(repr(imp), "ImportanceResult repr, long names")
    # the table of short names stays one block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        short = channel_importance(corner_model, wbc, n_repeats=2, random_state=0, progress=False, n_bootstrap=20)
    assert short.summary().count("rank  channel") == 1


def test_k_ablation_repr_and_summary(wbc):
    from pxpermute.evaluation import k_ablation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        abl = k_ablation(corner_model, wbc, ks=(1, 2), n_seeds=2, random_state=0, progress=False)
    check_width(repr(abl), "KAblation repr")
    check_width(abl.summary(), "KAblation.summary()")
    assert abl.summary().count("ranking stable from k") == 1
