"""The package's layering (docs/method.md, "Layout"), checked on the imports
as written: numerical kernels import only kernels, the estimators import no
application module, and no module imports itself through others."""

from __future__ import annotations

import ast
from pathlib import Path

import moelearn

PACKAGE = Path(moelearn.__file__).parent

#: The numerical kernels: functions of arrays, no estimator state.
KERNELS = {
    "_arrays",
    "_em",
    "_em_batch",
    "_em_fast",
    "_gradients",
    "_inference",
    "_links",
    "_mmap",
    "_model",
    "_moments",
    "_optim",
    "_passes",
    "_predictive",
    "_scores",
    "_spectral",
    "_starts",
    "_tensor",
    "_tensor_loss",
    "_validation",
    "_docstrings",
    "exceptions",
}
#: The user-facing library: estimators and what they are measured with.
ESTIMATORS = {
    "_base",
    "baselines",
    "datasets",
    "estimators",
    "hierarchical",
    "metrics",
    "selection",
    "tensor_loss",
}
#: Everything else (files, reports, experiments, the command line) is an
#: application of the two layers below it.
APPLICATIONS = {"__init__", "__main__", "_demo", "cli", "experiments", "io", "report"}


def imports() -> dict[str, set[str]]:
    """Each module's imports of other moelearn modules (also inside functions);
    a subpackage (``io/``) is one module, its files' imports together."""
    found = {}
    modules = {path.stem: [path] for path in PACKAGE.glob("*.py")}
    for init in PACKAGE.glob("*/__init__.py"):
        modules[init.parent.name] = sorted(init.parent.glob("*.py"))
    for module, paths in modules.items():
        names = set()
        nodes = (n for path in paths for n in ast.walk(ast.parse(path.read_text())))
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "moelearn"
            ):
                parts = node.module.split(".")
                if len(parts) > 1:
                    names.add(parts[1])
                else:  # from moelearn import x
                    names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("moelearn.")
                )
        found[module] = names - {"__version__", module}
    return found


def test_every_module_has_a_layer():
    assert set(imports()) == KERNELS | ESTIMATORS | APPLICATIONS


def test_the_array_layer_is_the_bottom():
    """The array and memory-map layers import no other moelearn module, and a
    kernel of arrays alone (the links) does not import the pass engine."""
    found = imports()
    assert found["_arrays"] == set()
    assert found["_mmap"] == set()
    assert "_passes" not in found["_links"]


def test_kernels_import_only_kernels():
    wrong = {m: deps - KERNELS for m, deps in imports().items() if m in KERNELS}
    assert not any(wrong.values()), wrong


def test_estimators_import_no_application():
    wrong = {m: deps & APPLICATIONS for m, deps in imports().items() if m in ESTIMATORS}
    assert not any(wrong.values()), wrong


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            assert state.get(dep) != 1, " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
