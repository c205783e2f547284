"""Medical volumes: the NIfTI adapter (``data.format: nifti``), case splits and the embedded synthetic volumes.

- :mod:`geocl.data.medical.files`: the folder layout, case discovery, header checks, NIfTI writing;
- :mod:`geocl.data.medical.nifti`: MONAI preprocessing,
  :class:`NiftiSliceDataset` (2D slices, the batch contract of tiles) and
  :class:`NiftiVolumeDataset` (3D patches drawn toward the foreground);
- :mod:`geocl.data.medical.split`: train/val/test and labelled/unlabelled splits by case;
- :mod:`geocl.data.medical.synthetic`: ``geocl make-volumes``.

:func:`open_slice_dataset` is what pretraining calls for a recipe's ``data`` section.
Names are imported on first use (nibabel, MONAI and torch are heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Case": "geocl.data.medical.files",
    "NiftiSliceDataset": "geocl.data.medical.nifti",
    "NiftiVolumeDataset": "geocl.data.medical.nifti",
    "Preprocessing": "geocl.data.medical.nifti",
    "find_cases": "geocl.data.medical.files",
    "load_case": "geocl.data.medical.nifti",
    "median_spacing": "geocl.data.medical.files",
    "write_nifti": "geocl.data.medical.files",
    "CaseSplits": "geocl.data.medical.split",
    "labelled_subset": "geocl.data.medical.split",
    "split_cases": "geocl.data.medical.split",
    "make_volumes": "geocl.data.medical.synthetic",
    "open_slice_dataset": "geocl.data.medical.nifti",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
