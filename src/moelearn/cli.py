"""Command line: ``moelearn simulate | fit | predict | evaluate | summary | report
| demo | reproduce``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from moelearn import __version__
from moelearn._links import LINKS
from moelearn._passes import report_passes
from moelearn.io import (
    WRITTEN,
    atomic_path,
    load_model,
    model_data,
    model_features,
    read_features,
    read_truth,
    save_model,
    stream_table,
    truth_to_json,
    write_json,
    write_table,
    write_table_npz,
)

# The estimators (and scikit-learn) are imported when a command needs them, so
# that `moelearn --help` and argument errors answer at once.

FIT_METHODS = {
    "spectral": ("moelearn.estimators", "SpectralMoE"),
    "hme": ("moelearn.hierarchical", "HierarchicalMoE"),
    "tensor-loss": ("moelearn.tensor_loss", "TensorLossMoE"),
    "em": ("moelearn.baselines", "EMMoE"),
    "gd": ("moelearn.baselines", "GradientMoE"),
}


def _estimator(method: str):
    """The estimator class of ``--method``."""
    import importlib

    module, name = FIT_METHODS[method]
    return getattr(importlib.import_module(module), name)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _names_arg(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"expected column names separated by commas, got {text!r}"
        )
    return names


def _density_arg(text: str) -> str | int:
    if text in ("gaussian", "mixture"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 20:
        raise argparse.ArgumentTypeError(
            f"expected gaussian, mixture or a number of components from 1 to 20; "
            f"got {text!r}"
        )
    return value


def _experts_arg(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1 or (("e" in text.lower()) and float(text) != value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moelearn",
        description="Learn mixtures of experts with consistent spectral + EM methods.",
    )
    parser.add_argument(
        "--version", action="version", version=f"moelearn {__version__}"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of one line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_simulate_command(sub)
    _add_fit_command(sub)
    _add_predict_command(sub)
    _add_evaluate_command(sub)
    _add_summary_command(sub)
    _add_report_command(sub)
    _add_demo_command(sub)
    _add_reproduce_command(sub)
    return parser


def _add_size_arguments(parser, samples: int, rows: str, columns: str) -> None:
    """``--samples`` (``-n``, default ``samples``) and ``--features`` (``-d``,
    default 10) of a simulated table, described as ``rows`` and ``columns``."""
    parser.add_argument(
        "--samples",
        "--n-samples",
        "-n",
        type=_positive_int,
        default=samples,
        help=f"{rows} (default {samples})",
    )
    parser.add_argument(
        "--features",
        "--n-features",
        "-d",
        type=_positive_int,
        default=10,
        help=f"{columns} (default 10)",
    )


def _add_simulate_command(sub) -> None:
    """The ``simulate`` command's arguments."""
    sim = sub.add_parser("simulate", help="draw data from a random mixture of experts")
    _add_size_arguments(
        sim, 100_000, "rows to draw", "input columns, standard Gaussian"
    )
    sim.add_argument(
        "--experts",
        "--n-experts",
        "-k",
        type=_positive_int,
        default=2,
        help="experts, softmax gate (default 2)",
    )
    sim.add_argument(
        "--depth",
        type=_positive_int,
        default=None,
        help="draw a hierarchical MoE of this depth (2^depth experts) instead",
    )
    sim.add_argument(
        "--link",
        choices=sorted(LINKS),
        default="linear",
        help="the experts' link g (default linear)",
    )
    sim.add_argument(
        "--noise", type=_nonneg_float, default=0.1, help="noise std (default 0.1)"
    )
    sim.add_argument(
        "--seed", type=int, default=0, help="seeds the parameters and rows (default 0)"
    )
    sim.add_argument(
        "--out", required=True, help="data file: .csv, .npz, .npy or .parquet"
    )
    sim.add_argument(
        "--truth",
        help="where to write the true parameters (default: OUT with .truth.json)",
    )


