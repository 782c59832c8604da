"""Loading a user's own class without editing the package: ``path/to/file.py:Name`` or ``package.module:Name``.

``--guide my_guides.py:MixtureGuide`` runs ``my_guides.py`` as a fresh module and takes its
``MixtureGuide``; ``--guide mylab.encoders:ResidualGuide`` imports ``mylab.encoders`` (which must be
importable, e.g. installed or on ``$PYTHONPATH``). A relative file path is relative to the working
directory, and the run's ``config.json`` keeps the spec as given, so reload a run from the same
place (or give an absolute path).
"""

import hashlib
import importlib
import importlib.util
import inspect
import os
import shlex
import sys
from pathlib import Path

from .errors import UserError


def is_import_spec(spec):
    """Whether ``spec`` looks like ``file.py:Name`` or ``module:Name`` rather than a registered name."""
    return isinstance(spec, str) and ":" in spec


def _split(spec, kind):
    target, _, name = spec.rpartition(":")
    if not target or not name or not name.isidentifier():
        raise UserError(f"{kind} {spec!r} should be path/to/file.py:Name or package.module:Name")
    return target, name


def _is_path(target):
    return target.endswith(".py") or os.sep in target or "/" in target


def spec_file(spec):
    """``(Path, Name)`` for a file spec ``path/to/file.py:Name``; ``None`` for a registered name or a
    ``package.module:Name`` spec."""
    if not is_import_spec(spec):
        return None
    target, _, name = spec.rpartition(":")
    return (Path(target).expanduser(), name) if target and _is_path(target) else None


def sha256_file(path):
    """The sha256 hex digest of the file at ``path`` (the hash a run folder records for a copied part)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_module_from_file(path, kind="object"):
    """Execute the Python file ``path`` as a new module and return it.

    A file is run once per process: asking again returns the same module unless the file changed
    since (so a file that registers its classes, ``@GUIDES.register(...)``, can be named twice).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{kind} file {path} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"pyro_vae_user_{path.stem}_{digest}"
    modified = path.stat().st_mtime_ns
    loaded = sys.modules.get(module_name)
    if loaded is not None and getattr(loaded, "__pyro_vae_mtime__", None) == modified:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{kind} file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__pyro_vae_mtime__ = modified
    sys.modules[module_name] = module  # lets dataclasses, pickling and typing find the module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise UserError(f"running {kind} file {path} failed: {type(e).__name__}: {e}") from None
    return module


def load_object(spec, kind="object"):
    """The object ``spec`` (``path/to/file.py:Name`` or ``package.module:Name``) names; :class:`UserError` if none."""
    target, name = _split(spec, kind)
    if _is_path(target):
        module = load_module_from_file(target, kind)
        where = f"file {target}"
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise UserError(f"{kind} {spec}: no module named {e.name!r} (is it installed or on PYTHONPATH?)") from None
        except Exception as e:
            raise UserError(f"importing {kind} module {target} failed: {type(e).__name__}: {e}") from None
        where = f"module {target}"
    if not hasattr(module, name):
        public = sorted(
            k for k, v in vars(module).items()
            if isinstance(v, type) and not k.startswith("_") and v.__module__ == module.__name__
        )  # fmt: skip
        listing = f"; it defines: {', '.join(public)}" if public else ""
        raise UserError(f"{kind} {spec}: {where} has no {name!r}{listing}")
    return getattr(module, name)


def resolve_class(spec, registry, kind, is_valid, expected, requirement):
    """The class a spec names for one axis: a name in ``registry``, or an import spec (``file.py:Name``,
    ``module:Name``) of the user's own class; any other object is returned as it is.

    :param registry: the axis's :class:`~pyro_vae.registry.Registry` (names win over import specs).
    :param str kind: what the class is (``"guide"``, ``"architecture"``), for messages.
    :param is_valid: ``obj -> bool``: whether a loaded object is an acceptable class.
    :param str expected: what a valid object is (``"a class"``), and ``requirement`` what the spec must
        name (``"a subclass of pyro_vae.Guide"``), for the message.
    :raises UserError: an unknown name, a file that fails to load, or an object that is not valid.
    """
    if isinstance(spec, str) and spec not in registry and is_import_spec(spec):
        obj = load_object(spec, kind)
        if not is_valid(obj):
            raise UserError(f"{kind} {spec} is a {type(obj).__name__}, not {expected}; it must name {requirement}")
        return obj
    if isinstance(spec, str):
        try:
            return registry.get(spec)
        except UserError as e:
            own = "a user guide" if kind == "guide" else f"your own {kind}"
            raise UserError(f"{e}; or give {own} as path/to/file.py:Name or package.module:Name") from None
    return spec


#: the settings that may name code (``file.py:Name`` or ``module:Name``) and what each names
CODE_SETTINGS = {"guide": "guide", "arch": "architecture", "likelihood": "likelihood", "prior": "prior"}


def named_code(settings):
    """``{setting: spec}`` of the settings in ``settings`` (a dict or a :class:`~pyro_vae.config.Config`)
    that name code (:data:`CODE_SETTINGS` whose value is an import spec)."""
    get = settings.get if isinstance(settings, dict) else (lambda k: getattr(settings, k, None))
    return {k: get(k) for k in CODE_SETTINGS if is_import_spec(get(k))}


def check_code_trusted(settings, source, trust=False, named=None):
    """Refuse settings received in a file (a ``--config`` file, a run folder) that name code, unless the user allows it.

    A guide, architecture, likelihood or prior given as ``file.py:Name`` or ``module:Name`` is Python code that runs
    when the model is built. A file or run folder received from someone else could name any file or
    module; every command that reads settings from one (``fit --config``, ``fit --resume``,
    ``evaluate``, ``sample``, the latent commands, :func:`~pyro_vae.runs.run.load_run`) runs that code
    only when ``trust`` is true (``--trust-guide``) or the user names the same code again (``named``:
    ``{setting: spec}`` given by the user, e.g. ``--guide`` on the command line).

    :param settings: a dict or :class:`~pyro_vae.config.Config` read from ``source``.
    :param str source: what the settings came from, for the message (``"the run in runs/a"``, ``"cfg.json"``).
    :raises UserError: one line, naming the code and how to allow it.
    """
    if trust:
        return
    named = named or {}
    for key, spec in named_code(settings).items():
        if named.get(key) == spec:
            continue
        flag = {"guide": "--guide", "arch": "--arch"}.get(key)
        also = f" (or {flag} {shlex.quote(spec)})" if flag else ""
        raise UserError(
            f"{source} names its {CODE_SETTINGS[key]} as code, {spec}; using it would run that code. If you trust it, "
            f"pass --trust-guide{also}; in Python trust_guide=True"
        )


def accepted_options(cls, options, what, flags=None):
    """The parameters of ``cls``'s constructor (:func:`inspect.signature`), after checking that it accepts every
    keyword of ``options`` (or takes ``**kwargs``): the one check of a guide's and a prior's own options.

    :param str what: the part, for the message (``"iaf guide"``, ``"vamp prior"``).
    :param dict flags: the command-line flag of an option where it is not ``--`` + its name with dashes.
    :raises UserError: one line naming the flag that does not apply.
    """
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for key in options:
            if key not in params:
                flag = (flags or {}).get(key, "--" + key.replace("_", "-"))
                raise UserError(f"{flag} does not apply to the {what} (it takes no {key} option)")
    return params
