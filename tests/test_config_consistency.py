"""Binder, Colab, the book and the README all point at the same repository and branch (the one in _config.yml).

The repository URL and branch live in one place, ``_config.yml`` (``repository.url`` / ``repository.branch``); every
other place that installs or launches the code is checked against it here: the Colab install cell and the launch badges
of every notebook, the README badges, Binder's ``postBuild`` (installs the checked-out commit) and ``environment.yml``
(JupyterLab, no second copy of the package from elsewhere).
"""
import json
import re

import pytest
import yaml
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CFG = yaml.safe_load((REPO / "_config.yml").read_text())
URL = CFG["repository"]["url"].rstrip("/")
BRANCH = CFG["repository"]["branch"]
SLUG = URL.split("github.com/", 1)[-1]


def _cells(nb):
    return json.loads(nb.read_text())["cells"]


def test_config_names_one_github_repository_and_branch():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL), URL
    assert isinstance(BRANCH, str) and BRANCH
    assert CFG["launch_buttons"]["binderhub_url"].startswith("https://mybinder.org")
    assert CFG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert CFG["launch_buttons"]["notebook_interface"] == "jupyterlab"


def test_binder_installs_the_checked_out_commit_with_jupyterlab():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(d.split("=")[0].split(">")[0] == "jupyterlab" for d in conda + pip), "environment.yml lacks jupyterlab"
    assert any(p.startswith("torch") for p in pip)
    # pxpermute must not come from a git URL or PyPI: that would be some other commit than the one being read
    assert not any("pxpermute" in p for p in pip + conda), pip
    post = (REPO / "postBuild").read_text()
    assert re.search(r"pip install (--no-deps )?-e \.\s*$", post, re.M), post


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_cell_installs_the_configured_repository_and_branch(nb):
    first = "".join(next(c for c in _cells(nb) if c["cell_type"] == "code")["source"])
    assert 'if "google.colab" in sys.modules' in first
    installs = re.findall(r'pip install[^\n]*"pxpermute @ git\+([^"@]+)@([^"]+)"', first)
    assert installs == [(URL, BRANCH)], f"{nb.name}: Colab installs {installs}, _config.yml says {(URL, BRANCH)}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_badges_launch_this_notebook_from_the_configured_branch(nb):
    text = "".join(_cells(nb)[0]["source"])
    assert f"https://mybinder.org/v2/gh/{SLUG}/{BRANCH}?urlpath=lab/tree/notebooks/{nb.name}" in text, nb.name
    assert f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH}/notebooks/{nb.name}" in text, nb.name


def test_readme_badges_and_clone_url_match():
    readme = (REPO / "README.md").read_text()
    binder = re.findall(r"https://mybinder\.org/v2/gh/([^/]+/[^/]+)/([^?)\s]+)", readme)
    colab = re.findall(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/", readme)
    assert binder and colab, "README needs a Binder and a Colab badge"
    assert set(binder) == {(SLUG, BRANCH)} and set(colab) == {(SLUG, BRANCH)}, (binder, colab)
    setup = (REPO / "book" / "learner_setup.md").read_text()
    assert f"git clone {URL}.git" in setup


PLACEHOLDER = "https://github.com/pxpermute/pxpermute"


def test_a_placeholder_address_is_called_one_where_learners_read_it():
    """While _config.yml holds the placeholder address, the learner setup page says so plainly (clone, Binder and Colab
    cannot work yet); once a real address is set, no page may still call it a placeholder."""
    setup = (REPO / "book" / "learner_setup.md").read_text()
    intro = (REPO / "book" / "intro.md").read_text()
    if URL == PLACEHOLDER:
        assert "**placeholder**" in setup and "placeholder" in intro
    else:
        assert "placeholder" not in setup.lower() and "placeholder" not in intro.lower()
