"""The registries: a name is taken once, except by the same class defined again (a re-run notebook cell)."""

import pytest

from pyro_vae import GUIDES, LIKELIHOODS, Guide
from pyro_vae.registry import Registry


def define(namespace="__main__"):
    """A class ``Family`` defined afresh, as a notebook cell defines it each time it runs."""
    scope = {"__name__": namespace}
    exec("class Family:\n    pass\n", scope)
    return scope["Family"]


def test_a_name_is_taken_once():
    registry = Registry("likelihood")
    first = registry.register("family", define())
    assert registry.get("family") is first and first.name == "family"
    other = registry.register("other", define("my_module"))
    with pytest.raises(ValueError, match=r"likelihood 'family' is already registered \(to __main__\.Family\); "
                                         r"pick another name for my_module\.Family"):
        registry.register("family", other)
    assert registry.get("family") is first


def test_the_same_class_defined_again_replaces_the_entry():
    registry = Registry("guide")
    first = registry.register("mine", define())
    registry.register("mine", first)  # the same object: nothing changes
    second = registry.register("mine", define())  # the cell run again: a new class of the same name
    assert second is not first and registry.get("mine") is second and registry.names() == ["mine"]


def test_built_in_entries_cannot_be_replaced_by_a_new_class(monkeypatch):
    monkeypatch.setattr(GUIDES, "_entries", dict(GUIDES._entries))
    monkeypatch.setattr(LIKELIHOODS, "_entries", dict(LIKELIHOODS._entries))

    class DiagonalGuide(Guide):  # the built-in's name, but defined here: refused
        pass

    with pytest.raises(ValueError, match="guide 'diagonal' is already registered"):
        GUIDES.register("diagonal", DiagonalGuide)
    with pytest.raises(ValueError, match="'bernoulli' is already registered"):
        LIKELIHOODS.register("bernoulli", define())
