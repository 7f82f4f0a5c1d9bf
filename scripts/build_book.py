#!/usr/bin/env python
"""Execute the tutorial notebooks with chosen parameters and build the HTML book, fully offline.

Usage (from the repository root, inside the project's environment)::

    python scripts/build_book.py                      # small test parameters (minutes), then build
    python scripts/build_book.py --params full        # the notebooks' defaults: the full runs (hours on a CPU)
    python scripts/build_book.py --params stored      # no execution: render the notebooks as stored
    python scripts/build_book.py --only quickstart --set quickstart.n_repeats=20
    python scripts/build_book.py --data-dir ~/pxpermute-data --params full   # real data in that folder

Steps:

1. Every notebook listed in ``_toc.yml`` that exists in ``notebooks/`` is executed with papermill
   (kernel ``python3``) into ``_build/executed/<name>.ipynb``, each in its own working folder
   ``_build/run/<name>/``.  Parameters: ``--params test`` uses the small values stored in the
   notebook's metadata (``metadata["pxpermute"]["test_parameters"]``, as the test suite does),
   ``--params full`` the defaults of its ``parameters`` cell; ``--set NAME.KEY=VALUE`` overrides
   single values (VALUE is read as JSON, else kept as a string).  The placeholders
   ``{shared_data}`` and ``{tmp}`` in test parameters become ``--data-dir`` and the working folder.
2. The book sources (``_config.yml``, ``_toc.yml``, ``book/``, the executed notebooks) are staged
   in ``_build/book/``; toc entries whose notebook does not exist (yet) are left out, with a note.
3. ``jupyter-book build`` (Jupyter Book 1.x; ``execute_notebooks: off``) renders the stored outputs,
   figures included.  Nothing is downloaded.  The HTML lands in ``_build/book/_build/html``.

Exit status: 0 on success; 1 if a notebook failed (the book is still built, showing the error) or
the build failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _toc_files(toc_path: Path) -> list[str]:
    """All ``file:`` entries of a Jupyter Book toc (root first), in order."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text())
    out = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in toc.items() if k != "root"})
    return out


