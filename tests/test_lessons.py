"""Every notebook is a lesson with three parameter tiers, and stays thin.

Static checks on the notebook sources (fast; the executed book is checked in test_executed_notebooks.py):

* tiers: ``metadata["pxpermute"]["tiers"]`` holds ``test``, ``teach`` and ``full``; each names only parameters of the
  ``parameters`` cell, sets ``tier`` to its own name, and the ``teach`` values equal the cell's defaults (so Binder,
  Colab and a plain "Run all" use the teach tier); the cell has ``tier`` and ``device``;
* lesson shape (Carpentries / Project Pythia): an overview with questions, objectives, prerequisites and time; at least
  one exercise whose solution is folded in a ``dropdown`` admonition; key points; a check cell (tagged ``check``) that
  skips its asserts at the test tier;
* thin: no notebook defines a function or class of its own, except *bring_your_own_model* and *cif_files*, whose
  subject is the reader's own model (feature functions for an sklearn estimator, a torch network).
"""
import ast
import json
import re

import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# the subject of these lessons is the reader's own model (hand-made features + an sklearn estimator, a torch network)
OWN_CODE_ALLOWED = {"bring_your_own_model", "cif_files"}


def _nb(path):
    return json.loads(path.read_text())


def _src(cell):
    return "".join(cell["source"])


def _defaults(nb) -> dict:
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse(_src(cell)).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_three_tiers_and_teach_is_the_default(path):
    nb = _nb(path)
    defaults = _defaults(nb)
    code = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "code")
    uses_torch = re.search(r"\bimport torch\b|train_classifier|cross_validate|cv_or_train|load_pretrained", code)
    need = {"tier", "device"} if uses_torch else {"tier"}  # device: a GPU when present, for lessons that run torch
    assert need <= set(defaults), f"{path.name}: parameters cell needs {sorted(need)}"
    assert defaults["tier"] == "teach"
    tiers = nb["metadata"]["pxpermute"]["tiers"]
    assert set(tiers) == {"test", "teach", "full"}, sorted(tiers)
    for name, values in tiers.items():
        assert values.get("tier") == name, f"{path.name}: tiers[{name!r}]['tier'] = {values.get('tier')!r}"
        unknown = set(values) - set(defaults)
        assert not unknown, f"{path.name}: tier {name!r} sets unknown parameters {sorted(unknown)}"
    for key, value in tiers["teach"].items():
        assert defaults[key] == value, f"{path.name}: teach tier {key}={value!r} but the cell's default is {defaults[key]!r}"
    assert "test_parameters" not in nb["metadata"]["pxpermute"], "old metadata key: use tiers['test']"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_structure(path):
    nb = _nb(path)
    md = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    first = _src(nb["cells"][0])
    assert "{admonition} Overview" in first, f"{path.name}: the first cell has no Overview admonition"
    for word in ("Questions", "Objectives", "Prerequisites", "Time"):
        assert re.search(rf"\*\*{word}:?\*\*", first), f"{path.name}: the first cell's overview lacks **{word}**"
    assert re.search(r"^### Exercise \d", md, re.M), f"{path.name}: no exercise"
    solutions = re.findall(r"````\{admonition\} Solution\n:class: dropdown\n", md)
    assert len(solutions) == len(re.findall(r"^### Exercise \d", md, re.M)) >= 1, f"{path.name}: a solution is not folded"
    assert "Key points" in md and ":class: important" in md
    assert "**What you should see:**" in md
    checks = [c for c in nb["cells"] if "check" in c.get("metadata", {}).get("tags", [])]
    assert len(checks) == 1 and 'if tier == "test"' in _src(checks[0]) and "assert" in _src(checks[0]), path.name


# lessons whose subject is the reader's own model (OWN_CODE_ALLOWED) define it, so they are not checked here
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem not in OWN_CODE_ALLOWED], ids=lambda p: p.stem)
def test_notebooks_are_thin(path):
    for cell in _nb(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "\n".join(line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                        for line in _src(cell).splitlines())  # IPython magics are not Python
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef)), f"{path.name} defines {node.name}"
        assert not re.search(r"lambda \w+: \(\w+ - \w+\.min\(\)\)", src), f"{path.name}: own min-max; use .normalized()"


def test_setup_check_comes_first_in_the_book():
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    notebooks = [c["file"] for part in toc["parts"] for c in part["chapters"] if c["file"].startswith("notebooks/")]
    assert notebooks[0] == "notebooks/setup_check"
    pages = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/learner_setup" in pages and "book/instructor_notes" in pages
