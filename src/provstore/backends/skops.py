"""Fitted scikit-learn estimators as ``.skops`` files, loaded without pickle.

scikit-learn and skops are optional dependencies (``pip install
"provstore[sklearn]"``), imported on first use only: provstore works where they
are not installed, and a store without estimators never pays for them.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from ..errors import BackendError, CorruptObjectError, UnsafeLoadError, UnsupportedTypeError
from . import objects
from .base import Backend

__all__ = ["SkopsBackend"]

INSTALL_HINT = 'the skops backend needs scikit-learn and skops: pip install "provstore[sklearn]"'


def _skops_io() -> Any:
    # Optional dependency, imported on first use (see the module docstring).
    try:
        import skops.io as sio
    except ImportError as exc:
        raise BackendError(INSTALL_HINT) from exc
    return sio


class SkopsBackend(Backend):
    """scikit-learn estimators (fitted or not, pipelines included) through skops.

    skops writes a zip of JSON and arrays that names every type it holds
    and loads without pickle. Loading checks those types first:

    - under ``safe=True``, types skops trusts by default (scikit-learn's
      estimators, numpy, scipy...) and classes passed to
      :func:`provstore.backends.objects.trust` load; any other type raises
      :class:`~provstore.errors.UnsafeLoadError` naming it;
    - under ``safe=False`` every type in the file is accepted (the store's
      owner trusts its content, as with pickle).

    ``skops.io.load(path, trusted=[...])`` opens the files anywhere.
    """

    name = "skops"
    suffixes = (".skops",)
    checks_trust = True

    def can_save(self, obj: Any) -> bool:
        """Return whether *obj* is a scikit-learn estimator."""
        # An object cannot be an estimator unless scikit-learn was imported:
        # checking first keeps provstore from importing it for every value.
        if "sklearn" not in sys.modules:
            return False
        from sklearn.base import BaseEstimator  # already imported (checked above)

        return isinstance(obj, BaseEstimator)

    def save(self, obj: Any, path: Path, **options: Any) -> dict[str, Any]:
        """Write *obj* to *path* with ``skops.io.dump``; return ``{"type"}``.

        Parameters
        ----------
        compress : bool, optional
            Deflate the zip's members.

        Raises
        ------
        UnsupportedTypeError
            If *obj* is not an estimator, or skops cannot serialize part of
            it (store it with ``format="pickle"`` then).
        """
        unknown = set(options) - {"compress"}
        if unknown:
            raise UnsupportedTypeError(f"the skops backend takes only 'compress', got {unknown}")
        if not self.can_save(obj):
            raise UnsupportedTypeError(
                f"the skops backend stores scikit-learn estimators, not a {type(obj).__qualname__}"
            )
        sio = _skops_io()
        compression = zipfile.ZIP_DEFLATED if options.get("compress") else zipfile.ZIP_STORED
        try:
            sio.dump(obj, str(path), compression=compression)
        except Exception as exc:
            # skops raises TypeError, NotImplementedError, AttributeError... for
            # parts it has no loader for; no file may be left behind.
            Path(path).unlink(missing_ok=True)
            raise UnsupportedTypeError(
                f"skops cannot store this {type(obj).__qualname__} ({exc!r}); store it with "
                "format='pickle' if you trust whoever will load it"
            ) from exc
        return {"type": objects.class_path(type(obj))}

    def load(self, path: Path, metadata: dict[str, Any], *, mmap_mode: str | None,
             safe: bool = True, **options: Any) -> Any:
        """Load the estimator at *path*, checking the types it names first.

        Raises
        ------
        UnsafeLoadError
            If *safe* and the file names types neither skops nor
            :func:`provstore.backends.objects.trust` trusts.
        CorruptObjectError
            If the file is missing or not a skops file.
        """
        if options:
            raise BackendError(f"the skops backend takes no load options, got {sorted(options)}")
        sio = _skops_io()
        untrusted = _untrusted_types(sio, Path(path))
        if safe:
            refused = [t for t in untrusted if not objects.is_trusted(_as_class_path(t))]
            if refused:
                raise UnsafeLoadError(
                    f"{Path(path).name} names types that are not trusted while the store is "
                    f"opened with safe=True: {', '.join(refused)}; call "
                    f"provstore.backends.objects.trust({_as_class_path(refused[0])!r}) for "
                    "each type you trust"
                )
        try:
            return sio.load(str(path), trusted=untrusted)
        except (ImportError, AttributeError) as exc:
            raise BackendError(f"{path} needs code this environment cannot import ({exc}); "
                               "install the package that defines the estimator") from exc
        except Exception as exc:
            # A damaged zip member or schema fails anywhere in skops' loaders.
            raise CorruptObjectError(f"{path} is not a readable skops file: {exc!r}") from exc

    def describe(self, obj: Any) -> dict[str, Any]:
        """Return ``{"type": "module:Class"}``."""
        return {"type": objects.class_path(type(obj))}


def _untrusted_types(sio: Any, path: Path) -> list[str]:
    try:
        return list(sio.get_untrusted_types(file=str(path)))
    except FileNotFoundError as exc:
        raise CorruptObjectError(f"{path} is missing") from exc
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, ValueError, TypeError,
            OSError, EOFError, RecursionError, UnicodeDecodeError, zipfile.LargeZipFile) as exc:
        raise CorruptObjectError(f"{path} is not a readable skops file: {exc!r}") from exc


def _as_class_path(type_name: str) -> str:
    """skops names types ``module.Class``; provstore's trust list says ``module:Class``."""
    module, _, name = type_name.rpartition(".")
    return f"{module}:{name}" if module else type_name
