"""Storage backends: stateless codecs between values and standard file formats.

=========  ==========================================  ==================
backend    values                                      file
=========  ==========================================  ==================
json       small JSON-able values                      inline in the DB
npy        numpy arrays and scalars (not object)       ``.npy``
nifti      nibabel Nifti1/Nifti2 images                ``.nii``/``.nii.gz``
hdf5       nested dicts/lists/tuples of arrays,        ``.h5``
           scalars and strings (PyTables)
container  lists/tuples/dicts holding nibabel images   ``.json`` manifest
           (one file per element, e.g. ``.nii``)
parquet    pandas DataFrame / Series (pyarrow)         ``.parquet``
netcdf     xarray Dataset / DataArray (h5netcdf)       ``.nc``
skops      scikit-learn estimators (skops)             ``.skops``
objects    user classes whose state is storable,       ``.h5``
           rebuilt without pickle
raw        files of unknown type, byte for byte        original suffix
pickle     anything else (refused with ``safe=True``)  ``.pkl``
=========  ==========================================  ==================

Importing this package is cheap: backends, and the format libraries they need
(PyTables, nibabel, pyarrow, xarray, skops), are imported on first use through
:data:`registry`. docs/formats.md describes every format and what opens it.
"""

from __future__ import annotations

from .base import Backend, BackendRegistry, registry

__all__ = ["Backend", "BackendRegistry", "registry"]
