#!/usr/bin/env python
"""Draw the method schematic of book/method.md from a real cell: book/figures/method_schematic.png.

Uses the full Jurkat cell-cycle data (Blasi et al. 2016) when they are found (``PXPERMUTE_DATA_DIR`` or the cache) and
the pretrained tutorial model of fold 1 on that fold's held-out cells, so the F1 drops read out in the figure are
honest held-out numbers; without the full data it falls back to the real sample embedded in the package (labelled so in
the title).  ``scripts/build_book.py`` runs it when the figure is missing.

Usage: python scripts/draw_method_schematic.py [--out PATH] [--repeats K]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def draw(out: Path, repeats: int = 5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from pxpermute.datasets.cellcycle import load_cellcycle, load_cellcycle_sample
    from pxpermute.evaluation import method_schematic
    from pxpermute.models import load_pretrained
    from pxpermute.pretrained import load_cv

    try:
        ds = load_cellcycle(download=False)
        cv = load_cv("cellcycle_all", ds, device="cpu")
        cells, model = ds.subset(cv.test_indices[0]), cv.models[0]
        what = f"Jurkat cell cycle (Blasi et al. 2016), {len(cells)} held-out cells of fold 1"
    except (OSError, ValueError, KeyError):
        cells, model = load_cellcycle_sample(), load_pretrained("cellcycle_all_fold0", device="cpu")
        what = f"embedded real cell-cycle sample ({len(cells)} cells, partly seen in training)"
    labels = list(cells.labels)
    index = labels.index(cells.class_names.index("Metaphase")) if "Metaphase" in cells.class_names else 0
    fig = method_schematic(cells, model, channel="DNA", index=index, n_repeats=repeats, random_state=0,
                           title=f"PXPermute on one real cell: {what};\npretrained SmallCNN (cellcycle_all_fold0), "
                                 f"DNA perturbed, F1 drop over all these cells, k={repeats}, seed=0")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "book" / "figures" / "method_schematic.png")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print("wrote", draw(args.out, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
