"""The Jupyter Book: table of contents, configuration, and an offline build that shows executed outputs.

One build (``scripts/build_book.py``, Sphinx warnings as errors) executes the quickstart with its
small test parameters and renders every other notebook as stored; the assertions then read the
built HTML pages.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, real_data_root

SCRIPT = REPO / "scripts" / "build_book.py"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _script():
    spec = importlib.util.spec_from_file_location("build_book", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _toc_entries() -> list[str]:
    return _script()._toc_files(REPO / "_toc.yml")


def test_toc_lists_every_notebook_and_chapter():
    entries = _toc_entries()
    assert entries[0] == "book/intro"
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in entries, f"{nb.name} is not in _toc.yml"
    for md in sorted((REPO / "book").glob("*.md")):
        assert f"book/{md.stem}" in entries, f"book/{md.name} is not in _toc.yml"
    for entry in entries:
        if entry.startswith("book/"):
            assert (REPO / f"{entry}.md").exists(), f"_toc.yml lists {entry}, which does not exist"
    assert len(entries) == len(set(entries)), "a page is listed twice"


def test_filtered_toc_drops_pages_that_do_not_exist_yet():
    mod = _script()
    entries = _toc_entries()
    keep = set(entries) - {"notebooks/runtime"}
    pruned = yaml.safe_load(mod._filtered_toc(REPO / "_toc.yml", keep))
    files = [c["file"] for part in pruned["parts"] for c in part["chapters"]]
    assert "notebooks/runtime" not in files
    assert set(files) == keep - {pruned["root"]}


def test_config_renders_stored_outputs_with_binder_and_colab():
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["launch_buttons"]["binderhub_url"].startswith("https://mybinder.org")
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert cfg["repository"]["url"].startswith("https://github.com/")
    assert "sphinx.ext.autodoc" in cfg["sphinx"]["extra_extensions"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("torch") for p in pip)
    # Binder installs the checked-out commit (postBuild), never a released pxpermute from the index
    assert not any(p.startswith("pxpermute") for p in pip)
    assert "pip install --no-deps -e ." in (REPO / "postBuild").read_text()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_on_colab(nb):
    cells = json.loads(nb.read_text())["cells"]
    first = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    assert "google.colab" in first and "pip install" in first


def test_book_builds_offline_and_shows_executed_figures(tmp_path):
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--build-dir", str(tmp_path), "--only", "quickstart", "-W",
         "--data-dir", str(real_data_root())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    html = tmp_path / "book" / "_build" / "html"

    # every page of the table of contents that exists was rendered
    for entry in _toc_entries():
        if (REPO / f"{entry}.ipynb").exists() or (REPO / f"{entry}.md").exists():
            assert (html / f"{entry}.html").exists(), f"{entry}.html missing\n{log}"

    # the executed quickstart page holds its figures and printed output
    page = (html / "notebooks" / "quickstart.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]*_images/[^"]+\.png)"', page)  # notebook outputs, not theme logos
    assert len(images) >= 3, "quickstart page should show the montage, importance and per-class figures"
    for src in images:
        assert (html / "notebooks" / src).resolve().exists(), src
    assert "held-out F1-macro" in page and "Spearman correlation" in page

    # launch buttons on every notebook page point at that notebook
    for nb in NOTEBOOKS:
        text = (html / "notebooks" / f"{nb.stem}.html").read_text()
        assert re.search(rf'href="https://mybinder\.org/[^"]*notebooks/{nb.stem}\.ipynb"', text), nb.stem
        assert re.search(rf'href="https://colab\.research\.google\.com/[^"]*notebooks/{nb.stem}\.ipynb"', text), nb.stem

    # the API reference is generated from the docstrings
    import pxpermute

    api = (html / "book" / "api.html").read_text()
    first_line = pxpermute.channel_importance.__doc__.strip().splitlines()[0]
    assert 'id="pxpermute.channel_importance"' in api
    assert first_line.split("(")[0].strip() in api
    assert 'id="pxpermute.ImportanceResult.save"' in api
    assert "10.1016/j.crmeth.2024.100715" in (html / "book" / "citing.html").read_text()
