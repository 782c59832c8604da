"""The package's layers import only downward, and every module imports on its own (no import cycle).

The order (README, "Project layout"): foundations -> the paper (no I/O) -> the speed layer ->
data and run folders -> training -> what users run. Each module may import only modules listed
before it (its own subpackage aside).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"

#: The layers, bottom up; within a layer too, a module imports only those listed before it.
LAYERS = [
    ("foundations", ["errors", "registry", "user_code", "config", "config_files"]),
    ("the paper", ["image_nets", "nets", "distributions", "kl", "preprocessing", "likelihoods", "guides", "model",
                   "objectives", "kl_weighting", "evaluation", "paired"]),
    ("speed", ["speed"]),
    ("data and runs", ["image_data", "data", "schedules", "build", "checkpoint", "plots", "loggers", "latent", "run",
                       "training", "distributed"]),
    ("what users run", ["comparison", "cli"]),
]  # fmt: skip
ORDER = [name for _, names in LAYERS for name in names]


def modules():
    """``(name, path)`` of every module of the package: top-level modules and subpackages."""
    found = []
    for path in sorted(PACKAGE.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            found.append((path.stem, path))
        elif path.is_dir() and (path / "__init__.py").exists():
            found.append((path.name, path))
    return found


def imported_modules(name, path):
    """The package's top-level modules that module ``name`` imports, anywhere in its code (also inside functions)."""
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    imported = set()
    for file in files:
        depth_of_file = len(file.relative_to(PACKAGE).parts) - 1  # 0 for pyro_vae/x.py, 1 for pyro_vae/speed/x.py
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    parts = (node.module or "").split(".")
                    if parts[0] == "pyro_vae" and len(parts) > 1:
                        imported.add(parts[1])
                    elif parts[0] == "pyro_vae":
                        imported.update(alias.name for alias in node.names)
                    continue
                if node.level - 1 != depth_of_file:
                    continue  # within the module's own subpackage
                if node.module:
                    imported.add(node.module.split(".")[0])
                else:
                    imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "pyro_vae" and len(parts) > 1:
                        imported.add(parts[1])
    imported.discard(name)
    return imported


def test_every_module_has_a_place_in_the_layers():
    names = [name for name, _ in modules()]
    assert sorted(set(names) - set(ORDER)) == [], "add new modules to LAYERS in tests/test_layers.py and the README"


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_imports_go_only_downward(name, path):
    rank = ORDER.index(name)
    upward = sorted(m for m in imported_modules(name, path) if m in ORDER and ORDER.index(m) > rank)
    assert upward == [], f"{name} imports {upward}, which come after it in the layer order"


def test_training_and_run_folder_modules_do_not_import_each_other_both_ways():
    # the cycle this order removed: run.py and training.py imported each other inside functions
    assert "training" not in imported_modules("run", PACKAGE / "run.py")
    assert "training" not in imported_modules("build", PACKAGE / "build.py")


@pytest.mark.slow
def test_each_module_imports_alone_in_a_fresh_interpreter():
    """Import every module by itself, without the package's ``__init__`` (which imports them all), in
    fresh interpreters: a cycle shows as an ImportError of a partially initialized module."""
    script = (
        "import importlib, sys, types\n"
        "pkg = types.ModuleType('pyro_vae'); pkg.__path__ = [sys.argv[1]]; pkg.__version__ = '0'\n"
        "sys.modules['pyro_vae'] = pkg\n"
        "importlib.import_module('pyro_vae.' + sys.argv[2])\n"
    )
    procs = {
        name: subprocess.Popen([sys.executable, "-c", script, str(PACKAGE), name], stderr=subprocess.PIPE, text=True)
        for name, _ in modules()
    }
    failures = {name: p.communicate()[1].strip().splitlines()[-1:] for name, p in procs.items()}
    failures = {name: err for name, p in procs.items() if p.returncode != 0 for err in [failures[name]]}
    assert failures == {}
