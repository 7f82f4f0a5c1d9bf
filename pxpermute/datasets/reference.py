"""The published PXPermute reference results, as tidy pandas tables.

Shetab Boushehri et al. (Cell Reports Methods 2024, doi:10.1016/j.crmeth.2024.100715)
released the numbers behind their figures in github.com/marrlab/pxpermute (MIT
licence, commit ``dc90af1d7216``): per data set (``apoptotic_cells``,
``synapse_formation``, ``white_blood_cells``) the per-fold channel importances of
PXPermute and four attribution baselines, the cross-validated performance with
all channels, with the best channels, after removing channels and retraining,
the stain-free panel comparison and the repeat-count (k) ablation; plus the run
times of training and PXPermute.  These loaders fetch the CSV files through the
package's pooch cache (pinned SHA-256, same rules as the data-set loaders:
``data_dir`` argument, ``PXPERMUTE_DATA_DIR``, then the user cache) and return
long-format ``DataFrame`` s that sit next to the package's own results in an
"ours vs paper" table.

Every loader takes ``dataset`` (a name, an alias such as ``"synapse"`` or
``"wbc"``, or ``None`` for all data sets that have the table) and returns one
row per observation with a ``dataset`` column.

Notes on the published files (kept as published, never altered silently):

* ``synapse_formation/channel_importance.csv`` holds fold 1 twice; the first
  block (PXPermute importances all around -0.9) looks like a failed run.  The
  ``run`` column numbers repeated blocks of a fold (0 = first);
  ``duplicate_folds="last"`` keeps the final block of each fold.
* ``results_with_best_channels.csv`` has no fold column; rows come in blocks of
  five per method and ``fold`` is their position in the block (1-5).
* The remove-and-retrain table's ``num_channels`` counts the channels
  *removed*; it appears here as ``n_removed``, next to ``n_channels`` kept.
* In the k-ablation files, ``values`` row ``i`` is channel ``i``'s importance
  and ``order`` lists channel indices from least to most important; ``rank``
  here is 1 for the most important channel.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._download import RemoteFile, fetch_file

__all__ = [
    "REFERENCE_DATASETS",
    "REFERENCE_REGISTRY",
    "REFERENCE_PROVENANCE",
    "fetch_reference_file",
    "load_reference_channel_importance",
    "load_reference_performance",
    "load_reference_best_channels",
    "load_reference_remove_and_retrain",
    "load_reference_stain_free",
    "load_reference_k_ablation",
    "load_reference_run_time",
]

REFERENCE_COMMIT = "dc90af1d721684d5f7540faeaae85763e085566c"
_URL_ROOT = f"https://github.com/marrlab/pxpermute/raw/{REFERENCE_COMMIT}"
_CACHE_ROOT = "pxpermute_reference"

#: Data set names as published (folder names of the repository).
REFERENCE_DATASETS: tuple[str, ...] = ("apoptotic_cells", "synapse_formation", "white_blood_cells")

_ALIASES = {
    "apoptotic": "apoptotic_cells",
    "apoptotic_cells": "apoptotic_cells",
    "apoptosis": "apoptotic_cells",
    "synapse": "synapse_formation",
    "synapse_formation": "synapse_formation",
    "white_blood_cells": "white_blood_cells",
    "white_blood_cell": "white_blood_cells",
    "wbc": "white_blood_cells",
}

REFERENCE_PROVENANCE: dict[str, str] = {
    "source": "github.com/marrlab/pxpermute",
    "url": "https://github.com/marrlab/pxpermute",
    "commit": REFERENCE_COMMIT,
    "licence": "MIT",
    "doi": "10.1016/j.crmeth.2024.100715",
    "citation": (
        "Shetab Boushehri S. et al. Optimizing IFC experiments with PXPermute. "
        "Cell Reports Methods 4, 100715 (2024)."
    ),
}

# repository path -> SHA-256 (byte-identical to the repository at REFERENCE_COMMIT)
_HASHES: dict[str, str] = {
    "run_time.csv": "079afbd3e3fb960487ee6dbaf45a33d28507f6cb10dad5072c20132a2ff89124",
    "sample_image/sample_image.h5": "6d68bb06828e91838a9c5d5c4dccf2017a323fc3f7bd0ba7d1f2b39d74139809",
    "apoptotic_cells/channel_importance.csv": "a113425ed71a9a999607bea08dd70581da8d9401491de62bef7806e45525b6e7",
    "apoptotic_cells/performance_with_all_channels.csv": "f195a969adf84146b8f22459fd741d3e5b8407e670dcec02ffe96828244bb2c1",
    "apoptotic_cells/results_with_best_channels.csv": "4f95739231ca57d1fb76fe81ded05f088398de2a8ea5ca716c841df25bd098b5",
    "apoptotic_cells/results_with_best_channels_remove_bad_channels_and_retrain.csv":
        "1c039e90a6ce4352e8c9b5e5182ee228ba52a24e88d9a0c58d1e15bdb66d886d",
    **{f"apoptotic_cells/shuffle_times_results_order{i}.csv":
       "3a80dd3076cb36bb026f20a56ca5e6c13b9cf201ff9706819a42adccda9a4f4f" for i in range(1, 6)},
    "apoptotic_cells/shuffle_times_results_values1.csv": "bb2886626630cdaf0d1ab7da87b6bd5ca4e4d64e294d4437f0f6a6ecff7bb99f",
    "apoptotic_cells/shuffle_times_results_values2.csv": "a706ed5f071d1e9113fe233554a99f8e7872fc14492b673e14663ddf98695e28",
    "apoptotic_cells/shuffle_times_results_values3.csv": "62618fe96225f37c44e9f9da36981a49b20eb7661b214653b4358c775ffd70a2",
    "apoptotic_cells/shuffle_times_results_values4.csv": "f1500e602690c51993762541dd3bace6e11937c27b0b0dc4a3d437e5ad1e26da",
    "apoptotic_cells/shuffle_times_results_values5.csv": "4eff9be0389547bb4c92180f544efbfeb191b04021aa98e3985e5e041a9b5e04",
    "synapse_formation/channel_importance.csv": "37cedb304dc50f9c729d6936feb60cd8fdc7b37e458323b6a8bac6e66625312f",
    "synapse_formation/performance_with_all_channels.csv": "0d43a8010c48987d18098cf467ee77b806209929ea0966123156cea091717a3c",
    "synapse_formation/results_with_best_channels.csv": "912431332d0879733c499fd8ff368ad1cb4686e4fbd28551533774339084cc85",
    "synapse_formation/results_with_best_channels_remove_bad_channels_and_retrain.csv":
        "d8a4644463a304f00e90e546f45f0ed178ac957aa24857fe1493f4a34f58a4df",
    "synapse_formation/results_with_stain_free_comparison.csv":
        "cd057fb2d8c84daf27e631e5340124dffb3aee8e47271065743052a9d61592f5",
    "synapse_formation/shuffle_times_results_order1.csv": "573e4efe26ead3d9835bd4ab95936de520bc488e2c045378cddb604a802fc99a",
    "synapse_formation/shuffle_times_results_order2.csv": "297c4170620a1b571e196c1168c0964bf2b5b12663b78cb1f48f5dc27f4a537d",
    "synapse_formation/shuffle_times_results_order3.csv": "9ba41b741f1afaa40d84ce27dc0c397bd7814133f8669338f9def9ccf1e1bd23",
    "synapse_formation/shuffle_times_results_order4.csv": "5203c18ec021ee7b2879f9f22480c1066d55088a8882c1bf4e36734481369676",
    "synapse_formation/shuffle_times_results_order5.csv": "889e7f5f40875b27aa6ea0944f3bbc0a1530cdb0f1caebab59c34f88a882d309",
    "synapse_formation/shuffle_times_results_values1.csv": "57ec64b1b1dcaf50147f52716e303943e0cd48a926c318e18a1cec0bcee3df23",
    "synapse_formation/shuffle_times_results_values2.csv": "944a5c12e20934517d0cab32bbd4b8cfe72d46d3bf5d9bfe0d1dc4a38ece3e15",
    "synapse_formation/shuffle_times_results_values3.csv": "5729b5ce82be2cd294c174ab408225242f4e3c0270e82bfb08c8c1f07b45fcf2",
    "synapse_formation/shuffle_times_results_values4.csv": "8d4d4f9f22d41dd5d642e1848ee2e1bc4fd6c4e0bf87d4965e91659d4c1bc055",
    "synapse_formation/shuffle_times_results_values5.csv": "4c0d523dbb5dc777339c5859af75b63b2c3e3d3cb4b3b2d79651d364bd2c3100",
    "white_blood_cells/channel_importance.csv": "cef9e3bb3fd126ce992f0624cc94490f330268d196f1aac56dddc4fa27c778c0",
    "white_blood_cells/performance_with_all_channels.csv": "5233d1e5a52c67a7ee685e39079367ef0dfc7235b19de3cf0fc878926c64733a",
    "white_blood_cells/results_with_best_channels.csv": "886dc9a98724e8283c4a2492d7191a64901850353fe0c65cd3ed54a1d3fdaf2f",
    "white_blood_cells/results_with_best_channels_remove_bad_channels_and_retrain.csv":
        "b8e318e0db715fd5b53890be922d073d815c567a1b6e847787ca99a42ce12941",
    "white_blood_cells/results_with_stain_free_comparison.csv":
        "1f51c564d609572ded668fe7d84169b05f6845c5d4f2b82e7a576ea34b595865",
    "white_blood_cells/shuffle_times_results_order1.csv": "8a8d72f9d7095000f5a4295d7602c71a17dd303775313890e07a5ff9d0f263b1",
    "white_blood_cells/shuffle_times_results_order2.csv": "b5dae6b7aa367f8c857529bf9ced48d683881e3c580d62f49237830a8cfe7aeb",
    "white_blood_cells/shuffle_times_results_values1.csv": "c2b4c7bd846918f0f44d23fe9c9849dd7db3f2b74601edc7263a950cadbe6ede",
    "white_blood_cells/shuffle_times_results_values2.csv": "331087a16117b393d19757214e0f6c464e2567c8e8ef9de411147b62c3d0bf97",
}


def _cache_relpath(repo_path: str) -> str:
    # the sample image sits at the top of the cache folder (as in the shared data folder)
    if repo_path == "sample_image/sample_image.h5":
        return f"{_CACHE_ROOT}/sample_image.h5"
    return f"{_CACHE_ROOT}/{repo_path}"


#: repository path -> RemoteFile (cached under ``pxpermute_reference/``).
REFERENCE_REGISTRY: dict[str, RemoteFile] = {
    path: RemoteFile(relpath=_cache_relpath(path), url=f"{_URL_ROOT}/{path}", sha256=digest)
    for path, digest in _HASHES.items()
}

_N_KFOLD_FILES = {"apoptotic_cells": 5, "synapse_formation": 5, "white_blood_cells": 2}
_HAS_STAIN_FREE = ("synapse_formation", "white_blood_cells")
_RUN_TIME_COLUMNS = {"apoptotic": "apoptotic_cells", "synapse": "synapse_formation", "white_blood_cell": "white_blood_cells"}
_METRICS = ["f1_micro", "f1_macro", "accuracy"]


# -- helpers ----------------------------------------------------------------------------------------
def fetch_reference_file(
    path: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Local path of one published reference file (downloaded and hash-checked if needed).

    Parameters
    ----------
    path : str
        Path inside the repository, e.g. ``"synapse_formation/channel_importance.csv"``,
        ``"run_time.csv"`` or ``"sample_image/sample_image.h5"`` (see ``REFERENCE_REGISTRY``).
    data_dir, download
        As for the data-set loaders.

    Examples
    --------
    >>> fetch_reference_file("run_time.csv", data_dir="../shared/data", download=False)  # doctest: +SKIP
    PosixPath('../shared/data/pxpermute_reference/run_time.csv')
    """
    if path not in REFERENCE_REGISTRY:
        raise ValueError(f"unknown reference file {path!r}; known files: {sorted(REFERENCE_REGISTRY)}")
    return fetch_file(REFERENCE_REGISTRY[path], data_dir=data_dir, download=download)


