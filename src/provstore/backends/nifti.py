"""nibabel NIfTI-1/NIfTI-2 images as ``.nii`` / ``.nii.gz`` files."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BackendError, CorruptObjectError, ProvstoreError, UnsupportedTypeError
from . import limits
from .base import Backend

__all__ = ["NiftiBackend"]

_OPTIONS = frozenset({"compress"})
_MMAP = {None: False, "r": "r", "c": "c"}


class NiftiBackend(Backend):
    """Single-file NIfTI images (``Nifti1Image``, ``Nifti2Image``) through nibabel.

    The header (data dtype, qform/sform and their codes, zooms, units,
    intent, description, extensions) and the affine are written by nibabel
    exactly as ``img.to_filename`` would, so FSL, AFNI, ANTs and nibabel read
    the files. ``compress=True`` writes ``.nii.gz``.

    Loading returns a nibabel image whose data stays on disk behind its lazy
    array proxy (O(1) whatever the size). With ``mmap_mode="r"`` the proxy
    maps uncompressed files read-only, so ``np.asanyarray(img.dataobj)``
    cannot be written to; ``mmap_mode=None`` reads without memory maps.
    Compressed files are never memory-mapped (gzip does not allow it).

    A file shorter than its header announces raises
    :class:`~provstore.errors.CorruptObjectError` at load; for ``.nii.gz``
    files written by this backend the gzip trailer's recorded length is
    checked as well (``metadata["gzip_isize"]``), which costs O(1).

    Hostile headers are refused before anything is allocated: declared data
    beyond :data:`provstore.backends.limits.MAX_DATA_BYTES`, or more than a
    ``.nii.gz`` can expand to (:data:`~provstore.backends.limits.MAX_EXPANSION`).
    Errors met later, when the lazy proxy reads damaged compressed data, are
    raised as :class:`~provstore.errors.CorruptObjectError` naming the file.
    """

    name = "nifti"
    suffixes = (".nii", ".nii.gz")
    supports_mmap = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a nibabel ``Nifti1Image`` or ``Nifti2Image``."""
        # An object cannot be a nibabel image unless nibabel was imported:
        # checking first keeps `provstore` from importing nibabel for every value.
        if "nibabel" not in sys.modules:
            return False
        import nibabel as nib

        return isinstance(obj, nib.Nifti1Image)  # Nifti2Image derives from it

    def suffix_for(self, obj: Any, options: dict[str, Any]) -> str:
        """Return ``".nii.gz"`` when ``options["compress"]`` is true, else ``".nii"``."""
        return ".nii.gz" if options.get("compress") else ".nii"

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path*; gzip-compressed when *path* ends with ``.nii.gz``.

        Parameters
        ----------
        obj : nibabel.Nifti1Image or nibabel.Nifti2Image
            The image. Its ``file_map`` is left pointing where it was.
        path : Path
            Target, with the suffix from :meth:`suffix_for`.
        compress : bool, optional
            Only selects the suffix (:meth:`suffix_for`); nibabel compresses
            according to the suffix of *path*.

        Returns
        -------
        dict
            ``{"class", "dtype", "shape"}`` and, for ``.nii.gz``, ``"gzip_isize"``.
        """
        unknown = set(options) - _OPTIONS
        if unknown:
            raise UnsupportedTypeError(f"the nifti backend takes only 'compress', got {unknown}")
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the nifti backend stores nibabel Nifti1Image/Nifti2Image, "
                f"not a {type(obj).__qualname__}"
            )
        previous = obj.file_map
        try:
            # to_filename() would repoint the caller's image at our temporary
            # path, which the store renames away: write through a fresh file map.
            obj.to_file_map(obj.filespec_to_file_map(str(path)))
        except (OSError, ValueError, TypeError) as exc:
            raise BackendError(f"nibabel failed to write {path.name}: {exc}") from exc
        finally:
            obj.file_map = previous
        metadata: dict[str, Any] = {
            "class": type(obj).__name__,
            "dtype": str(obj.get_data_dtype()),
            "shape": list(obj.shape),
        }
        if str(path).endswith(".gz"):
            metadata["gzip_isize"] = _gzip_isize(path)
        return metadata

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             **options: Any) -> Any:
        """Open the image at *path* with a lazy data proxy.

        Raises
        ------
        CorruptObjectError
            If the file is missing, not NIfTI, or shorter than its header says.
        """
        import nibabel as nib
        from nibabel.filebasedimages import ImageFileError
        from nibabel.spatialimages import HeaderDataError

        if mmap_mode not in _MMAP:
            raise BackendError(f"mmap_mode must be 'r', 'c' or None, not {mmap_mode!r}")
        try:
            img = nib.load(path, mmap=_MMAP[mmap_mode])
            _check_size(Path(path), img, metadata)
        except ProvstoreError:
            raise
        except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError,
                zlib.error, struct.error, OverflowError) as exc:
            raise CorruptObjectError(f"{path} is not a readable NIfTI file: {exc}") from exc
        _guard(img)
        return img

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type", "dtype", "shape", "zooms"}``."""
        return {
            "type": type(obj).__name__,
            "dtype": str(obj.get_data_dtype()),
            "shape": list(obj.shape),
            "zooms": [float(z) for z in obj.header.get_zooms()],
        }