def _add_fit_command(sub) -> None:
    """The ``fit`` command's arguments."""
    fit = sub.add_parser("fit", help="fit a model to a data file")
    fit.add_argument(
        "data", help="data file: .csv (with header), .npz, .npy or .parquet"
    )
    fit.add_argument(
        "--target", default="y", help="name of the target column (default y)"
    )
    fit.add_argument(
        "--experts",
        "-k",
        type=_experts_arg,
        default=None,
        help="number of experts (default 2), or 'auto' (BIC over "
        "1..--max-experts, spectral only)",
    )
    fit.add_argument(
        "--depth",
        type=_positive_int,
        default=2,
        help="--method hme: levels of gates, 2^depth experts (default 2)",
    )
    fit.add_argument(
        "--fit-intercept",
        action="store_true",
        help="also fit expert intercepts and gate biases (spectral, hme, em, gd)",
    )
    fit.add_argument(
        "--noise-type",
        choices=["shared", "per_expert"],
        default="shared",
        help="one noise level for all experts (default) or one per expert "
        "(spectral, hme, em, gd)",
    )
    fit.add_argument(
        "--input-density",
        type=_density_arg,
        default="gaussian",
        metavar="{gaussian,mixture,N}",
        help="whose Stein scores the spectral step uses: the inputs' Gaussian "
        "approximation (default), a Gaussian mixture fitted to them with its "
        "size chosen by BIC, or one of N components (spectral, hme); for inputs "
        "with clusters or skewed columns",
    )
    _add_fit_method_options(fit)
    _add_fit_io_options(fit)


def _add_fit_method_options(fit) -> None:
    """``fit``'s choice of method and its settings (the number of experts searched, iterations, tolerance, seed)."""
    fit.add_argument(
        "--max-experts",
        type=_positive_int,
        default=5,
        help="--experts auto: the largest number of experts tried (default 5)",
    )
    fit.add_argument(
        "--criterion",
        choices=["bic", "aic", "icl"],
        default="bic",
        help="--experts auto: what chooses the number of experts (default bic)",
    )
    fit.add_argument(
        "--method",
        choices=sorted(FIT_METHODS),
        default="spectral",
        help="spectral (Method 1, default), hme (Method 1 for a hierarchical "
        "MoE), tensor-loss (Method 2), em or gd (baselines from random starts)",
    )
    fit.add_argument(
        "--link",
        choices=sorted(LINKS),
        default="linear",
        help="the experts' link g (default linear)",
    )
    fit.add_argument("--noise-std", type=float, default=None, help="known noise std")
    fit.add_argument(
        "--no-refine", action="store_true", help="skip joint-EM refinement"
    )
    fit.add_argument(
        "--max-iter", type=int, default=None, help="iterations/epochs (method default)"
    )
    fit.add_argument(
        "--tol", type=float, default=None, help="tolerance (method default)"
    )
    fit.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the random starts and subsamples (default 0): the same seed "
        "gives the same fit",
    )


def _add_fit_io_options(fit) -> None:
    """``fit``'s output, progress and input options: the model file, progress, streaming, the weight and feature columns."""
    fit.add_argument("--out", required=True, help="model file to write (.json)")
    fit.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    fit.add_argument(
        "--stream",
        choices=("auto", "yes", "no"),
        default="auto",
        help="read the file in batches into a memory-mapped scratch file instead "
        "of loading it (auto: when the file is over a quarter of the free memory)",
    )
    fit.add_argument(
        "--scratch", default=None, help="folder for --stream's scratch file"
    )
    fit.add_argument(
        "--weight",
        default=None,
        metavar="COL",
        help="column of non-negative sample weights (methods spectral, hme, em)",
    )
    columns = fit.add_mutually_exclusive_group()
    columns.add_argument(
        "--features",
        type=_names_arg,
        default=None,
        metavar="A,B,...",
        help="the feature columns, comma-separated (default: every column but "
        "the target and the weight)",
    )
    columns.add_argument(
        "--exclude",
        type=_names_arg,
        default=None,
        metavar="A,B,...",
        help="columns that are not features (ids, other targets), comma-separated",
    )
    _add_drop_missing(fit)
    fit.add_argument(
        "--categorical",
        type=_names_arg,
        default=None,
        metavar="A,B,...",
        help="features that are categories (text, or numbers that are codes): "
        "each enters as one 0/1 column per level but the first (sorted), named "
        "column=level; predict reads the same columns and levels",
    )


