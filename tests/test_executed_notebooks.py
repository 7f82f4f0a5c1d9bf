"""The committed notebooks are the book: executed at the teach tier, with figures, without errors or machine paths.

``scripts/build_book.py --params teach`` executes every notebook of the book and stores it in ``notebooks/`` with
``metadata["pxpermute"] = {"executed_with": "teach", "version": ..., "seconds": ...}``; the book is then rendered
from these stored outputs (``--params stored``).  This test reads the committed files only (no execution).
"""
import json
import re

import pytest
import yaml
from conftest import REPO

TOC = yaml.safe_load((REPO / "_toc.yml").read_text())
BOOK_NOTEBOOKS = [REPO / f"{c['file']}.ipynb" for part in TOC["parts"] for c in part["chapters"]
                  if c["file"].startswith("notebooks/") and (REPO / f"{c['file']}.ipynb").exists()]
# absolute paths of a build machine (POSIX home/tmp/work folders, macOS users, Windows drives)
MACHINE_PATH = re.compile(r"(?<![\w.:/])(/(?:home|tmp|work|root|Users|var/folders|private)/[\w.-]+|[A-Z]:\\\\[\w.-]+)")


def _nb(path):
    return json.loads(path.read_text())


def _texts(cell):
    yield "".join(cell.get("source", ""))
    for o in cell.get("outputs", []):
        if "text" in o:
            yield "".join(o["text"])
        for mime, val in o.get("data", {}).items():
            if mime.startswith("text/"):
                yield "".join(val) if isinstance(val, list) else str(val)
        if o.get("output_type") == "error":
            yield "\n".join(o.get("traceback", []))


def test_book_lists_notebooks():
    assert len(BOOK_NOTEBOOKS) >= 10, [p.name for p in BOOK_NOTEBOOKS]


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_executed_at_teach_tier(path):
    nb = _nb(path)
    meta = nb["metadata"].get("pxpermute", {})
    assert meta.get("executed_with") == "teach", (
        f"{path.name}: executed_with={meta.get('executed_with')!r}; run scripts/build_book.py --params teach")
    assert isinstance(meta.get("version"), str) and isinstance(meta.get("seconds"), (int, float)), meta
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path.name}: a code cell was not executed"
    outputs = [o for c in code for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure in the outputs"
    check = [c for c in code if "check" in c.get("metadata", {}).get("tags", [])]
    assert check and "all checks passed" in "".join(_texts(check[0])), f"{path.name}: the check cell did not pass"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: p.stem)
def test_no_build_machine_paths(path):
    nb = _nb(path)
    for i, cell in enumerate(nb["cells"]):
        for text in _texts(cell):
            m = MACHINE_PATH.search(text)
            assert not m, f"{path.name} cell {i}: absolute path {m.group(0)!r} in {text[max(0, m.start() - 60):m.end() + 60]!r}"
    pm = nb["metadata"].get("papermill", {})
    for key in ("input_path", "output_path"):
        assert not str(pm.get(key, "")).startswith("/"), f"{path.name}: papermill {key} = {pm.get(key)}"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_is_followed_by_what_you_should_see(path):
    """After each cell that draws a figure, the next markdown cell tells the reader what to look for."""
    cells = _nb(path)["cells"]
    for i, cell in enumerate(cells):
        if any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])):
            nxt = next((c for c in cells[i + 1:] if c["cell_type"] == "markdown"), None)
            assert nxt is not None and "What you should see" in "".join(nxt["source"]), (
                f"{path.name}: the figure of cell {i} is not followed by 'What you should see'")


def test_notebooks_fit_the_size_budget():
    sizes = {p.name: p.stat().st_size for p in (REPO / "notebooks").glob("*.ipynb")}
    assert sum(sizes.values()) <= 12 * 2**20, sizes
    assert max(sizes.values()) < 2**20, sizes  # every committed file stays under 1 MB