def _resolve_datasets(dataset: str | Sequence[str] | None, available: Iterable[str] = REFERENCE_DATASETS) -> list[str]:
    available = list(available)
    if dataset is None:
        return available
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    out = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"dataset must be a name (str) or a list of names, got {type(name).__name__}")
        key = _ALIASES.get(name.strip().lower().replace("-", "_").replace(" ", "_"))
        if key is None:
            raise ValueError(f"unknown reference data set {name!r}; expected one of {list(REFERENCE_DATASETS)} "
                             f"(aliases: {sorted(_ALIASES)})")
        if key not in available:
            raise ValueError(f"the published results have no such table for {key!r}; available for: {available}")
        out.append(key)
    return out


def _read(path: str, data_dir, download) -> pd.DataFrame:
    return pd.read_csv(fetch_reference_file(path, data_dir=data_dir, download=download))


def _channel_names(ds: str, data_dir, download) -> list[str]:
    """Channel names in channel-index order (the order of the first fold in channel_importance.csv)."""
    raw = _read(f"{ds}/channel_importance.csv", data_dir, download)
    first = raw["fold"].iloc[0]
    return raw.loc[raw["fold"] == first, "channel"].iloc[: raw["channel"].nunique()].astype(str).tolist()


def _mask_columns(frame: pd.DataFrame) -> list[str]:
    cols = [c for c in frame.columns if isinstance(c, str) and c.startswith("Ch") and c[2:].isdigit()]
    return sorted(cols, key=lambda c: int(c[2:]))


