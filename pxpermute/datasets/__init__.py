"""Data sets: the dataset object, the synthetic IFC generator and published-data loaders."""
from .base import GroundTruth, IFCDataset, as_dataset, resolve_channels
from .cellcycle import load_cellcycle, load_cellcycle_sample
from .reference import (
    load_reference_best_channels,
    load_reference_channel_importance,
    load_reference_k_ablation,
    load_reference_performance,
    load_reference_remove_and_retrain,
    load_reference_run_time,
    load_reference_stain_free,
)

__all__ = ["IFCDataset", "GroundTruth", "resolve_channels", "as_dataset"]
__all__ += ["load_cellcycle", "load_cellcycle_sample"]
__all__ += [
    "load_reference_channel_importance",
    "load_reference_performance",
    "load_reference_best_channels",
    "load_reference_remove_and_retrain",
    "load_reference_stain_free",
    "load_reference_k_ablation",
    "load_reference_run_time",
]
from . import paper_numbers  # noqa: E402
from .hdf5 import HDF5CellFiles, LazyHDF5Array, load_hdf5_dataset, pad_or_crop, write_hdf5_dataset  # noqa: E402
from .published import (  # noqa: E402
    DATASET_INFO,
    fetch_sample_cell,
    load_apoptotic,
    load_scifai_cells,
    load_synapse,
    load_wbc,
)

__all__ += ["LazyHDF5Array", "HDF5CellFiles", "load_hdf5_dataset", "write_hdf5_dataset", "pad_or_crop"]
__all__ += ["load_apoptotic", "load_synapse", "load_wbc", "load_scifai_cells", "fetch_sample_cell", "DATASET_INFO"]
__all__ += ["paper_numbers"]
from .synthetic import SYNTHETIC_PRESETS, expected_ranking, expected_relevance, make_synthetic  # noqa: E402

__all__ += ["make_synthetic", "SYNTHETIC_PRESETS", "expected_relevance", "expected_ranking"]
from .cif import CIFError, CIFFile, CIFImages, cif_to_hdf5, fetch_cif_example, load_cif  # noqa: E402

__all__ += ["CIFFile", "CIFImages", "CIFError", "load_cif", "cif_to_hdf5", "fetch_cif_example"]
