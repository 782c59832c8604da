"""Sphinx configuration of the pyro-vae documentation (``make docs`` builds it with warnings as errors)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document this checkout's pyro_vae, whatever else is installed
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

import pyro_vae  # noqa: E402

project = "pyro-vae"
author = "the pyro-vae developers"
copyright = "the pyro-vae developers; Apache-2.0"
version = release = pyro_vae.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and Jupyter notebooks (it brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "pysource",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_static", "_inventories", "Thumbs.db", ".DS_Store", "**/README.md", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]

# MyST: $...$ and $$...$$ math, ::: fences, definition lists, anchors for ## headings
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks (docs/tutorials/*.ipynb) are rendered with the outputs they were saved with: a docs build
# never runs them (CI executes them at a smoke budget: tests/test_docs.py).
nb_execution_mode = "off"

# Links into the documentation of Python, Pyro, PyTorch and NumPy. An inventory is read from
# docs/_inventories/NAME.inv when that file exists (for builds without network: save
# URL/objects.inv there), else fetched from URL when it can be reached; when neither, that project's
# names stay plain text, so an offline `make docs` (warnings are errors) still builds.
INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "pyro": "https://docs.pyro.ai/en/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "numpy": "https://numpy.org/doc/stable/",
}


def _intersphinx_mapping(inventories, folder=os.path.join(os.path.dirname(__file__), "_inventories")):
    """``intersphinx_mapping`` for the ``inventories`` that are saved in ``folder`` or reachable now."""
    import urllib.request

    mapping = {}
    for name, url in inventories.items():
        saved = os.path.join(folder, f"{name}.inv")
        if os.path.exists(saved):
            mapping[name] = (url, saved)
            continue
        try:
            with urllib.request.urlopen(url + "objects.inv", timeout=5):
                mapping[name] = (url, None)
        except (OSError, ValueError):
            print(f"intersphinx: no {name} inventory (offline, none in {folder}); its names stay plain text")
    return mapping


intersphinx_mapping = _intersphinx_mapping(INVENTORIES)
intersphinx_timeout = 10

# API reference: one page per module of pyro_vae, generated at build time (reference/_api/, not in git)
autosummary_generate = True
# generated anew by each build: pages of modules that moved or were renamed must not linger there
import shutil  # noqa: E402

shutil.rmtree(os.path.join(os.path.dirname(__file__), "reference", "_api"), ignore_errors=True)
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # e.g. not torch.nn.Module.forward's generic docstring
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"pyro-vae {release}"
html_theme_options = {
    "description": "Auto-Encoding Variational Bayes as a Pyro library and command line",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
pygments_style = "sphinx"
smartquotes = False  # keep "--flag" as typed in help texts (not an en dash)


def _public_by_module():
    """``{module: [names]}`` of the classes and functions that ``pyro_vae`` re-exports.

    They are documented once, on the ``pyro_vae`` page (with their module path as the canonical
    name), and left out of their module's page, so that every name has one target.
    """
    import importlib
    import inspect
    import pkgutil

    public = {}
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            public.setdefault(obj.__module__, []).append(name)
    # a subpackage that re-exports them in its __all__ (pyro_vae.speed) leaves them out too
    for info in pkgutil.iter_modules(pyro_vae.__path__, "pyro_vae."):
        if info.ispkg:
            package = importlib.import_module(info.name)
            for name in getattr(package, "__all__", []):
                obj = getattr(package, name)
                if getattr(pyro_vae, name, None) is obj:
                    public.setdefault(info.name, []).append(name)
    return public


autosummary_context = {"public": _public_by_module()}