def _filtered_toc(toc_path: Path, keep: set[str]) -> str:
    import yaml

    toc = yaml.safe_load(toc_path.read_text())

    def prune(node):
        if isinstance(node, dict):
            node = {k: prune(v) for k, v in node.items()}
            for key in ("chapters", "sections", "parts"):
                if key in node and isinstance(node[key], list):
                    node[key] = [c for c in node[key] if not (isinstance(c, dict) and "file" in c and c["file"] not in keep)]
                    node[key] = [c for c in node[key] if not (isinstance(c, dict) and "caption" in c
                                                              and not c.get("chapters") and not c.get("sections"))]
            return node
        if isinstance(node, list):
            return [prune(v) for v in node]
        return node

    return yaml.safe_dump(prune(toc), sort_keys=False)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parameters(nb_path: Path, mode: str, overrides: dict, data_dir: Path, workdir: Path) -> dict:
    params: dict = {}
    if mode == "test":
        meta = json.loads(nb_path.read_text()).get("metadata", {}).get("pxpermute", {})
        params.update(meta.get("test_parameters", {}))
    params.update(overrides.get(nb_path.stem, {}))

    def fill(v):
        if isinstance(v, str):
            return v.replace("{shared_data}", str(data_dir)).replace("{tmp}", str(workdir))
        return v

    return {k: fill(v) for k, v in params.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", choices=["test", "full", "stored"], default="test",
                    help="test: small parameters from the notebook metadata (default); full: the notebooks' own "
                         "defaults; stored: do not execute, render the notebooks as they are stored")
    ap.add_argument("--only", nargs="+", metavar="NAME", default=None,
                    help="execute only these notebooks (the others are rendered as stored)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="override one parameter of one notebook (VALUE as JSON, else string); repeatable")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder substituted for {shared_data} in test parameters (default: ../shared/data)")
    ap.add_argument("--build-dir", type=Path, default=REPO / "_build", help="where everything is written")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    ap.add_argument("--warnings-as-errors", "-W", action="store_true", help="pass -W --keep-going to jupyter-book")
    ap.add_argument("--no-build", action="store_true", help="only execute the notebooks")
    args = ap.parse_args(argv)

    overrides: dict[str, dict] = {}
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            ap.error(f"--set expects NAME.KEY=VALUE, got {item!r}")
        lhs, value = item.split("=", 1)
        name, key = lhs.split(".", 1)
        overrides.setdefault(name, {})[key] = _parse_value(value)

    toc_path = REPO / "_toc.yml"
    entries = _toc_files(toc_path)
    present, missing = [], []
    for entry in entries:
        found = [p for p in (REPO / f"{entry}.ipynb", REPO / f"{entry}.md") if p.exists()]
        (present if found else missing).append(entry)
    notebooks = [REPO / f"{e}.ipynb" for e in present if (REPO / f"{e}.ipynb").exists()]
    unlisted = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb") if f"notebooks/{p.stem}" not in entries)
    for name in missing:
        print(f"note: {name} is listed in _toc.yml but does not exist yet; left out of this build")
    for name in unlisted:
        print(f"note: notebooks/{name}.ipynb is not listed in _toc.yml; it is not part of the book")
    unknown = sorted(set(overrides) - {p.stem for p in notebooks})
    if unknown:
        ap.error(f"--set: unknown notebook(s) {unknown}; known: {[p.stem for p in notebooks]}")
    if args.only:
        unknown = sorted(set(args.only) - {p.stem for p in notebooks})
        if unknown:
            ap.error(f"--only: unknown notebook(s) {unknown}; known: {[p.stem for p in notebooks]}")

    build = args.build_dir.resolve()
    executed_dir, run_dir, stage = build / "executed", build / "run", build / "book"
    executed_dir.mkdir(parents=True, exist_ok=True)
    env_backend = os.environ.pop("MPLBACKEND", None)  # the kernel must use the inline backend to store figures
    if env_backend:
        print(f"note: MPLBACKEND={env_backend} unset so that the notebooks store their figures")

    failures: list[str] = []
    timings: dict[str, float] = {}
    run_these = [] if args.params == "stored" else [p for p in notebooks if not args.only or p.stem in args.only]
    if run_these:
        import papermill

        for nb in run_these:
            workdir = run_dir / nb.stem
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            params = _parameters(nb, args.params, overrides, args.data_dir.resolve(), workdir)
            out = executed_dir / nb.name
            print(f"executing {nb.name} ({args.params} parameters{', ' + json.dumps(params) if params else ''})", flush=True)
            t0 = time.perf_counter()
            try:
                papermill.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                           cwd=str(workdir), progress_bar=False, execution_timeout=args.timeout)
            except Exception as err:  # keep going: the book shows the failing cell
                failures.append(nb.stem)
                print(f"  FAILED: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            timings[nb.stem] = time.perf_counter() - t0
            print(f"  {timings[nb.stem]:.1f} s", flush=True)
        print(f"executed {len(run_these)} notebook(s) in {sum(timings.values()):.1f} s")

    if args.no_build:
        return 1 if failures else 0

    shutil.rmtree(stage, ignore_errors=True)
    (stage / "notebooks").mkdir(parents=True)
    shutil.copy2(REPO / "_config.yml", stage / "_config.yml")
    (stage / "_toc.yml").write_text(_filtered_toc(toc_path, set(present)))
    shutil.copytree(REPO / "book", stage / "book")
    executed_now = {p.stem for p in run_these}
    for nb in notebooks:
        src = executed_dir / nb.name if nb.stem in executed_now else nb
        shutil.copy2(src, stage / "notebooks" / nb.name)

    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage)]
    if args.warnings_as_errors:
        cmd += ["-W", "--keep-going"]
    print("building:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    print(f"book built in {time.perf_counter() - t0:.1f} s: {stage / '_build' / 'html' / 'index.html'}")
    if failures:
        print(f"notebooks that failed: {failures}")
    return 1 if failures or proc.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
