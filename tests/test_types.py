"""The public API is typed: every function ``pyro_vae`` exports, and every exported class's ``__init__`` and
public methods (class methods, static methods and property getters included), annotate each parameter and
the return. ``make lint`` checks the annotations themselves with mypy (pyproject.toml, ``[tool.mypy]``);
this test only sees that none is missing, without running mypy.
"""

import inspect

import pytest

import pyro_vae


def _functions(name, obj):
    """``(qualified name, function)`` of what must be annotated for the exported ``obj``."""
    if inspect.isfunction(obj):
        return [(name, obj)]
    if not inspect.isclass(obj):  # the registries (instances)
        return []
    found = []
    for key, value in vars(obj).items():
        if key != "__init__" and key.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value):
            found.append((f"{name}.{key}", value))
    return found


def _missing(function):
    """The parameters (and ``return``) of ``function`` without an annotation."""
    signature = inspect.signature(function)  # follows __wrapped__ (torch.no_grad, contextmanager)
    missing = [k for k, p in signature.parameters.items()
               if p.annotation is inspect.Parameter.empty and k not in ("self", "cls")]  # fmt: skip
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def _unannotated(name):
    return {qualified: missing for qualified, f in _functions(name, getattr(pyro_vae, name))
            if (missing := _missing(f))}  # fmt: skip


@pytest.mark.parametrize("name", sorted(pyro_vae.__all__))
def test_exported_signatures_are_annotated(name):
    assert _unannotated(name) == {}


def test_the_check_sees_what_it_checks():
    """The walk finds the methods of a class (not only its ``__init__``), and an unannotated function fails."""
    found = dict(_functions("VAE", pyro_vae.VAE))
    assert {"VAE.__init__", "VAE.model", "VAE.guide", "VAE.sample", "VAE.fixed_prior",
            "VAE.encoder_input_shape"} <= set(found)  # fmt: skip
    assert "Speed.baseline" in dict(_functions("Speed", pyro_vae.Speed))  # a classmethod
    assert _functions("GUIDES", pyro_vae.GUIDES) == []

    def bare(x, y: int = 1):
        return x

    assert _missing(bare) == ["x", "return"]

