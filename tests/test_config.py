"""Config: every setting of a run, validated as the CLI validates it, and rebuilt from config.json."""

import math
from pathlib import Path

import pytest

from pyro_vae.config import Config, parse_hidden
from pyro_vae.errors import UserError
from pyro_vae.train.build import make_config


def test_defaults_are_the_documented_ones():
    c = Config()
    assert (c.dataset, c.likelihood, c.guide, c.objective, c.arch) == ("mnist", "bernoulli", "diagonal", "elbo", "mlp")
    assert (c.z_dim, c.hidden, c.activation, c.optimizer, c.lr, c.batch_size) == (20, (400,), "relu", "adam", 1e-3, 128)
    assert c.likelihood_options == {} and c.guide_options == {}


@pytest.mark.parametrize("spec, sizes", [("400", (400,)), ("200,200", (200, 200)), (" 500 , 300", (500, 300)),
                                         (64, (64,)), ([32, 16], (32, 16))])  # fmt: skip
def test_parse_hidden(spec, sizes):
    assert parse_hidden(spec) == sizes


@pytest.mark.parametrize("spec", ["", "a", "0", "400,-1", [], None])
def test_parse_hidden_refuses(spec):
    with pytest.raises(UserError, match="--hidden"):
        parse_hidden(spec)


@pytest.mark.parametrize(
    "setting, value, flag",
    [
        ("z_dim", 0, "--z-dim"), ("z_dim", 2.5, "--z-dim"), ("z_dim", True, "--z-dim"),
        ("epochs", -1, "--epochs"), ("epochs", "2", "--epochs"),
        ("batch_size", 0, "--batch-size"), ("batch_size", 1.5, "--batch-size"), ("batch_size", -5, "--batch-size"),
        ("particles", 0, "--particles"),
        ("lr", 0.0, "--lr"), ("lr", -1.0, "--lr"), ("lr", math.nan, "--lr"), ("lr", math.inf, "--lr"), ("lr", "1e-3", "--lr"),
        ("seed", -1, "--seed"), ("seed", 2**32, "--seed"), ("seed", 2**70, "--seed"),
        ("data", "", "--data"), ("test_data", "  ", "--test-data"),
        ("likelihood", 3, "--likelihood"), ("guide", "", "--guide"),
        ("likelihood_options", ["binarize"], "likelihood_options"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line(setting, value, flag):
    with pytest.raises(UserError, match=flag) as e:
        Config(**{setting: value})
    assert "\n" not in str(e.value)


def test_edge_values_are_accepted():
    c = Config(seed=2**32 - 1, epochs=0, lr=1e-12, z_dim=1, batch_size=1)
    assert (c.seed, c.epochs, c.lr) == (2**32 - 1, 0, 1e-12)


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Config(data="x.npy", test_data=Path("sub") / "t.npy", data_dir="~")
    assert c.data == str(tmp_path / "x.npy") and c.test_data == str(tmp_path / "sub" / "t.npy")
    assert c.data_dir == str(Path("~").expanduser())


def test_round_trip_through_a_dict():
    c = Config(likelihood="gaussian", likelihood_options={"min_scale": 0.05}, guide="iaf",
               guide_options={"flow_steps": 3}, hidden="200,200", seed=7)  # fmt: skip
    d = c.to_dict()
    assert d["hidden"] == [200, 200]
    assert Config.from_dict({**d, "x_dim": 64, "versions": {}}) == c


def test_config_json_of_older_versions_moves_flat_options_into_their_dicts():
    old = {"likelihood": "bernoulli", "binarize": "threshold", "min_scale": 0.01, "sigma": 0.1, "flow_steps": None,
           "guide": "diagonal", "jit": False, "hidden": [400]}  # fmt: skip
    c = Config.from_dict(old)
    assert c.likelihood_options == {"binarize": "threshold", "min_scale": 0.01, "sigma": 0.1}
    assert c.guide_options == {}  # a None option is a default, not a setting


def test_make_config_routes_part_options_and_refuses_unknown_settings():
    c = make_config(None, likelihood="gaussian-fixed", sigma=0.2, flow_steps=4, guide="planar", epochs=3)
    assert c.likelihood_options == {"sigma": 0.2} and c.guide_options == {"flow_steps": 4} and c.epochs == 3
    assert make_config(c, binarize=None).likelihood_options == {"sigma": 0.2}  # None: not given
    assert make_config(None, likelihood="discretized-logistic-mixture", mixtures=3).likelihood_options == {"mixtures": 3}
    with pytest.raises(UserError, match="unknown setting 'hiden'"):
        make_config(None, hiden=3)


def test_a_resume_keeps_the_saved_options_it_does_not_override():
    saved = Config(likelihood_options={"binarize": "threshold"}, guide="iaf", guide_options={"flow_steps": 2})
    given = Config(guide="iaf", epochs=20)
    resumed = given.resumed_from(saved)
    assert resumed.likelihood_options == {"binarize": "threshold"} and resumed.guide_options == {"flow_steps": 2}
    assert saved.differences(resumed) == []  # epochs may change on resume
    changed = Config(guide="iaf", guide_options={"flow_steps": 5}).resumed_from(saved)
    assert saved.differences(changed) == ["guide_options"]
    assert set(Config.RESUMABLE) == {"epochs", "device", "data_dir", "early_stopping", "stream"}


def test_every_field_has_a_description():
    # the `#:` comment above each field is its description in the API reference (autodoc reads it)
    import dataclasses
    import inspect

    lines = inspect.getsource(Config).splitlines()
    undocumented = []
    for f in dataclasses.fields(Config):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
        if not lines[at - 1].strip().startswith("#: ") or len(lines[at - 1].strip()) < 12:
            undocumented.append(f.name)
    assert undocumented == []
@pytest.mark.parametrize("value,low,high,message", [
    ("3", 1, None, "--n must be an integer, got '3'"), (True, 0, None, "must be an integer, got True"),
    (2.0, 1, None, "must be an integer, got 2.0"), (None, 1, None, "must be an integer, got None"),
    (0, 1, None, "--n must be at least 1, got 0"), (11, 1, 10, "--n must be between 1 and 10, got 11"),
    (5, None, 4, "--n must be at most 4, got 5"),
])  # fmt: skip
def test_check_integer_refuses_what_click_intrange_refuses(value, low, high, message):
    from pyro_vae.config import check_integer

    with pytest.raises(UserError, match=message):
        check_integer(value, "--n", low, high)


def test_check_integer_and_check_path_accept():
    import numpy as np

    from pyro_vae.config import check_integer, check_path

    assert check_integer(np.int64(3), "--n", 1) == 3 and type(check_integer(np.int64(3), "--n", 1)) is int
    assert check_path(Path("a"), "x") == Path("a") and check_path("a", "x") == "a"
    for bad in (None, 5, "  ", ["a"]):
        with pytest.raises(UserError, match="x must be a path"):
            check_path(bad, "x")


@pytest.mark.parametrize("value", [[1], "abc", None, 5])
def test_config_from_dict_takes_a_mapping(value):
    with pytest.raises(UserError, match="settings must be a mapping of setting names to values"):
        Config.from_dict(value)