def _add_predict_command(sub) -> None:
    """The ``predict`` command's arguments."""
    pred = sub.add_parser("predict", help="predict E[y|x] and gate probabilities")
    pred.add_argument("model", help="model .json written by 'moelearn fit'")
    pred.add_argument("data", help="data file with the model's feature columns")
    pred.add_argument(
        "--out", required=True, help="predictions file (.csv, .npz, .parquet)"
    )
    pred.add_argument(
        "--drop-missing",
        action="store_true",
        help="leave out the rows with a missing value (NaN, NA or empty) in a "
        "feature; a first column 'row' then says which data row (from 1) each "
        "prediction is of (default: such a value is an error)",
    )


def _add_evaluate_command(sub) -> None:
    """The ``evaluate`` command's arguments."""
    ev = sub.add_parser("evaluate", help="compare a model with the truth and/or data")
    ev.add_argument("model", help="model .json")
    ev.add_argument("--truth", help="true parameters (.truth.json from 'simulate')")
    ev.add_argument("--data", help="data file to score (mean log-likelihood, RMSE)")
    ev.add_argument("--target", default=None, help="target column of --data")
    _add_drop_missing(ev)
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")


def _model_data(model, args):
    """``(X, y)`` of ``args.data`` for ``model``, saying how many rows
    ``--drop-missing`` left out."""
    data = model_data(model, args.data, args.target, args.drop_missing)
    _say_dropped(args, data, len(data.y))
    return data.X, data.y


def _say_dropped(args, data, kept: int) -> None:
    if data.dropped:
        print(
            f"moelearn {args.command}: left out {data.dropped} of "
            f"{data.dropped + kept} rows with a missing value",
            file=sys.stderr,
        )


def _add_drop_missing(parser) -> None:
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="leave out the rows with a missing value (NaN, NA or empty) in a "
        "column used, and say how many (default: such a value is an error)",
    )


def _add_fitted_model_arguments(parser, kind_help: str) -> None:
    """A fitted model, the data it was fitted on, its target column and the kind
    of standard errors (``--kind``, described by ``kind_help``)."""
    parser.add_argument("model", help="model .json written by 'moelearn fit'")
    parser.add_argument("data", help="the data file the model was fitted on")
    parser.add_argument("--target", default=None, help="target column (default: y)")
    _add_drop_missing(parser)
    parser.add_argument(
        "--kind",
        choices=["observed", "sandwich", "bootstrap"],
        default="observed",
        help=kind_help,
    )


def _add_summary_command(sub) -> None:
    """The ``summary`` command's arguments."""
    summ = sub.add_parser(
        "summary",
        help="estimates, standard errors, z, p-values and confidence intervals",
    )
    _add_fitted_model_arguments(
        summ,
        "standard errors from the observed information (default), the sandwich "
        "(robust), or a bootstrap of EM refits",
    )
    summ.add_argument(
        "--coverage", type=float, default=0.95, help="interval coverage (0.95)"
    )
    summ.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=200,
        help="--kind bootstrap: resamples (200)",
    )
    summ.add_argument("--seed", type=int, default=0, help="bootstrap's seed")
    summ.add_argument("--out", default=None, help="also write the table (.csv)")


def _add_report_command(sub) -> None:
    """The ``report`` command's arguments."""
    rep_ = sub.add_parser(
        "report", help="one HTML page: parameters, standard errors, figures"
    )
    _add_fitted_model_arguments(rep_, "standard errors of the table (default observed)")
    rep_.add_argument("--out", required=True, help="the report (.html)")


