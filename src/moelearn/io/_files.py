"""What the command line writes: outputs put in place atomically, tables, and
fitted models and true parameters as JSON (no pickle)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moelearn.io._tables import _suffix

Array = np.ndarray


FORMAT = "moelearn-model"


FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    An exception (or Ctrl-C) inside the block removes the temporary file, so no
    half-written output is ever left at ``path``.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent or "."
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
        WRITTEN.append(str(path))
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


#: Every path :func:`atomic_path` has put in place in this process, in order (the
#: command line says which were written when a run is interrupted).
WRITTEN: list[str] = []


def write_table(path: str | os.PathLike, columns: dict[str, Array]) -> None:
    """Write equal-length 1-D columns to CSV, .npz or Parquet, atomically."""
    path = Path(path)
    suffix = _suffix(path)
    names = list(columns)
    data = np.column_stack([np.asarray(columns[k], dtype=float) for k in names])
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            np.savetxt(
                tmp,
                data,
                delimiter=",",
                header=",".join(names),
                comments="",
                fmt="%.17g",
            )
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                arrays: dict[str, Any] = {k: data[:, i] for i, k in enumerate(names)}
                np.savez(fh, **arrays)
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(
                    f"{path}: writing Parquet needs pyarrow: pip install 'moelearn[parquet]'"
                ) from None
            pq.write_table(pa.table({k: data[:, i] for i, k in enumerate(names)}), tmp)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------- models
def save_model(model: Any, path: str | os.PathLike, **metadata: Any) -> None:
    """Write a fitted estimator's parameters and settings as JSON (atomically):
    the format tag, the estimator's own fields (its ``_to_json``) and
    ``metadata``."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    obj = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "estimator": type(model).__name__,
        **model._to_json(),
        **metadata,
    }
    write_json(path, obj)


def load_model(path: str | os.PathLike):
    """Read a model written by :func:`save_model` (any moelearn estimator).

    Checks every field's type and shape.
    """
    from moelearn.baselines import EMMoE, GradientMoE
    from moelearn.estimators import SpectralMoE
    from moelearn.hierarchical import HierarchicalMoE
    from moelearn.tensor_loss import TensorLossMoE

    classes = {
        cls.__name__: cls
        for cls in (SpectralMoE, HierarchicalMoE, EMMoE, GradientMoE, TensorLossMoE)
    }
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such model file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a moelearn model file ({exc})") from None
    except RecursionError:
        raise ValueError(
            f"{path}: not a moelearn model file (nested too deeply to read)"
        ) from None
    try:
        _check_header(obj, path, classes)
        return classes[obj["estimator"]]._from_json(obj, path)
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        # a field of the wrong kind that the checks below did not foresee
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(
            f"{path}: not a valid moelearn model file (a field has the wrong "
            f"type: {reason})"
        ) from None


def _check_header(obj, path: Path, classes: dict) -> None:
    """The format tag, its version and a known estimator."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not a moelearn model file (missing format tag)")
    if obj.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model format version {obj.get('version')!r} is not supported"
        )
    if obj.get("estimator") not in classes:
        raise ValueError(f"{path}: unknown estimator {obj.get('estimator')!r}")


def truth_to_json(truth: dict) -> dict:
    """The true parameters of :func:`moelearn.make_moe` or ``make_hme`` as a
    truth file's fields."""
    return {
        "experts": np.asarray(truth["experts"]).tolist(),
        "gating": np.asarray(truth["gating"]).tolist(),
        "noise_std": float(truth["noise_std"]),
        "link": truth["link"],
        "gate": truth.get("gate", "softmax"),
    }


def read_truth(path: str) -> dict:
    """The true parameters of a truth file written by ``moelearn simulate``
    (:func:`truth_to_json`); ``ValueError`` naming the file otherwise."""
    try:
        truth = json.loads(Path(path).read_text())
        experts = np.asarray(truth["experts"], dtype=float)
        gating = np.asarray(truth["gating"], dtype=float) if "gating" in truth else None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a truth file with 'experts' and 'gating' ({exc})"
        ) from None
    return {
        "experts": experts,
        "gating": gating,
        "gate": truth.get("gate", "softmax"),
        "noise_std": truth.get("noise_std"),
    }


def write_table_npz(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    """``X`` and ``y`` as one ``.npz`` file (arrays ``X`` and ``y``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, X=X, y=y)
