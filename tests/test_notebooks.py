"""Every tutorial notebook runs end to end under papermill with its small test parameters."""
import json
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _params(nb: Path, tmp: Path) -> dict:
    meta = json.loads(nb.read_text())["metadata"].get("pxpermute", {})
    params = meta.get("test_parameters", {})

    def fill(v):
        if isinstance(v, str):
            return v.replace("{shared_data}", str(SHARED_DATA)).replace("{tmp}", str(tmp))
        return v

    return {k: fill(v) for k, v in params.items()}


def test_notebooks_exist_and_follow_conventions():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(nb, tmp_path):
    import papermill

    out = tmp_path / nb.name
    papermill.execute_notebook(str(nb), str(out), parameters=_params(nb, tmp_path), kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
