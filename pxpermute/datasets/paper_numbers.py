"""The PXPermute paper's published numbers as data, for "ours vs paper" tables.

Source: Shetab Boushehri et al., "Optimizing IFC experiments with PXPermute",
Cell Reports Methods 4, 100715 (2024), doi:10.1016/j.crmeth.2024.100715; the
numbers are summaries (mean and standard deviation over the 5 cross-validation
folds) of the per-fold result files published with it in the marrlab/pxpermute
repository (commit dc90af1d7216, MIT licence).  The summary table ships with the
package as ``paper_numbers.csv`` (next to this module); :func:`build_paper_table`
regenerates it from the repository's CSV files, and the test suite checks that
both agree.

Quantities (column ``quantity``), all F1 values macro-averaged over classes:

``f1_macro_all_channels``
    ResNet18 trained on all channels (``performance_with_all_channels.csv``).
``importance``
    Mean PXPermute channel importance (F1 drop) per channel, with ``rank``
    (1 = most important) (``channel_importance.csv``).
``best_channels_f1_macro``
    F1 after retraining on the channels each method ranked best
    (``results_with_best_channels.csv``).
``remove_and_retrain_f1_macro``
    F1 after removing the ``n_removed`` least important channels (per method)
    and retraining (``results_with_best_channels_remove_bad_channels_and_retrain.csv``).
``remove_and_retrain_mean_f1_macro``
    The same averaged over all removal steps: one number per method.
``panel_f1_macro``
    Panels: ``stain-free`` channels only, stain-free plus PXPermute's top
    stains (``stain-free + PXPermute``) and ``all channels``; the panel's
    channels are in ``channels`` (``results_with_stain_free_comparison.csv``;
    synapse and WBC only).
``runtime_s``
    Seconds per fold on the authors' GPU for training and for PXPermute
    (``run_time.csv``).

Channel names follow the package loaders (e.g. ``"Live/Dead"``, ``"FL"``);
the data set keys are ``"apoptotic"``, ``"synapse"`` and ``"wbc"``.  In the
synapse ``channel_importance.csv`` fold 1 appears twice; the first block (all
importances about -0.9, an aborted run) is superseded by the second and dropped.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = [
    "CITATION",
    "SOURCE",
    "DATASETS",
    "paper_table",
    "paper_f1_macro",
    "paper_importance",
    "paper_top_channels",
    "paper_remove_and_retrain",
    "paper_best_channels",
    "paper_panels",
    "build_paper_table",
]

CITATION = (
    "Shetab Boushehri S, Gruber A, Kazeminia S, Matek C, Spiliopoulou K, Essig K, Marr C. "
    "Optimizing IFC experiments with PXPermute. Cell Reports Methods 4, 100715 (2024). "
    "doi:10.1016/j.crmeth.2024.100715"
)
SOURCE = "https://github.com/marrlab/pxpermute (commit dc90af1d7216, MIT licence): per-fold result CSV files"

_TABLE_FILE = Path(__file__).with_name("paper_numbers.csv")

#: data set key -> (folder in the reference repository, channel names as the package loaders use them,
#: reference-file channel name -> package channel name)
DATASETS: dict[str, dict] = {
    "apoptotic": {
        "folder": "apoptotic_cells",
        "runtime_column": "apoptotic",
        "channels": ["BF", "FL"],
        "stain_free": ["BF"],
        "rename": {"Ch0": "BF", "Ch1": "FL"},
    },
    "synapse": {
        "folder": "synapse_formation",
        "runtime_column": "synapse",
        "channels": ["BF", "Ab", "CD18", "F-actin", "MHCII", "CD3", "P-CD3zeta", "Live/Dead"],
        "stain_free": ["BF"],
        "rename": {"Antibody": "Ab", "F-Actin": "F-actin", "Live-Dead": "Live/Dead"},
    },
    "wbc": {
        "folder": "white_blood_cells",
        "runtime_column": "white_blood_cell",
        "channels": ["BF1", "CD15", "SigL8", "CD14", "CD19", "DF", "CD3", "CD45", "BF2", "CD4", "CD56", "CD8"],
        "stain_free": ["BF1", "DF", "BF2"],
        "rename": {},
    },
}

_PANEL_NAMES = {"stainfree": "stain-free", "PXPermute": "stain-free + PXPermute", "all_channels": "all channels"}
_COLUMNS = ["dataset", "quantity", "method", "channel", "channels", "n_removed", "rank", "value", "std", "n_folds", "source"]


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; known: {sorted(DATASETS)}")


def _row(**kw) -> dict:
    out = {c: None for c in _COLUMNS}
    out.update(kw)
    return out


def _mask_channels(row: pd.Series, names: list[str]) -> str:
    return "|".join(n for i, n in enumerate(names) if int(row[f"Ch{i}"]) == 1)


def build_paper_table(reference_dir: str | os.PathLike) -> pd.DataFrame:
    """Summarize the per-fold reference CSV files into the tidy paper table.

    Parameters
    ----------
    reference_dir : path-like
        Folder with ``apoptotic_cells/``, ``synapse_formation/``,
        ``white_blood_cells/`` and ``run_time.csv`` from marrlab/pxpermute.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, quantity, method, channel, channels, n_removed, rank,
        value, std, n_folds, source``.

    Examples
    --------
    >>> table = build_paper_table("pxpermute_reference")  # doctest: +SKIP
    """
    root = Path(reference_dir)
    rows: list[dict] = []
    for key, info in DATASETS.items():
        folder = root / info["folder"]
        names = info["channels"]

        src = f"{info['folder']}/performance_with_all_channels.csv"
        perf = pd.read_csv(root / src).dropna(subset=["f1_macro"])
        rows.append(
            _row(dataset=key, quantity="f1_macro_all_channels", method="ResNet18", value=perf.f1_macro.mean(),
                 std=perf.f1_macro.std(ddof=1), n_folds=len(perf), source=src)
        )

        src = f"{info['folder']}/channel_importance.csv"
        ci = pd.read_csv(root / src)
        ci = ci.drop_duplicates(subset=["fold", "channel"], keep="last")
        ci["channel"] = ci["channel"].map(lambda c, rename=info["rename"]: rename.get(c, c))
        unknown = set(ci["channel"]) - set(names)
        if unknown:
            raise ValueError(f"{src}: unexpected channel names {sorted(unknown)}")
        agg = ci.groupby("channel")["PXPermute"].agg(["mean", "std", "count"])
        agg = agg.reindex(names)
        order = agg["mean"].rank(ascending=False, method="first").astype(int)
        for ch in names:
            rows.append(
                _row(dataset=key, quantity="importance", method="PXPermute", channel=ch, rank=int(order[ch]),
                     value=agg.loc[ch, "mean"], std=agg.loc[ch, "std"], n_folds=int(agg.loc[ch, "count"]), source=src)
            )

        src = f"{info['folder']}/results_with_best_channels.csv"
        best = pd.read_csv(root / src)
        for method, grp in best.groupby("method", sort=True):
            rows.append(
                _row(dataset=key, quantity="best_channels_f1_macro", method=method, value=grp.f1_macro.mean(),
                     std=grp.f1_macro.std(ddof=1), n_folds=len(grp), source=src)
            )

        src = f"{info['folder']}/results_with_best_channels_remove_bad_channels_and_retrain.csv"
        rr = pd.read_csv(root / src)
        for (method, n_removed), grp in rr.groupby(["method", "num_channels"], sort=True):
            rows.append(
                _row(dataset=key, quantity="remove_and_retrain_f1_macro", method=method, n_removed=int(n_removed),
                     value=grp.f1_macro.mean(), std=grp.f1_macro.std(ddof=1), n_folds=len(grp), source=src)
            )
        for method, grp in rr.groupby("method", sort=True):
            per_step = grp.groupby("num_channels").f1_macro.mean()
            rows.append(
                _row(dataset=key, quantity="remove_and_retrain_mean_f1_macro", method=method, value=per_step.mean(),
                     n_folds=int(grp.fold_num.nunique()), source=src)
            )

        panel_file = folder / "results_with_stain_free_comparison.csv"
        if panel_file.exists():
            src = f"{info['folder']}/results_with_stain_free_comparison.csv"
            panels = pd.read_csv(panel_file)
            for method, grp in panels.groupby("method", sort=False):
                chans = {_mask_channels(r, names) for _, r in grp.iterrows()}
                if len(chans) != 1:
                    raise ValueError(f"{src}: panel {method} uses different channels across folds: {chans}")
                rows.append(
                    _row(dataset=key, quantity="panel_f1_macro", method=_PANEL_NAMES.get(method, method),
                         channels=chans.pop(), value=grp.f1_macro.mean(), std=grp.f1_macro.std(ddof=1),
                         n_folds=len(grp), source=src)
                )

        runtime = pd.read_csv(root / "run_time.csv")
        for method, grp in runtime.groupby("method", sort=True):
            col = grp[info["runtime_column"]]
            rows.append(
                _row(dataset=key, quantity="runtime_s", method=method, value=col.mean(), std=col.std(ddof=1),
                     n_folds=len(col), source="run_time.csv")
            )
    table = pd.DataFrame(rows, columns=_COLUMNS)
    for col in ("n_removed", "rank", "n_folds"):
        table[col] = table[col].astype("Int64")
    return table


def paper_table() -> pd.DataFrame:
    """The embedded table of published numbers (one tidy row per number).

    Examples
    --------
    >>> t = paper_table()
    >>> sorted(t.dataset.unique())
    ['apoptotic', 'synapse', 'wbc']
    """
    table = pd.read_csv(_TABLE_FILE, keep_default_na=True)
    for col in ("n_removed", "rank", "n_folds"):
        table[col] = table[col].astype("Int64")
    for col in ("method", "channel", "channels"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    return table


def _select(dataset: str, quantity: str) -> pd.DataFrame:
    _check_dataset(dataset)
    t = paper_table()
    return t[(t.dataset == dataset) & (t.quantity == quantity)]


def paper_f1_macro(dataset: str) -> dict[str, float]:
    """Published ResNet18 F1-macro with all channels: ``{"mean", "std", "n_folds"}``.

    Examples
    --------
    >>> round(paper_f1_macro("synapse")["mean"], 3)
    0.898
    """
    r = _select(dataset, "f1_macro_all_channels").iloc[0]
    return {"mean": float(r.value), "std": float(r["std"]), "n_folds": int(r.n_folds)}


def paper_importance(dataset: str) -> pd.Series:
    """Published mean PXPermute importance per channel, most important first.

    Examples
    --------
    >>> paper_importance("apoptotic").index[0]
    'FL'
    """
    sel = _select(dataset, "importance").sort_values("rank")
    return pd.Series(sel.value.to_numpy(float), index=list(sel.channel), name=f"{dataset} PXPermute importance")


def paper_top_channels(dataset: str, k: int | None = None, *, stained_only: bool = False) -> list[str]:
    """Channels ranked by published PXPermute importance (optionally only stained ones).

    Examples
    --------
    >>> paper_top_channels("synapse", 3)
    ['P-CD3zeta', 'CD3', 'MHCII']
    """
    ranked = list(paper_importance(dataset).index)
    if stained_only:
        ranked = [c for c in ranked if c not in DATASETS[dataset]["stain_free"]]
    if k is not None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ranked = ranked[:k]
    return ranked


def paper_remove_and_retrain(dataset: str, *, average: bool = False) -> pd.DataFrame | pd.Series:
    """Published remove-and-retrain F1-macro: ``method x n_removed`` (or the per-method average).

    Examples
    --------
    >>> paper_remove_and_retrain("synapse", average=True).idxmax()
    'PXPermute'
    """
    if average:
        sel = _select(dataset, "remove_and_retrain_mean_f1_macro")
        return pd.Series(sel.value.to_numpy(float), index=list(sel.method), name="mean F1-macro over removal steps")
    sel = _select(dataset, "remove_and_retrain_f1_macro")
    return sel.pivot(index="method", columns="n_removed", values="value")


def paper_best_channels(dataset: str) -> pd.DataFrame:
    """Published F1-macro after retraining on each method's best channels (mean, std per method)."""
    sel = _select(dataset, "best_channels_f1_macro")
    return sel.set_index("method")[["value", "std", "n_folds"]].rename(columns={"value": "f1_macro"})


def paper_panels(dataset: str) -> pd.DataFrame:
    """Published panel comparison (stain-free / + PXPermute top stains / all channels).

    Empty for the apoptotic data set, which was not part of that comparison.

    Examples
    --------
    >>> paper_panels("wbc").loc["stain-free + PXPermute", "channels"]
    'BF1|DF|BF2|CD4|CD56|CD8'
    """
    sel = _select(dataset, "panel_f1_macro")
    return sel.set_index("method")[["channels", "value", "std", "n_folds"]].rename(columns={"value": "f1_macro"})
