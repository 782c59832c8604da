"""The module paths of pyro-vae before its modules moved into layer folders (issue 21), kept importable.

Scripts written against the flat layout (``from pyro_vae.image_data import load_image_folder``,
``import pyro_vae.loggers``) keep working: each old path is an alias of the module that now holds its code
(the same module object, so ``monkeypatch.setattr(pyro_vae.loggers, ...)`` still reaches the code that runs).
New code imports from ``pyro_vae`` itself or from the new paths, which the README's layout table lists.
"""

import importlib
import importlib.abc
import importlib.util
import sys

#: old module (``pyro_vae.<name>``) -> the module that holds its code now
MOVED = {
    "image_nets": "vae.image_nets", "nets": "vae.nets", "distributions": "vae.distributions", "kl": "vae.kl",
    "preprocessing": "vae.preprocessing", "likelihoods": "vae.likelihoods", "guides": "vae.guides",
    "model": "vae.model", "objectives": "vae.objectives", "kl_weighting": "vae.kl_weighting",
    "evaluation": "vae.evaluation", "paired": "analysis.paired", "comparison": "analysis.compare",
    "image_data": "data.images", "schedules": "train.schedules", "build": "train.build", "loggers": "train.loggers",
    "training": "runs.fit", "distributed": "runs.launch", "plots": "runs.plots", "latent": "runs.latent",
    "run": "runs.run",
}  # fmt: skip


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``pyro_vae.<old name>`` and loads it as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != "pyro_vae" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"pyro_vae.{MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system sets the alias's spec on the module: put it back
        return module

    def exec_module(self, module):
        # the target module is already executed; importing the alias runs nothing more, and leaves the module's
        # own spec in place (its relative imports resolve from its own package)
        module.__spec__ = module.__spec__.loader_state


def install():
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
