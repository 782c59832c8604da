"""The trust rule for code that received settings name (pyro_vae.user_code.check_code_trusted)."""

import pytest

from pyro_vae import Config, UserError
from pyro_vae.user_code import check_code_trusted, named_code


def test_named_code_finds_every_part_given_as_code():
    # guides, architectures, likelihoods and priors: each can be given as code, each needs trust
    assert named_code({"guide": "diagonal", "arch": "mlp", "likelihood": "bernoulli", "prior": "vamp"}) == {}
    assert named_code({"guide": "g.py:G", "arch": "lab.nets:Net", "likelihood": "x.py:L", "prior": "p.py:P",
                       "dataset": "a.py:B"}) == {
        "guide": "g.py:G", "arch": "lab.nets:Net", "likelihood": "x.py:L", "prior": "p.py:P"}  # fmt: skip
    assert named_code(Config(guide="iaf")) == {}
    assert named_code({}) == {} and named_code({"guide": None, "arch": 3}) == {}


@pytest.mark.parametrize("settings,kind,flag", [
    ({"guide": "/tmp/x.py:G"}, "guide", "--guide /tmp/x.py:G"),
    ({"guide": "os:system"}, "guide", "--guide os:system"),
    ({"arch": "my nets.py:Net"}, "architecture", "--arch 'my nets.py:Net'"),
    ({"guide": "diagonal", "arch": "lab.nets:Net"}, "architecture", "--arch lab.nets:Net"),
])  # fmt: skip
def test_code_is_refused_unless_trusted_or_named_again(settings, kind, flag):
    with pytest.raises(UserError) as e:
        check_code_trusted(settings, "the config file cfg.json")
    text = str(e.value)
    assert text.startswith(f"the config file cfg.json names its {kind} as code") and "\n" not in text
    assert f"pass --trust-guide (or {flag}" in text
    check_code_trusted(settings, "x", trust=True)
    check_code_trusted(settings, "x", named=dict(settings))
    with pytest.raises(UserError):  # naming other code does not allow this one
        check_code_trusted(settings, "x", named={k: v + "2" for k, v in settings.items()})


def test_registered_names_need_no_trust():
    check_code_trusted({"guide": "iaf", "arch": "conv"}, "x")
    check_code_trusted(Config(), "x")
