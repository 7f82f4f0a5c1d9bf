#!/usr/bin/env python
"""Execute the tutorial notebooks at a parameter tier and build the HTML book, fully offline.

Usage (from the repository root, inside the project's environment)::

    python scripts/build_book.py --params stored      # no execution: render the committed notebooks (seconds)
    python scripts/build_book.py --params teach -j 2  # the book's tier: minutes per notebook; stores them in notebooks/
    python scripts/build_book.py --params test        # seconds per notebook (CI smoke), nothing stored
    python scripts/build_book.py --params full        # the paper's scale (hours on a CPU)
    python scripts/build_book.py --only quickstart --set quickstart.n_repeats=20

Steps:

1. Every notebook listed in ``_toc.yml`` that exists in ``notebooks/`` is executed with papermill
   (kernel ``python3``) into ``_build/executed/<name>.ipynb``, each in its own working folder
   ``_build/run/<name>/``, at most ``--jobs`` at a time.  Parameters: the tier's values stored in
   the notebook's metadata, ``metadata["pxpermute"]["tiers"][TIER]`` (the ``parameters`` cell's
   defaults are the teach tier); ``--set NAME.KEY=VALUE`` overrides single values (VALUE is read as
   JSON, else kept as a string).  In test-tier values the placeholder ``{shared_data}`` becomes
   ``--data-dir`` and ``{tmp}`` the working folder.  Real data are found by the notebooks through
   ``PXPERMUTE_DATA_DIR`` (``--data-dir`` sets it for the kernels), so the stored parameters show
   no path of the build machine.
2. Each executed notebook records ``metadata["pxpermute"]["executed_with"]`` (the tier),
   ``"version"`` (pxpermute's) and ``"seconds"``; paths of the build machine (repository, data
   folder, working folder, Python prefix) in outputs are replaced by symbolic ones
   (``$PXPERMUTE_DATA_DIR``, ``<repo>``, ``<python>``).  With ``--params teach`` (or ``--store``) the
   executed notebooks that ran without error are copied back into ``notebooks/``: they are the
   committed book.
3. The book sources (``_config.yml``, ``_toc.yml``, ``book/``, the notebooks) are staged in
   ``_build/book/``; toc entries whose notebook does not exist (yet) are left out, with a note.
4. ``jupyter-book build`` (Jupyter Book 1.x; ``execute_notebooks: off``) renders the stored outputs,
   figures included.  Nothing is downloaded.  The HTML lands in ``_build/book/_build/html``.

Exit status: 0 on success; 1 if a notebook failed (the book is still built, showing the error) or
the build failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


TIERS = ("test", "teach", "full")


def tier_parameters(nb_path: Path, tier: str) -> dict:
    """The parameters of ``tier`` stored in a notebook's metadata (``metadata["pxpermute"]["tiers"]``)."""
    meta = json.loads(nb_path.read_text()).get("metadata", {}).get("pxpermute", {})
    tiers = meta.get("tiers")
    if tiers is None and tier in ("teach", "test"):  # a notebook without tiers: its defaults / legacy test values
        print(f"note: {nb_path.name} has no metadata['pxpermute']['tiers']; {tier} tier = "
              f"{'its parameters cell defaults' if tier == 'teach' else 'metadata test_parameters'}")
        return dict(meta.get("test_parameters", {})) if tier == "test" else {}
    if not isinstance(tiers, dict) or tier not in tiers:
        raise KeyError(f"{nb_path.name}: metadata['pxpermute']['tiers'] has no {tier!r} tier "
                       f"(found: {sorted(tiers) if isinstance(tiers, dict) else None})")
    return dict(tiers[tier])


def _parameters(nb_path: Path, mode: str, overrides: dict, data_dir: Path, workdir: Path) -> dict:
    params = tier_parameters(nb_path, mode)
    params.update(overrides.get(nb_path.stem, {}))

    def fill(v):
        if isinstance(v, str):
            return v.replace("{shared_data}", str(data_dir)).replace("{tmp}", str(workdir))
        return v

    return {k: fill(v) for k, v in params.items()}


