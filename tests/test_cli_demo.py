"""`pxpermute demo` end to end with tiny settings: table printed, figure and result files written."""
import json

import numpy as np

from pxpermute import ImportanceResult
from pxpermute.cli import main


def test_demo_writes_table_figure_and_results(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["demo", "--n-samples", "240", "--k", "3", "--k-sample", "2", "--epochs", "2", "--width", "8",
               "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("BF", "DNA", "DNA-2", "Marker", "Noise", "Empty"):
        assert name in text
    assert "planted" in text and "Spearman" in text
    # the interval is the bootstrap over test cells, labelled, and no interval claims to cover retraining
    assert "[95% CI]: bootstrap over test cells (999 replicates)" in text
    assert "No interval here covers retraining" in text and "absence of evidence" in text
    assert (out / "channel_importance.png").stat().st_size > 10_000
    assert (out / "per_class.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["ranking"]) == sorted(["BF", "DNA", "DNA-2", "Marker", "Noise", "Empty"])
    pixel = ImportanceResult.load(out / "importance_pixel")
    sample = ImportanceResult.load(out / "importance_sample")
    assert pixel.n_repeats == 3 and sample.n_repeats == 2
    assert pixel.info["perturbation"] == "pixel" and sample.info["perturbation"] == "sample"
    assert np.all(np.isfinite(pixel.importances))
    assert pixel.n_bootstrap == 999 and pixel.ci_kind == "bootstrap"


def test_demo_on_embedded_real_sample(tmp_path, capsys):
    rc = main(["demo", "--data", "cellcycle", "--k", "2", "--no-sample", "--epochs", "1", "--width", "8",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cell" in text.lower() and "DNA" in text and "planted" not in text
    res = ImportanceResult.load(tmp_path / "importance_pixel")
    assert res.channel_names == ["BF", "DNA", "DF"] and len(res.class_names) == 7