def _panel_columns(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    cols = _mask_columns(frame)
    if len(cols) != len(names):
        raise ValueError(f"expected {len(names)} channel mask columns, found {cols}")
    mask = frame[cols].to_numpy().astype(bool)
    return pd.DataFrame(
        {
            "n_channels": mask.sum(axis=1),
            "channels": [",".join(n for n, keep in zip(names, row) if keep) for row in mask],
        },
        index=frame.index,
    )


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


# -- public loaders -----------------------------------------------------------------------------------
def load_reference_channel_importance(
    dataset: str | Sequence[str] | None = None,
    *,
    methods: Sequence[str] | None = None,
    normalize: bool = False,
    duplicate_folds: str = "keep",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published per-fold channel importances of PXPermute and the attribution baselines.

    Parameters
    ----------
    dataset : str, list of str or None
        Data set name(s) or alias(es); ``None``: all three.
    methods : list of str, optional
        Keep only these methods (``"PXPermute"``, ``"DeepLift"``,
        ``"IntegratedGradients"``, ``"LRP"``, ``"GuidedGradCAM"``).
    normalize : bool, default False
        Min-max scale each method's values to [0, 1] over all returned rows of
        a data set, as the published results notebook does before plotting.
    duplicate_folds : {"keep", "first", "last"}
        What to do with a fold that appears in several blocks (synapse fold 1).
    data_dir, download
        Cache folder and whether to download missing files.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, fold, run, channel_index, channel, method, importance``.

    Examples
    --------
    >>> df = load_reference_channel_importance("synapse", methods=["PXPermute"])  # doctest: +SKIP
    >>> df.groupby("channel")["importance"].mean().sort_values()  # doctest: +SKIP
    """
    if duplicate_folds not in ("keep", "first", "last"):
        raise ValueError(f"duplicate_folds must be 'keep', 'first' or 'last', got {duplicate_folds!r}")
    frames = []
    for ds in _resolve_datasets(dataset):
        raw = _read(f"{ds}/channel_importance.csv", data_dir, download)
        names = _channel_names(ds, data_dir, download)
        n_ch = len(names)
        if len(raw) % n_ch:
            raise ValueError(f"{ds}/channel_importance.csv: {len(raw)} rows is not a multiple of {n_ch} channels")
        block = np.arange(len(raw)) // n_ch
        raw = raw.assign(_block=block, channel_index=np.tile(np.arange(n_ch), len(raw) // n_ch))
        if not (raw["channel"].astype(str).to_numpy() == np.asarray(names)[raw["channel_index"]]).all():
            raise ValueError(f"{ds}/channel_importance.csv: channels are not listed in the same order in every fold")
        first_block_of_fold = raw.groupby("_block")["fold"].first()
        run_of_block = first_block_of_fold.groupby(first_block_of_fold).cumcount()
        raw["run"] = raw["_block"].map(run_of_block)
        if duplicate_folds != "keep":
            n_runs = raw.groupby("fold")["run"].transform("max")
            raw = raw[raw["run"] == (0 if duplicate_folds == "first" else n_runs)]
        meth_cols = [c for c in raw.columns if c not in ("fold", "channel", "_block", "channel_index", "run")]
        if methods is not None:
            unknown = sorted(set(methods) - set(meth_cols))
            if unknown:
                raise ValueError(f"unknown method(s) {unknown} for {ds}; published methods: {meth_cols}")
            meth_cols = [m for m in meth_cols if m in set(methods)]
        long = raw.melt(
            id_vars=["fold", "run", "channel_index", "channel"], value_vars=meth_cols,
            var_name="method", value_name="importance",
        )
        if normalize:
            grp = long.groupby("method")["importance"]
            lo, hi = grp.transform("min"), grp.transform("max")
            long["importance"] = (long["importance"] - lo) / (hi - lo).where(hi > lo, 1.0)
        long.insert(0, "dataset", ds)
        frames.append(long[["dataset", "fold", "run", "channel_index", "channel", "method", "importance"]])
    return _finish(frames)


def load_reference_performance(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published cross-validated performance with all channels (one row per fold).

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, fold, f1_micro, f1_macro, accuracy`` (the empty
        placeholder row "fold 0" of the files is dropped).

    Examples
    --------
    >>> load_reference_performance("wbc")["f1_macro"].mean()  # doctest: +SKIP
    """
    frames = []
    for ds in _resolve_datasets(dataset):
        raw = _read(f"{ds}/performance_with_all_channels.csv", data_dir, download)
        raw = raw.dropna(subset=_METRICS, how="all")
        raw.insert(0, "dataset", ds)
        frames.append(raw[["dataset", "fold", *_METRICS]].astype({"fold": int}))
    return _finish(frames)


def load_reference_best_channels(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published performance of models retrained on each method's best channels.

    The file has no fold column: ``fold`` is the row's position (1-5) within
    its method's block.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, method, fold, f1_micro, f1_macro, accuracy``.

    Examples
    --------
    >>> load_reference_best_channels("apoptotic").groupby("method")["f1_macro"].mean()  # doctest: +SKIP
    """
    frames = []
    for ds in _resolve_datasets(dataset):
        raw = _read(f"{ds}/results_with_best_channels.csv", data_dir, download)
        raw = raw.drop(columns=[c for c in raw.columns if str(c).startswith("Unnamed")])
        raw["fold"] = raw.groupby("method").cumcount() + 1
        raw.insert(0, "dataset", ds)
        frames.append(raw[["dataset", "method", "fold", *_METRICS]])
    return _finish(frames)


def load_reference_remove_and_retrain(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published remove-and-retrain curves: channels removed in each method's order, model retrained.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, method, fold, n_removed, n_channels, channels,
        f1_micro, f1_macro, accuracy``; ``channels`` is the comma-separated
        list of channel names kept.

    Examples
    --------
    >>> df = load_reference_remove_and_retrain("synapse")  # doctest: +SKIP
    >>> df.groupby(["method", "n_removed"])["f1_macro"].mean().unstack(0)  # doctest: +SKIP
    """
    frames = []
    for ds in _resolve_datasets(dataset):
        raw = _read(f"{ds}/results_with_best_channels_remove_bad_channels_and_retrain.csv", data_dir, download)
        names = _channel_names(ds, data_dir, download)
        panel = _panel_columns(raw, names)
        out = pd.DataFrame(
            {
                "dataset": ds,
                "method": raw["method"],
                "fold": raw["fold_num"].astype(int),
                "n_removed": raw["num_channels"].astype(int),
                "n_channels": panel["n_channels"],
                "channels": panel["channels"],
            }
        )
        for m in _METRICS:
            out[m] = raw[m]
        frames.append(out)
    return _finish(frames)


def load_reference_stain_free(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published panel comparison: stain-free channels vs PXPermute's panel vs all channels.

    Only ``synapse_formation`` and ``white_blood_cells`` have this table.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, panel, fold, n_channels, channels, f1_micro,
        f1_macro, accuracy``; ``panel`` is ``"stainfree"``, ``"PXPermute"`` or
        ``"all_channels"`` as published.

    Examples
    --------
    >>> load_reference_stain_free("wbc").groupby("panel")["f1_macro"].mean()  # doctest: +SKIP
    """
    frames = []
    for ds in _resolve_datasets(dataset, _HAS_STAIN_FREE):
        raw = _read(f"{ds}/results_with_stain_free_comparison.csv", data_dir, download)
        names = _channel_names(ds, data_dir, download)
        panel = _panel_columns(raw, names)
        out = pd.DataFrame(
            {
                "dataset": ds,
                "panel": raw["method"],
                "fold": raw["fold_num"].astype(int),
                "n_channels": panel["n_channels"],
                "channels": panel["channels"],
            }
        )
        for m in _METRICS:
            out[m] = raw[m]
        frames.append(out)
    return _finish(frames)


def load_reference_k_ablation(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published PXPermute importances and rankings for k = 5 ... 1000 repeats, per fold.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, fold, k, channel_index, channel, importance, rank``
        (``rank`` 1 = most important, from the published order files).

    Examples
    --------
    >>> df = load_reference_k_ablation("synapse")  # doctest: +SKIP
    >>> df.pivot_table(index="k", columns="channel", values="rank", aggfunc="mean")  # doctest: +SKIP
    """
    frames = []
    for ds in _resolve_datasets(dataset):
        names = _channel_names(ds, data_dir, download)
        n_ch = len(names)
        for fold in range(1, _N_KFOLD_FILES[ds] + 1):
            values = _read(f"{ds}/shuffle_times_results_values{fold}.csv", data_dir, download)
            order = _read(f"{ds}/shuffle_times_results_order{fold}.csv", data_dir, download)
            values = values.set_index(values.columns[0])
            order = order.set_index(order.columns[0])
            if values.shape != (n_ch, values.shape[1]) or order.shape != values.shape:
                raise ValueError(f"{ds} fold {fold}: unexpected k-ablation table shapes {values.shape}, {order.shape}")
            for k in values.columns:
                perm = order[k].to_numpy().astype(int)  # least -> most important channel
                rank = np.empty(n_ch, int)
                rank[perm] = n_ch - np.arange(n_ch)
                frames.append(
                    pd.DataFrame(
                        {
                            "dataset": ds,
                            "fold": fold,
                            "k": int(k),
                            "channel_index": np.arange(n_ch),
                            "channel": names,
                            "importance": values[k].to_numpy(dtype=float),
                            "rank": rank,
                        }
                    )
                )
    return _finish(frames)


def load_reference_run_time(
    dataset: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> pd.DataFrame:
    """Published run times per fold (seconds, on the authors' GPU) of training and of PXPermute.

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, step, fold, seconds``; ``step`` is ``"train"`` or
        ``"pxpermute"``.

    Examples
    --------
    >>> load_reference_run_time().groupby(["dataset", "step"])["seconds"].mean()  # doctest: +SKIP
    """
    wanted = _resolve_datasets(dataset)
    raw = _read("run_time.csv", data_dir, download).rename(columns=_RUN_TIME_COLUMNS)
    long = raw.melt(id_vars=["method", "Fold"], value_vars=list(_RUN_TIME_COLUMNS.values()),
                    var_name="dataset", value_name="seconds")
    long = long.rename(columns={"method": "step", "Fold": "fold"})
    long = long[long["dataset"].isin(wanted)]
    long["dataset"] = pd.Categorical(long["dataset"], categories=wanted, ordered=True)
    long = long.sort_values("dataset", kind="stable")
    long["dataset"] = long["dataset"].astype(str)
    long["seconds"] = long["seconds"].astype(float)
    return long[["dataset", "step", "fold", "seconds"]].reset_index(drop=True)
