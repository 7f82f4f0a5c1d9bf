"""Progress bars degrade cleanly: never a warning (no ``IProgress not found``), and none at all with progress=False."""
from __future__ import annotations

import importlib.util
import sys
import warnings

import numpy as np
import pytest
import tqdm.std

from pxpermute import _progress
from pxpermute._progress import progress_bar, tqdm_class


@pytest.fixture
def count_bars(monkeypatch):
    """Count every tqdm bar created (the notebook and auto classes derive from tqdm.std.tqdm)."""
    made = []
    orig = tqdm.std.tqdm.__init__

    def init(self, *args, **kwargs):
        made.append(kwargs.get("desc"))
        orig(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", init)
    return made


def _no_ipywidgets(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(_progress.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real(name, *a))


def test_a_bar_emits_no_warning(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress_bar(total=3, desc="work", unit="step")
        for _ in range(3):
            bar.update(1)
        bar.close()
        assert list(progress_bar(range(4), desc="loop")) == [0, 1, 2, 3]
    assert "work" in capsys.readouterr().err


def test_without_ipywidgets_the_console_bar_is_used_silently(monkeypatch):
    """The notebook case: an IPython kernel (tqdm.auto would warn 'IProgress not found'), no ipywidgets."""
    _no_ipywidgets(monkeypatch)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", sys.modules.get("ipykernel.zmqshell", object()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tqdm_class() is tqdm.std.tqdm
        progress_bar(total=1, desc="x").close()


def test_progress_false_creates_no_bar(count_bars):
    assert progress_bar(total=3, progress=False, desc="off") is None
    it = range(3)
    assert progress_bar(it, progress=False, desc="off") is it
    assert count_bars == []
    progress_bar(total=1, desc="on").close()
    assert count_bars == ["on"]


def test_the_engine_creates_no_bar_with_progress_false_and_warns_not_with_progress(count_bars, capsys):
    from pxpermute import channel_importance

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 2, 4, 4)).astype(np.float32)
    y = (x[:, 0, :2, :2].mean(axis=(1, 2)) > 0).astype(int)

    def model(images):  # reads one corner of each channel, so a pixel permutation changes its answers
        return (np.asarray(images)[:, :, :2, :2].mean(axis=(2, 3)) @ [1.0, 0.5] > 0).astype(int)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        channel_importance(model, (x, y), n_repeats=2, random_state=0, progress=False)
        assert count_bars == []
        channel_importance(model, (x, y), n_repeats=2, random_state=0, progress=True)
    assert len(count_bars) == 1
    capsys.readouterr()


def test_run_trainings_and_evaluation_bars_share_the_helper(count_bars, capsys):
    from pxpermute.evaluation import panels
    from pxpermute.training import run_trainings

    eval_bar = panels.progress_bar  # the evaluation loops call the package's one helper
    assert eval_bar is progress_bar

    def square(x, n_threads):
        return x * x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_trainings(square, [(1,), (2,)], progress=False) == [1, 4]
        assert list(eval_bar(range(2), progress=False, desc="off")) == [0, 1]
        assert count_bars == []
        assert run_trainings(square, [(1,), (2,)], progress=True, n_jobs=1) == [1, 4]
        assert list(eval_bar(range(2), progress=True, desc="on")) == [0, 1]
    assert len(count_bars) == 2
    capsys.readouterr()
