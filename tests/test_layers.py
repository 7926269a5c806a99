"""The layout the product card draws and the one direction of imports: cli -> app -> viz -> backend.

Imports are read from the source with ``ast`` (those inside functions too), so a lazy upward import
fails here as surely as one at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"netatlas.backend": "backend", "netatlas.viz": "viz", "netatlas.app": "app", "netatlas": "netatlas"}
RANK = {"netatlas.backend": 0, "netatlas.viz": 1, "netatlas.app": 2, "netatlas": 3}   # lower may not import higher
UI_LIBRARIES = {"panel", "bokeh", "holoviews", "hvplot", "datashader"}


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to (the longest matching package)."""
    for package in sorted(RANK, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    raise ValueError(module)


def source_modules() -> dict[str, Path]:
    """Every module of the package, by the dotted name it installs under."""
    modules = {}
    for package, folder in FOLDERS.items():
        root = REPO / folder
        files = root.rglob("*.py") if package != "netatlas" else root.glob("*.py")
        for path in files:
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names of what ``path`` imports, relative imports resolved against ``module``."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
    return names


MODULES = source_modules()


def test_layers_live_at_the_top_level() -> None:
    for folder in ("app", "backend", "viz", "assets", "tests"):
        assert (REPO / folder).is_dir(), folder
    assert (REPO / "launch.py").is_file() and (REPO / "pyproject.toml").is_file()
    assert not any((REPO / "netatlas" / name).exists() for name in ("app", "backend", "viz"))
    assert any(m.startswith("netatlas.backend.") for m in MODULES) and "netatlas.app.page" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = RANK[layer_of(module)]
    if module == "netatlas":   # the package root: the error type, and the notebook API on first use
        assert imported_names(MODULES[module], module) <= {"netatlas.backend.errors", "netatlas", "typing"}
        return
    upward = sorted(name for name in imported_names(MODULES[module], module)
                    if name.split(".")[0] == "netatlas" and name != "netatlas" and RANK[layer_of(name)] > own)
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) == "netatlas.backend"))
def test_backend_imports_no_ui_library(module: str) -> None:
    ui = sorted(n for n in imported_names(MODULES[module], module) if n.split(".")[0] in UI_LIBRARIES)
    assert not ui, f"{module} imports {ui}: the backend serves the CLI and notebooks without a UI"


def test_no_module_imports_the_layer_folders_by_their_folder_names() -> None:
    """``import backend`` would load a second copy of the module beside ``netatlas.backend``."""
    for module, path in MODULES.items():
        bare = {n for n in imported_names(path, module) if n.split(".")[0] in {"app", "backend", "viz"}}
        assert not bare, f"{module} imports {bare}"


def test_pyproject_installs_every_package_folder() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = config["package-dir"]
    assert {k: v for k, v in folders.items()} == FOLDERS
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert set(config["packages"]) == packages


def test_importing_the_cli_and_the_package_root_loads_no_ui_and_no_torch() -> None:
    """``netatlas --help`` stays quick: the CLI's parser and the shared arguments import no heavy library."""
    code = ("import sys, netatlas, netatlas.cli; netatlas.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'panel', 'bokeh', 'holoviews') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