def _scrub(text: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        if old:
            text = text.replace(old, new)
    return text


def finalize(out: Path, tier: str, seconds: float, replacements: list[tuple[str, str]]) -> bool:
    """Record the run in the notebook's metadata and replace build-machine paths; True if no error output."""
    import pxpermute

    nb = json.loads(out.read_text())
    ok = True
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                ok = False
    text = _scrub(json.dumps(nb), [(json.dumps(a)[1:-1], json.dumps(b)[1:-1]) for a, b in replacements])
    text = re.sub(r"/tmp/ipykernel_\d+/\d+\.py", "<cell>", text)  # warnings name the kernel's temporary cell file
    nb = json.loads(text)
    pm = nb.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in pm:
            pm[key] = f"notebooks/{out.name}"
    if "environment_variables" in pm:
        pm["environment_variables"] = {}
    meta = nb.setdefault("metadata", {}).setdefault("pxpermute", {})
    meta.update(executed_with=tier, version=pxpermute.__version__, seconds=round(seconds, 1))
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return ok


def _default_data_dir() -> Path:
    env = os.environ.get("PXPERMUTE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", choices=[*TIERS, "stored"], default=None,
                    help="stored (default): do not execute, render the notebooks as committed; test / teach / full: "
                         "execute with that tier's parameters from the notebook metadata (default with --only: test)")
    ap.add_argument("--only", nargs="+", metavar="NAME", default=None,
                    help="execute only these notebooks (the others are rendered as stored)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="override one parameter of one notebook (VALUE as JSON, else string); repeatable")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="real-data folder: exported as PXPERMUTE_DATA_DIR to the notebooks and substituted for "
                         "{shared_data} in test parameters (default: $PXPERMUTE_DATA_DIR, else ../shared/data)")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="notebooks executed at the same time (default 1)")
    ap.add_argument("--store", action=argparse.BooleanOptionalAction, default=None,
                    help="copy notebooks executed without error back into notebooks/ (default: only with --params teach)")
    ap.add_argument("--build-dir", type=Path, default=REPO / "_build", help="where everything is written")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    ap.add_argument("--warnings-as-errors", "-W", action="store_true", help="pass -W --keep-going to jupyter-book")
    ap.add_argument("--no-build", action="store_true", help="only execute the notebooks")
    args = ap.parse_args(argv)
    if args.params is None:
        args.params = "test" if args.only else "stored"
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    store = args.params == "teach" if args.store is None else args.store

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
    data_dir = (args.data_dir if args.data_dir is not None else _default_data_dir()).expanduser().resolve()
    if data_dir.is_dir():
        os.environ["PXPERMUTE_DATA_DIR"] = str(data_dir)  # the kernels inherit it
    else:
        print(f"note: no real-data folder at {data_dir}; notebooks use the package cache, downloads or their fallbacks")

    failures: list[str] = []
    timings: dict[str, float] = {}
    run_these = [] if args.params == "stored" else [p for p in notebooks if not args.only or p.stem in args.only]
    for nb in run_these:
        tier_parameters(nb, args.params)  # fail early on a notebook without this tier
    replacements = [(str(data_dir), "$PXPERMUTE_DATA_DIR"), (str(run_dir), "<workdir>"), (str(build), "<build>"),
                    (str(REPO), "<repo>"), (sys.prefix, "<python>"), (str(Path.home()), "~")]

    def run_one(nb: Path) -> tuple[str, float, bool, str]:
        import papermill

        workdir = run_dir / nb.stem
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        params = _parameters(nb, args.params, overrides, data_dir, workdir)
        out = executed_dir / nb.name
        print(f"executing {nb.name} ({args.params} tier{', ' + json.dumps(params) if params else ''})", flush=True)
        t0 = time.perf_counter()
        msg = ""
        try:
            papermill.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                       cwd=str(workdir), progress_bar=False, execution_timeout=args.timeout)
        except Exception as err:  # keep going: the book shows the failing cell
            text = str(err).strip()
            msg = f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"
        seconds = time.perf_counter() - t0
        ok = out.exists() and finalize(out, args.params, seconds, replacements) and not msg
        print(f"  {nb.stem}: {seconds:.1f} s{'' if ok else '  FAILED ' + msg}", flush=True)
        return nb.stem, seconds, ok, msg

    if run_these:
        from concurrent.futures import ThreadPoolExecutor

        t_all = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for stem, seconds, ok, _ in pool.map(run_one, run_these):
                timings[stem] = seconds
                if not ok:
                    failures.append(stem)
        print(f"executed {len(run_these)} notebook(s) in {time.perf_counter() - t_all:.1f} s wall "
              f"({sum(timings.values()):.1f} s summed): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        if store:
            for nb in run_these:
                if nb.stem not in failures:
                    shutil.copy2(executed_dir / nb.name, nb)
            print(f"stored {len(run_these) - len(failures)} executed notebook(s) in notebooks/")

    if args.no_build:
        return 1 if failures else 0

    schematic = REPO / "book" / "figures" / "method_schematic.png"
    if not schematic.exists():  # committed; redrawn only when missing (scripts/draw_method_schematic.py)
        subprocess.run([sys.executable, str(REPO / "scripts" / "draw_method_schematic.py"), "--out", str(schematic)],
                       cwd=REPO, check=False)
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