def _gzip_isize(path: Path) -> int:
    # The last 4 bytes of a gzip member are its uncompressed length mod 2**32.
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _check_size(path: Path, img: Any, metadata: dict[str, Any]) -> None:
    """Raise ValueError if *path* cannot hold the data its header announces.

    Uncompressed files are checked against offset + data size. A gzip stream
    cannot be sized without inflating it all, so a ``.nii.gz`` is checked
    only when this backend wrote it: the gzip trailer must still read as the
    length recorded at save time (truncation moves the trailer). Files from
    elsewhere may hold several gzip members, whose trailer proves nothing.
    """
    proxy = img.dataobj
    if not hasattr(proxy, "offset"):
        return  # not file-backed (never the case right after nib.load)
    declared = limits.declared_bytes(proxy.shape, proxy.dtype.itemsize)
    size = path.stat().st_size
    if str(path).endswith(".gz"):
        # Before anything is inflated: no more than the compressed bytes can hold.
        limits.check_declared(path, declared, what="image data", compressed_size=size)
        recorded = metadata.get("gzip_isize")
        if recorded is not None and _gzip_isize(path) != recorded:
            raise ValueError("gzip stream truncated or altered (trailer length changed)")
        return
    needed = int(proxy.offset) + declared
    if size < needed:
        raise ValueError(f"file has {size} bytes, its header needs {needed:,}")
    limits.check_declared(path, declared, what="image data")


# ----------------------------------------------------------------------------- lazy proxy
_DATA_ERRORS = (OSError, EOFError, zlib.error, struct.error)
_guarded: dict[str, type] = {}


@contextmanager
def _translated(file_like: Any) -> Iterator[None]:
    """Turn a decoder failure while reading image data into CorruptObjectError."""
    try:
        yield
    except _DATA_ERRORS as exc:
        # gzip.BadGzipFile (a CRC or header error), EOFError (a truncated
        # stream), zlib.error (a damaged block), OSError (fewer bytes than
        # the header declares): the file is damaged, whatever the reader.
        raise CorruptObjectError(
            f"{file_like} is damaged: reading its image data failed ({exc!r}); "
            "restore the file from its source"
        ) from exc


def _guarded_proxy_class() -> type:
    """nibabel's ArrayProxy, translating read errors (created on first use)."""
    if "ArrayProxy" in _guarded:
        return _guarded["ArrayProxy"]
    from nibabel.arrayproxy import ArrayProxy  # nibabel is imported lazily here (see can_save)

    class GuardedArrayProxy(ArrayProxy):
        """An ArrayProxy whose reads raise CorruptObjectError for damaged files."""

        # nibabel ships py.typed but leaves ArrayProxy's methods unannotated,
        # hence the no-untyped-call ignores on the super() calls below.
        __slots__ = ()

        def __array__(self, dtype: Any = None) -> Any:
            with _translated(self.file_like):
                return super().__array__(dtype)  # type: ignore[no-untyped-call]

        def __getitem__(self, slicer: Any) -> Any:
            with _translated(self.file_like):
                return super().__getitem__(slicer)  # type: ignore[no-untyped-call]

        def get_unscaled(self) -> Any:
            with _translated(self.file_like):
                return super().get_unscaled()  # type: ignore[no-untyped-call]

    # Importable as provstore.backends.nifti.GuardedArrayProxy, so loaded images pickle.
    GuardedArrayProxy.__module__ = __name__
    GuardedArrayProxy.__qualname__ = "GuardedArrayProxy"
    return _guarded.setdefault("ArrayProxy", GuardedArrayProxy)


def _guard(img: Any) -> None:
    from nibabel.arrayproxy import ArrayProxy  # already imported by nib.load

    proxy = img.dataobj
    if type(proxy) is ArrayProxy:
        proxy.__class__ = _guarded_proxy_class()


def __getattr__(name: str) -> Any:
    # Unpickling a loaded image looks the proxy class up here.
    if name == "GuardedArrayProxy":
        return _guarded_proxy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
