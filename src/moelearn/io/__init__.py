"""Files in and out: data tables read (only the columns used; text, missing
values and categories handled by name), large files streamed, results written
atomically, and fitted models as JSON (no pickle).

* :mod:`moelearn.io._tables`: a file's columns as a numeric :class:`Table`.
* :mod:`moelearn.io._features`: a table as a fit's inputs (:class:`Features`):
  target, weight and features by name, categories, missing values.
* :mod:`moelearn.io._stream`: the same from a file larger than memory.
* :mod:`moelearn.io._files`: outputs, models and true parameters written and read.
"""

from moelearn.io._features import (
    Features,
    category_levels,
    encode_categories,
    feature_columns,
    model_data,
    model_features,
    read_features,
)
from moelearn.io._files import (
    FORMAT,
    FORMAT_VERSION,
    WRITTEN,
    atomic_path,
    load_model,
    read_truth,
    save_model,
    truth_to_json,
    write_json,
    write_table,
    write_table_npz,
)
from moelearn.io._stream import stream_table
from moelearn.io._tables import MISSING, SUFFIXES, Table, check_finite, read_table

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MISSING",
    "SUFFIXES",
    "WRITTEN",
    "Features",
    "Table",
    "atomic_path",
    "category_levels",
    "check_finite",
    "encode_categories",
    "feature_columns",
    "load_model",
    "model_data",
    "model_features",
    "read_features",
    "read_table",
    "read_truth",
    "save_model",
    "stream_table",
    "truth_to_json",
    "write_json",
    "write_table",
    "write_table_npz",
]
