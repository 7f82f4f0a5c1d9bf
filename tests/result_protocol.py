"""One check of the result protocol, shared by the evaluation tests.

Every result type must offer ``to_frame()`` (a DataFrame), ``summary()`` (text),
``plot()`` (a Figure) and ``save(path)`` / ``load(path)``; a loaded result gives the
same frame and the same text, and every kind of damage to the file pair raises
:class:`pxpermute.ResultFileError` (the one error type of result files).
"""
from __future__ import annotations

import json

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pxpermute._fileio import ResultFileError


def check_result_protocol(result, tmp_path, *, other_type=None):
    """Round trip plus four kinds of damage; returns the loaded copy for type-specific checks."""
    cls = type(result)
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    text = result.summary()
    assert isinstance(text, str) and text.strip() and "\n" in text
    fig = result.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    plt.close("all")

    path = result.save(tmp_path / "saved")
    assert path.suffix == ".json" and path.with_suffix(".npz").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic: no temporary files left behind
    back = cls.load(path)
    assert type(back) is cls
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    assert back.summary() == text
    # a second save of the loaded copy holds the same arrays, bit for bit (nothing lost or converted)
    again = back.save(tmp_path / "again")
    with np.load(path.with_suffix(".npz")) as a, np.load(again.with_suffix(".npz")) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype

    npz = path.with_suffix(".npz")
    raw_npz, raw_json = npz.read_bytes(), path.read_text()
    # 1. corrupted arrays (one byte flipped): checksum mismatch
    damaged = bytearray(raw_npz)
    damaged[len(damaged) // 2] ^= 0xFF
    npz.write_bytes(bytes(damaged))
    with pytest.raises(ResultFileError):
        cls.load(path)
    npz.write_bytes(raw_npz)
    # 2. truncated JSON
    path.write_text(raw_json[: len(raw_json) // 2])
    with pytest.raises(ResultFileError):
        cls.load(path)
    # 3. valid JSON whose content no longer matches the arrays
    doc = json.loads(raw_json)
    doc["result"] = {"garbage": True}
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultFileError):
        cls.load(path)
    path.write_text(raw_json)
    # 4. missing half of the pair
    npz.unlink()
    with pytest.raises(ResultFileError):
        cls.load(path)
    npz.write_bytes(raw_npz)
    # a file of another result type is refused by name
    if other_type is not None:
        with pytest.raises(ResultFileError, match=cls.__name__):
            other_type.load(path)
    assert type(cls.load(path)) is cls  # restored pair loads again
    return back