def _add_demo_command(sub) -> None:
    """The ``demo`` command's arguments."""
    demo = sub.add_parser("demo", help="simulate, fit, report errors and write a plot")
    _add_size_arguments(demo, 200_000, "rows to simulate", "input columns")
    demo.add_argument(
        "--link",
        choices=sorted(LINKS),
        default="linear",
        help="the experts' link g (default linear)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument(
        "--out-dir",
        default="demo_output",
        help="folder for the plot and the simulated data (default demo_output)",
    )


def _add_reproduce_command(sub) -> None:
    """The ``reproduce`` command's arguments."""
    rep = sub.add_parser(
        "reproduce", help="re-run the papers' experiments: figures and CSV tables"
    )
    rep.add_argument("name", help="experiment: all, sample-size, hard-cases, l4-curves")
    rep.add_argument("--quick", action="store_true", help="fewer seeds and sizes")
    rep.add_argument(
        "--out-dir",
        default="results",
        help="folder for the experiments' CSV tables and PNG figures (default results)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and exit status 2
    (130 for an interrupt), never a traceback, unless ``--debug``."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("moelearn: interrupted; no output written", file=sys.stderr)
        return 130
    start = len(WRITTEN)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(args, WRITTEN[start:])
    except Exception as exc:  # the error boundary: one line per failure
        if _caused_by_interrupt(exc):
            return _interrupted(args, WRITTEN[start:])
        if args.debug:
            raise
        print(f"moelearn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _interrupted(args, written: list[str]) -> int:
    """One line for an interrupt: which outputs had been written in full
    (atomically), or that none was."""
    outcome = (
        f"{', '.join(written)} had been written in full"
        if written
        else "no output written"
    )
    print(f"moelearn {args.command}: interrupted; {outcome}", file=sys.stderr)
    return 130


def _caused_by_interrupt(exc: BaseException) -> bool:
    """An interrupt that a compiled kernel (numba) re-raised as another error."""
    seen = exc.__cause__ or exc.__context__
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; for errors that are not the
    library's own (file system, numerical, internal), what kind they are."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (CLIError, ValueError)):
        return text
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or text}{where}"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(exc, (np.linalg.LinAlgError, FloatingPointError, ArithmeticError)):
        return (
            f"numerical failure: {text} (standardise the columns, or fit fewer experts)"
        )
    if isinstance(exc, MemoryError):
        return "out of memory (try --stream yes, or fewer rows or columns)"
    return f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"


# ----------------------------------------------------------------- commands
def _truth_path(out: str, truth: str | None) -> Path:
    if truth:
        return Path(truth)
    p = Path(out)
    return p.with_name(p.stem + ".truth.json")


def cmd_simulate(args) -> int:
    _check_out_dir(args.out)
    if args.truth:
        _check_out_dir(args.truth)
    experts = args.experts if args.depth is None else 2**args.depth
    if experts > args.features:
        raise CLIError(f"{experts} experts exceed --features {args.features}")
    from moelearn.datasets import make_hme, make_moe

    if args.depth is not None:
        X, y, truth = make_hme(
            args.samples,
            args.features,
            args.depth,
            args.link,
            args.noise,
            random_state=args.seed,
        )
    else:
        X, y, truth = make_moe(
            args.samples,
            args.features,
            args.experts,
            args.link,
            args.noise,
            random_state=args.seed,
        )
    columns = {f"x{i}": X[:, i] for i in range(X.shape[1])} | {"y": y}
    out = Path(args.out)
    if out.suffix.lower() == ".npz":
        write_table_npz(out, X, y)
    else:
        write_table(out, columns)
    truth_path = _truth_path(args.out, args.truth)
    write_json(truth_path, truth_to_json(truth))
    print(
        f"wrote {out} ({args.samples} rows, {args.features} features) and {truth_path}"
    )
    return 0


def _check_out_dir(out: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a
    folder, a missing folder, a file used as a folder, a folder without write
    permission (probed by creating and removing a file there)."""
    path = Path(out)
    if path.is_dir():
        raise CLIError(f"{out}: is a folder; give a file name")
    parent = path.parent
    for above in [parent, *parent.parents]:
        if above.exists() and not above.is_dir():
            raise CLIError(f"{out}: {above} is a file, not a folder")
    if not parent.is_dir():
        raise CLIError(f"{out}: the folder {parent} does not exist")
    _probe_writable(parent, out)


def _probe_writable(folder: Path, what: str) -> None:
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".moelearn-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CLIError(
            f"{what}: cannot write in the folder {folder} ({reason})"
        ) from None


def _check_out_folder(folder: str) -> None:
    """Like :func:`_check_out_dir` for an output folder (created if missing)."""
    path = Path(folder)
    for above in [path, *path.parents]:
        if above.exists() and not above.is_dir():
            raise CLIError(f"{folder}: {above} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CLIError(f"{folder}: cannot create the folder ({reason})") from None
    _probe_writable(path, folder)


def cmd_fit(args) -> int:
    _check_out_dir(args.out)
    hme = args.method == "hme"
    if hme and args.experts not in (None, 2**args.depth):
        raise CLIError(
            f"--method hme fits 2^depth = {2**args.depth} experts; drop --experts "
            "or change --depth"
        )
    if args.experts is None:
        args.experts = 2**args.depth if hme else 2
    if args.weight is not None:
        if args.method not in ("spectral", "hme", "em"):
            raise CLIError("--weight applies to --method spectral, hme and em")
        if args.experts == "auto":
            raise CLIError("--weight cannot be combined with --experts auto yet")
        if args.weight == args.target:
            raise CLIError(f"--weight {args.weight!r} is the target column")
    if _should_stream(args):
        with stream_table(
            args.data,
            args.target,
            args.scratch,
            _stream_progress(args.quiet),
            weight=args.weight,
            features=args.features,
            exclude=args.exclude,
            categorical=args.categorical,
            drop_missing=args.drop_missing,
        ) as data:
            _say_dropped(args, data, len(data.y))
            return _fit_data(args, data, hme)
    data = read_features(
        args.data,
        args.target,
        args.weight,
        args.features,
        args.exclude,
        args.categorical,
        args.drop_missing,
    )
    _say_dropped(args, data, len(data.y))
    return _fit_data(args, data, hme)


def _fit_data(args, data, hme: bool) -> int:
    X, y, w, names = data.X, data.y, data.sample_weight, data.names
    categories = data.categories
    settings = {
        ("depth" if hme else "n_experts"): args.depth if hme else args.experts,
        "link": args.link,
        "noise_std": args.noise_std,
        "random_state": args.seed,
        "verbose": 0 if args.quiet else 2,
    }
    if args.max_iter is not None:
        settings["max_iter"] = args.max_iter
    if args.tol is not None:
        settings["tol"] = args.tol
    if args.method in ("spectral", "hme"):
        settings["refine"] = not args.no_refine
    elif args.no_refine:
        raise CLIError("--no-refine applies to --method spectral and hme only")
    if args.method in ("spectral", "hme", "em", "gd"):
        settings["fit_intercept"] = args.fit_intercept
        settings["noise_type"] = args.noise_type
    elif args.fit_intercept or args.noise_type != "shared":
        option = "--fit-intercept" if args.fit_intercept else "--noise-type"
        raise CLIError(f"{option} applies to --method spectral, hme, em and gd only")
    if args.method in ("spectral", "hme"):
        settings["input_density"] = args.input_density
    elif args.input_density != "gaussian":
        raise CLIError("--input-density applies to --method spectral and hme only")
    if args.experts == "auto":
        if args.method != "spectral":
            raise CLIError("--experts auto needs --method spectral")
        return _fit_auto(args, X, y, names, settings, categories)
    return _fit_one(args, X, y, w, names, settings, categories)


def _should_stream(args) -> bool:
    if args.stream != "auto":
        return args.stream == "yes"
    try:
        size = Path(args.data).stat().st_size
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return False
    return size > free / 4


def _stream_progress(quiet: bool):
    if quiet:
        return None
    state = {"last": 0.0}

    def show(done: int, total: int | None) -> None:
        now = time.perf_counter()
        if now - state["last"] < 0.5 and (total is None or done < total):
            return
        state["last"] = now
        share = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"\rreading: {done:,} rows{share}", end="", file=sys.stderr, flush=True)
        if total is not None and done >= total:
            print(file=sys.stderr)

    return show


def _pass_bar(quiet: bool):
    """A progress line for each pass over the rows that takes over a second (on a
    terminal); quick passes stay silent."""
    if quiet or not sys.stderr.isatty():
        return None
    state = {"pass": 0, "start": 0.0, "last": 0.0, "shown": False}

    def show(number: int, done: int, total: int) -> None:
        now = time.perf_counter()
        if number != state["pass"]:
            state.update({"pass": number, "start": now, "last": 0.0, "shown": False})
        finished = done >= total
        if now - state["start"] < 1.0 and not state["shown"]:
            return
        if not finished and now - state["last"] < 0.25:
            return
        filled = int(30 * done / total)
        bar = "#" * filled + "." * (30 - filled)
        line = (
            f"\rpass {number:3d} [{bar}] {100 * done / total:3.0f}% of {total:,} rows"
        )
        if finished:
            line += f" ({now - state['start']:.1f} s)\n"
        print(line, end="", file=sys.stderr, flush=True)
        state.update({"last": now, "shown": True})

    return show


def _fit_one(args, X, y, w, names, settings, categories: dict) -> int:
    model = _estimator(args.method)(**settings)
    model._input_names = names  # (messages name the file's columns)
    weights = {} if w is None else {"sample_weight": w}
    start = time.perf_counter()
    bar = _pass_bar(args.quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with report_passes(bar) if bar else contextlib.nullcontext():
            model.fit(X, y, **weights)
    for warning in caught:
        print(f"moelearn fit: warning: {warning.message}", file=sys.stderr)
    save_model(model, args.out, **_model_metadata(args, names, categories))
    if not args.quiet:
        print(
            f"fitted {args.experts} {args.link} experts to {X.shape[0]} rows in "
            f"{time.perf_counter() - start:.1f} s; noise_std={_numbers(model.noise_std_)}; "
            f"mean log-likelihood {model.score(X, y, w):.4f}"
            f"{' (weighted)' if w is not None else ''}; wrote {args.out}"
        )
    return 0


def _model_metadata(args, names: list[str], categories: dict) -> dict:
    """What a model file says of the data beside the fit: the feature and
    target columns, and the categorical columns' levels."""
    found = {"feature_names": names, "target": args.target}
    return {**found, "categories": categories} if categories else found


def _numbers(value) -> str:
    """A number, or a list of numbers, to 4 significant digits."""
    if np.ndim(value):
        return "[" + ", ".join(f"{v:.4g}" for v in np.asarray(value)) + "]"
    return f"{value:.4g}"


def _fit_auto(args, X, y, names, settings, categories: dict) -> int:
    from moelearn._moments import SingularColumnsError
    from moelearn.selection import select_n_experts

    settings = {k: v for k, v in settings.items() if k not in ("n_experts", "verbose")}
    link, seed = settings.pop("link"), settings.pop("random_state")
    start = time.perf_counter()
    try:
        choice = select_n_experts(
            X,
            y,
            max_experts=args.max_experts,
            link=link,
            random_state=seed,
            criterion=args.criterion,
            **settings,
        )
    except SingularColumnsError as exc:
        raise exc.named(names) from None
    name = args.criterion.upper()
    if not args.quiet:
        print(
            "experts  log-likelihood           AIC           BIC           ICL",
            file=sys.stderr,
        )
        for k in sorted(choice.bic):
            mark = f"  <- lowest {name}" if k == choice.n_experts else ""
            print(
                f"{k:7d}  {choice.log_likelihood[k]:14.2f}  {choice.aic[k]:12.2f}  "
                f"{choice.bic[k]:12.2f}  {choice.icl[k]:12.2f}{mark}",
                file=sys.stderr,
            )
        gap = choice.eigengap_n_experts
        print(
            f"T2's eigen-gap points to {gap} experts"
            if gap is not None
            else "T2's eigen-gap: none to read (fewer than two eigenvalues)",
            file=sys.stderr,
        )
    if choice.n_experts == 1:
        raise CLIError(
            f"{name} prefers a single expert: the data show no mixture; nothing "
            "written (pass --experts K to fit K experts anyway)"
        )
    model = choice.models[choice.n_experts]
    save_model(model, args.out, **_model_metadata(args, names, categories))
    if not args.quiet:
        print(
            f"chose {choice.n_experts} experts in {time.perf_counter() - start:.1f} s; "
            f"wrote {args.out}"
        )
    return 0


def cmd_predict(args) -> int:
    _check_out_dir(args.out)
    model = load_model(args.model)
    data = model_features(model, args.data, args.drop_missing)
    X = data.X
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        mean = model.predict(X)
        gates = model.predict_proba(X)
    columns = {"prediction": mean} | {
        f"gate_{j}": gates[:, j] for j in range(gates.shape[1])
    }
    if args.drop_missing:  # (which rows the predictions are of)
        columns = {"row": np.asarray(data.rows) + 1.0} | columns
        _say_dropped(args, data, len(X))
    write_table(args.out, columns)
    print(f"wrote {args.out} ({X.shape[0]} rows)")
    return 0


def cmd_evaluate(args) -> int:
    if args.truth is None and args.data is None:
        raise CLIError("give --truth, --data or both")
    model = load_model(args.model)
    truth = read_truth(args.truth) if args.truth else None
    X = y = None
    if args.data:
        X, y = _model_data(model, args)
    from moelearn.metrics import evaluate_model

    figures = evaluate_model(model, truth, X, y)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:28s} {value:.6g}")
    return 0


def cmd_summary(args) -> int:
    if args.out is not None:
        if not args.out.endswith(".csv"):
            raise CLIError(f"--out {args.out}: the table is written as .csv")
        _check_out_dir(args.out)
    if not 0.0 < args.coverage < 1.0:
        raise CLIError(f"--coverage must be between 0 and 1; got {args.coverage}")
    model = load_model(args.model)
    X, y = _model_data(model, args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature")
        try:
            result = model.summary(
                X,
                y,
                kind=args.kind,
                coverage=args.coverage,
                n_bootstrap=args.bootstrap,
                random_state=args.seed,
            )
        except np.linalg.LinAlgError as exc:
            raise CLIError(str(exc)) from None
    import pandas as pd

    frame = pd.DataFrame(result)
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if args.out is not None:
        with atomic_path(Path(args.out)) as tmp:
            frame.to_csv(tmp, index=False)
        print(f"wrote {args.out} ({len(frame)} rows)", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    if not args.out.endswith((".html", ".htm")):
        raise CLIError(f"--out {args.out}: the report is written as .html")
    _check_out_dir(args.out)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(
            "the report's figures need matplotlib: pip install 'moelearn[plot]'"
        ) from None
    from moelearn.report import write_report

    model = load_model(args.model)
    X, y = _model_data(model, args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature")
        write_report(model, X, y, args.out, kind=args.kind)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_reproduce(args) -> int:
    from moelearn.experiments import reproduce

    _check_out_folder(args.out_dir)
    reproduce(
        args.name,
        Path(args.out_dir),
        args.quick,
        log=lambda msg: print(f"[moelearn] {msg}", file=sys.stderr, flush=True),
    )
    return 0


def cmd_demo(args) -> int:
    from moelearn._demo import run_demo

    _check_out_folder(args.out_dir)
    return run_demo(
        args.samples, args.features, args.link, args.seed, Path(args.out_dir)
    )


COMMANDS = {
    "simulate": cmd_simulate,
    "fit": cmd_fit,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "summary": cmd_summary,
    "report": cmd_report,
    "demo": cmd_demo,
    "reproduce": cmd_reproduce,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
