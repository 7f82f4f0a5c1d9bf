"""Every tutorial notebook runs end to end under papermill with its small test parameters.

Test parameters live in the notebook's metadata (``metadata["pxpermute"]["tiers"]["test"]``).
``{shared_data}`` there stands for the real-data folder (``$PXPERMUTE_DATA_DIR`` or pooch's cache,
see conftest) and ``{tmp}`` for the test's working folder. A notebook that needs real files (listed
in ``metadata["pxpermute"]["real_data"]``, named as ``{shared_data}/<file>`` in a parameter, or
known below) is skipped with one line when they are missing, like every other real-data test.
"""
import json
from pathlib import Path

import pytest
from conftest import REPO

# notebooks/drafts/ holds lessons not yet in the book (no lesson structure or teach-tier check yet); they still run here
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "notebooks" / "drafts").glob("*.ipynb"))


def _meta(nb: Path) -> dict:
    return json.loads(nb.read_text())["metadata"].get("pxpermute", {})


def _real_files(nb: Path) -> list[str]:
    """Relative paths of the real files the notebook reads at its test parameters."""
    meta = _meta(nb)
    files = list(meta.get("real_data", []))
    params = meta.get("tiers", {}).get("test", {})
    for value in params.values():
        if isinstance(value, str) and value.startswith("{shared_data}/"):
            files.append(value[len("{shared_data}/"):])
    if nb.stem == "cellcycle" and params.get("data_dir") == "{shared_data}" and not params.get("download", True):
        from pxpermute.datasets.cellcycle import CELLCYCLE_REGISTRY

        files += [entry.relpath for entry in CELLCYCLE_REGISTRY.values()]
    return list(dict.fromkeys(files))


def _params(nb: Path, tmp: Path, data_root: Path) -> dict:
    params = _meta(nb).get("tiers", {}).get("test", {})

    def fill(v):
        if isinstance(v, str):
            return v.replace("{shared_data}", str(data_root)).replace("{tmp}", str(tmp))
        return v

    return {k: fill(v) for k, v in params.items()}


def _cases():
    for nb in NOTEBOOKS:
        marks = [pytest.mark.slow] + ([pytest.mark.real_data] if _real_files(nb) else [])
        yield pytest.param(nb, marks=marks, id=nb.stem)


def test_notebooks_exist_and_follow_conventions():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"


@pytest.mark.parametrize("nb", list(_cases()))
def test_notebook_executes(nb, tmp_path, _real_data):
    import papermill

    data_root = _real_data.dir(*_real_files(nb))  # skips (fails under PXPERMUTE_REQUIRE_REAL_DATA=1) if missing
    out = tmp_path / nb.name
    papermill.execute_notebook(str(nb), str(out), parameters=_params(nb, tmp_path, data_root), kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
