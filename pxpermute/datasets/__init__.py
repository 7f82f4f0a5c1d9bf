"""Data sets: the dataset object, the synthetic IFC generator and published-data loaders."""
from .base import GroundTruth, IFCDataset, resolve_channels

__all__ = ["IFCDataset", "GroundTruth", "resolve_channels"]
from .hdf5 import HDF5CellFiles, LazyHDF5Array, load_hdf5_dataset, pad_or_crop, write_hdf5_dataset  # noqa: E402
from .published import (  # noqa: E402
    DATASET_INFO,
    fetch_sample_cell,
    load_apoptotic,
    load_scifai_cells,
    load_synapse,
    load_wbc,
)
from . import paper_numbers  # noqa: E402

__all__ += ["LazyHDF5Array", "HDF5CellFiles", "load_hdf5_dataset", "write_hdf5_dataset", "pad_or_crop"]
__all__ += ["load_apoptotic", "load_synapse", "load_wbc", "load_scifai_cells", "fetch_sample_cell", "DATASET_INFO"]
__all__ += ["paper_numbers"]
