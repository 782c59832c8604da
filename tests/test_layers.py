"""The package's layers import only downward, and every module imports on its own (no import cycle).

The order (README, "Project layout"): the foundations at the top of the package -> ``vae/`` (the paper, no
I/O) -> ``speed/`` -> ``data/`` -> ``train/`` -> ``runs/`` -> ``analysis/`` -> the CLI. Each module may import
only modules listed before it: a folder imports only the folders before it, and inside a folder a module imports
only the modules listed before it in that folder.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"

#: The layers, bottom up: a folder of the package (or ``""`` for modules at its top) and its modules in order.
LAYERS = [
    ("", ["errors", "resources", "registry", "user_code", "config", "config_files", "checkpoint", "moved"]),
    ("vae", ["image_nets", "nets", "distributions", "kl", "preprocessing", "likelihoods", "guides", "priors", "model", "labels",
             "objectives", "kl_weighting", "evaluation"]),
    ("speed", ["loss", "reference", "optim", "fast_ops", "capture", "cuda_graph", "precision", "fused", "step", "ddp", "__init__"]),
    ("data", ["images", "dataset", "sources", "files", "load"]),
    ("train", ["schedules", "build", "loggers", "trainer", "progress", "labelled", "distributed"]),
    ("runs", ["plots", "latent", "folder", "run", "launch", "fit", "export"]),
    ("analysis", ["paired", "compare"]),
    ("", ["cli", "__main__"]),
]  # fmt: skip
ORDER = [f"{folder}.{name}" if folder else name for folder, names in LAYERS for name in names]
FOLDERS = [folder for folder, _ in LAYERS if folder]


def dotted(path):
    """``pyro_vae/vae/model.py`` -> ``'vae.model'``; a folder's ``__init__.py`` -> ``'speed.__init__'``."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def modules():
    """``(dotted name, path)`` of every module of the package but its top ``__init__`` (which imports them all)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py" or "__pycache__" in path.parts:
            continue
        if path.name == "__init__.py" and path.parent.name not in ("speed",):
            continue  # the folders' __init__ files are docstrings only (checked below)
        found.append((dotted(path), path))
    return found


def imported_modules(path):
    """The package's modules (dotted names as in ``ORDER``) that the file imports, anywhere in its code."""
    own = list(path.relative_to(PACKAGE).parent.parts)
    imported = set()

    def add(parts):
        name = ".".join(p for p in parts if p)
        while name and name not in ORDER and f"{name}.__init__" not in ORDER:
            name = name.rpartition(".")[0]  # pyro_vae.speed.step.X -> speed.step
        if name:
            imported.add(name if name in ORDER else f"{name}.__init__")

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "pyro_vae":
                    continue
                base = parts[1:]
            else:
                base = own[: len(own) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(base + [alias.name])
                add((base + [alias.name]) if (candidate in ORDER or f"{candidate}.__init__" in ORDER) else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pyro_vae":
                    add(parts[1:])
    imported.discard(dotted(path))
    return imported


def test_every_module_has_a_place_in_the_layers():
    names = [name for name, _ in modules()]
    assert sorted(set(names) - set(ORDER)) == [], "add new modules to LAYERS in tests/test_layers.py and the README"
    assert sorted(set(ORDER) - set(names)) == [], "a module in LAYERS no longer exists"


def test_every_folder_of_the_package_is_a_layer():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(FOLDERS)


@pytest.mark.parametrize("folder", [f for f in FOLDERS if f != "speed"])
def test_folder_init_files_import_nothing_of_the_package(folder):
    # importing pyro_vae.runs must not drag the folder's modules in (the layers stay importable alone)
    tree = ast.parse((PACKAGE / folder / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_imports_go_only_downward(name, path):
    rank = ORDER.index(name)
    upward = sorted(m for m in imported_modules(path) if ORDER.index(m) > rank)
    assert upward == [], f"{name} imports {upward}, which come after it in the layer order"


def test_the_run_folder_does_not_import_the_training_loop_both_ways():
    # the cycle this order removed: run.py and training.py imported each other inside functions
    assert "runs.fit" not in imported_modules(PACKAGE / "runs" / "run.py")
    assert "runs.fit" not in imported_modules(PACKAGE / "train" / "build.py")


def test_the_paper_folder_does_no_io():
    # vae/ is the mathematics: no files, no folders, no pictures
    for path in (PACKAGE / "vae").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not roots & {"pathlib", "shutil", "json", "matplotlib", "PIL", "tqdm"}, path.name


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
    names = [name.removesuffix(".__init__") for name, _ in modules()]
    procs = {
        name: subprocess.Popen([sys.executable, "-c", script, str(PACKAGE), name], stderr=subprocess.PIPE, text=True)
        for name in names
    }
    failures = {name: p.communicate()[1].strip().splitlines()[-1:] for name, p in procs.items()}
    failures = {name: err for name, p in procs.items() if p.returncode != 0 for err in [failures[name]]}
    assert failures == {}


@pytest.mark.parametrize("old", sorted(__import__("pyro_vae.moved").moved.MOVED))
def test_the_old_module_paths_are_the_moved_modules(old):
    import importlib

    from pyro_vae.moved import MOVED

    module = importlib.import_module(f"pyro_vae.{old}")
    assert module is importlib.import_module(f"pyro_vae.{MOVED[old]}")
    assert module.__spec__.name == f"pyro_vae.{MOVED[old]}"  # its own spec: relative imports still resolve
