"""The package's layout rules (docs/architecture.md): no import cycles, and every import
goes down the layers, never back up.

Layers, from the bottom: the shared base (``canonical``, ``checks``, ``limits``,
``topk``); the two backends (``cpu/``, ``gpu/``: neither imports the other, and the GPU
backend never imports numba); the database modes (``database/``) and clustering
(``clustering/``: k-reciprocal Jaccard distance, DBSCAN pseudo-labels); the public API
(``rerank``); evaluation (``evaluation/``); the adapters (``integrations/``); the
application (``app/``), which nothing in the library imports. ``reference`` (the dense
oracles) imports nothing of the package: it shares no code with what it checks.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "triton_rerank"
ADAPTERS = ROOT / "integrations"

# layer -> the layers it may import (besides itself)
MAY_IMPORT = {
    "reference": set(),
    "base": set(),
    "cpu": {"base"},
    "gpu": {"base"},
    "database": {"base", "cpu"},
    # Ray is imported lazily inside it, so importing the package never needs Ray
    "distributed": {"base", "cpu", "database"},
    "clustering": {"base", "cpu", "gpu", "api"},
    "api": {"base", "cpu", "gpu"},
    "evaluation": {"base", "cpu", "api"},
    "integrations": {"base", "cpu", "database", "api", "evaluation"},
    "app": {
        "base",
        "cpu",
        "gpu",
        "database",
        "clustering",
        "api",
        "evaluation",
        "integrations",
        "reference",
    },
    "entry": {"app"},
}
# (importer, imported): the only imports against the layers, each for a stated reason
EXCEPTIONS = {
    # CPU tensors are normalised by the numba kernel when numba is installed (lazy import)
    ("triton_rerank.canonical", "triton_rerank.cpu.kernels.unit_rows"),
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"  # the package's __init__: lazy names only (checked below)
    top = parts[1]
    return {
        "canonical": "base",
        "checks": "base",
        "limits": "base",
        "topk": "base",
        "reference": "reference",
        "rerank": "api",
        "__main__": "entry",
    }.get(top, top)


def module_files() -> dict[str, Path]:
    """Module name -> file, for the package and the adapters (installed as
    ``triton_rerank.integrations``)."""
    files = {}
    for base, prefix in (
        (PACKAGE, ["triton_rerank"]),
        (ADAPTERS, ["triton_rerank", "integrations"]),
    ):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(prefix + parts)] = path
    return files


MODULES = module_files()


def imports_of(module: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported module, lazy)`` for every import of the package in ``path``; lazy means
    inside a function."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(
                    (alias.name, inner)
                    for alias in child.names
                    if alias.name.startswith("triton_rerank")
                )
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if not source.startswith("triton_rerank"):
                    continue
                for alias in child.names:
                    candidate = f"{source}.{alias.name}"
                    found.append((candidate if candidate in MODULES else source, inner))
            visit(child, inner)

    visit(tree, False)
    return [(name, lazy) for name, lazy in found if name in MODULES and name != module]


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, imports in GRAPH.items():
        layer = layer_of(module)
        for target, _ in imports:
            target_layer = layer_of(target)
            if layer == "facade" or target_layer == "facade" or target_layer == layer:
                continue
            if target_layer not in MAY_IMPORT[layer] and (module, target) not in EXCEPTIONS:
                wrong.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_package_root_imports_nothing_eagerly():
    """``import triton_rerank`` stays cheap: its public names are loaded on first use."""
    assert [t for t, lazy in GRAPH["triton_rerank"] if not lazy] == []


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import (lazy ones included)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH.get(v, []):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            connect(module)
    assert not cycles, cycles


def test_every_package_is_installed():
    """pyproject lists the packages explicitly (the adapters' folder is mapped into the
    package): a new subpackage must be added there, or the wheel would miss it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert listed == packages


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_gpu_backend_imports_without_numba():
    gpu_modules = sorted(m for m in MODULES if layer_of(m) == "gpu")
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import importlib\n"
        f"for name in {gpu_modules + ['triton_rerank.rerank']!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'numba' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_integrations_import_from_a_plain_checkout(tmp_path):
    """``PYTHONPATH=<checkout>`` without any install: ``triton_rerank.integrations``
    resolves to the checkout's top-level folder (the finder in ``__init__``)."""
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path"
        " if '__editable__' not in getattr(f, '__module__', '')]\n"
        "sys.path_hooks = [h for h in sys.path_hooks"
        " if '__editable__' not in getattr(h, '__module__', '')]\n"
        "sys.path_importer_cache.clear()\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import triton_rerank.integrations.torchreid as adapter\n"
        "import triton_rerank\n"
        "print(triton_rerank.__file__); print(adapter.__file__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    package_file, adapter_file = proc.stdout.split()
    assert Path(package_file) == PACKAGE / "__init__.py"
    assert Path(adapter_file) == ADAPTERS / "torchreid.py"
