"""Config files: JSON, YAML, TOML, a real run's config.json, and one-line errors with file and line."""

import builtins
import json

import pytest

from pyro_vae import Config, UserError
from pyro_vae.config_files import read_config_file

WANT = {"likelihood": "gaussian", "hidden": [200, 200], "z_dim": 2, "lr": 0.01, "stream": True, "data_dir": None}

FILES = {
    "fit.json": '{"likelihood": "gaussian", "hidden": [200, 200], "z_dim": 2, "lr": 0.01, "stream": true,\n'
                ' "data_dir": null}\n',
    "fit.yaml": "likelihood: gaussian\nhidden: [200, 200]\nz_dim: 2\nlr: 0.01\nstream: true\ndata_dir: null\n",
    "fit.toml": 'likelihood = "gaussian"\nhidden = [200, 200]\nz_dim = 2\nlr = 0.01\nstream = true\n',
}  # fmt: skip


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", list(FILES))
def test_each_format(tmp_path, name):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    got = read_config_file(write(tmp_path, name, FILES[name]))
    want = {k: v for k, v in WANT.items() if not (name.endswith(".toml") and k == "data_dir")}  # TOML has no null
    assert got == want and type(got["lr"]) is float
    config = Config().replace(**got)
    assert config.hidden == (200, 200) and config.z_dim == 2


def test_yaml_without_pyyaml_names_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ImportError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(UserError, match=r"needs PyYAML: pip install -e '\.\[yaml\]' in a checkout"):
        read_config_file(write(tmp_path, "a.yml", "z_dim: 2\n"))


def test_a_real_run_config(tmp_path):
    from pyro_vae import fit

    config = Config(dataset="digits", epochs=1, hidden="16", z_dim=2, batch_size=500, seed=3)
    run = fit(config, out=tmp_path / "run", quiet=True)
    settings, ignored = read_config_file(tmp_path / "run", with_ignored=True)  # the folder: its config.json
    # the run records the options its parts use (the bernoulli family's default binarization written out)
    assert run.config == config.replace(likelihood_options={"binarize": "dynamic"})
    assert Config.from_dict(settings) == run.config
    assert settings == run.config.to_dict()
    assert {"x_dim", "versions", "levels", "n_train"} <= set(ignored) and ignored["x_dim"] == 64
    assert read_config_file(tmp_path / "run" / "config.json") == settings


def test_run_config_from_another_version_sets_unknown_settings_aside(tmp_path):
    p = write(tmp_path, "config.json", '{"z_dim": 3, "prior_mixture_components": 0.5, "versions": {"pyro-vae": "9.0"}}')
    settings, ignored = read_config_file(p, with_ignored=True)
    assert settings == {"z_dim": 3} and set(ignored) == {"prior_mixture_components", "versions"}


@pytest.mark.parametrize("name, text, match", [
    ("a.json", '{"z_dim": 2,\n "lr": 0.1,\n "hiden": [10]}', r"a\.json, line 3: unknown setting 'hiden'; did you mean 'hidden'\?"),
    ("a.toml", 'z_dim = 2\nlearning_rate = 0.1\n', r"a\.toml, line 2: unknown setting 'learning_rate'; the settings are: dataset, "),
    ("a.json", '{"z_dim": 2,\n "lr": "fast"}', r"a\.json, line 2: lr must be a number, got 'fast' \(a string\)"),
    ("a.toml", 'z_dim = 2.5\n', r"a\.toml, line 1: z_dim must be an integer, got 2\.5 \(a number\)"),
    ("a.json", '{"stream": 1}', r"a\.json, line 1: stream must be true or false, got 1 \(an integer\)"),
    ("a.json", '{"z_dim": null}', r"a\.json, line 1: z_dim cannot be null"),
    ("a.json", '{"hidden": ["a"]}', r"hidden must be a list of integers"),
    ("a.json", '{"z_dim": 2,\n "lr": 0.1,,\n}', r"a\.json, line 2: not valid JSON \(Expecting property name"),
    ("a.toml", 'z_dim = 2\nlr = \n', r"a\.toml, line 2: not valid TOML \(Invalid value"),
    ("a.json", '[1, 2]', r"a\.json: a config file must be a mapping of setting names to values, got a list"),
    ("a.ini", 'z_dim = 2', r"unknown config file type '\.ini'; use \.json, \.yaml, \.yml or \.toml"),
])  # fmt: skip
def test_errors_are_one_line_with_file_and_line(tmp_path, name, text, match):
    with pytest.raises(UserError, match=match) as e:
        read_config_file(write(tmp_path, name, text))
    assert "\n" not in str(e.value)


def test_malformed_yaml_has_its_line(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    with pytest.raises(UserError, match=r"a\.yaml, line 2: not valid YAML \(mapping values are not allowed here\)") as e:
        read_config_file(write(tmp_path, "a.yaml", "z_dim: 2 \nlr: x: 1\n"))
    assert "\n" not in str(e.value)


def test_missing_unreadable_and_not_text(tmp_path):
    with pytest.raises(UserError, match=r"config file .*nope\.json does not exist"):
        read_config_file(tmp_path / "nope.json")
    with pytest.raises(UserError, match="is a folder without a config.json"):
        read_config_file(tmp_path)
    (tmp_path / "b.json").write_bytes(b'{"z_dim": \xff}')
    with pytest.raises(UserError, match=r"b\.json: not a text file \(not UTF-8 at byte 10\)"):
        read_config_file(tmp_path / "b.json")
    bad = write(tmp_path, "c.json", "{}")
    bad.chmod(0)
    try:
        bad.open().close()
    except PermissionError:
        with pytest.raises(UserError, match=r"cannot read config file .*c\.json: Permission denied"):
            read_config_file(bad)
    else:
        pytest.skip("running as root: a file without read permission is still readable")


# Numbers written as text (issue 26): PyYAML reads `lr: 1e-3` as a string (YAML 1.1); JSON/TOML may quote numbers

NUMBER_TEXT = [
    # (YAML text, JSON text, TOML text) of one setting each, and the value it must have
    ("lr: 1e-3", '{"lr": "1e-3"}', 'lr = "1e-3"', {"lr": 0.001}),
    ("lr: 5E-4", '{"lr": "5E-4"}', 'lr = "5E-4"', {"lr": 0.0005}),
    ("beta: 4e0", '{"beta": "4e0"}', 'beta = "4e0"', {"beta": 4.0}),
    ("clip_norm: .5", '{"clip_norm": " .5 "}', 'clip_norm = "+.5"', {"clip_norm": 0.5}),
    ("epochs: 1e2", '{"epochs": "1e2"}', 'epochs = "100"', {"epochs": 100}),
    ("kl_warmup: 1e1", '{"kl_warmup": "10"}', 'kl_warmup = "1.0e1"', {"kl_warmup": 10.0}),
    ("hidden: [2e2, 1e2]", '{"hidden": ["200", "1e2"]}', 'hidden = ["2e2", 100]', {"hidden": [200, 100]}),
    ("likelihood_options: {min_scale: 1e-3}", '{"likelihood_options": {"min_scale": "1e-3"}}',
     'likelihood_options = {min_scale = "1e-3"}', {"likelihood_options": {"min_scale": 0.001}}),
    ("guide_options: {flow_steps: '4'}", '{"guide_options": {"flow_steps": "4"}}',
     'guide_options = {flow_steps = "4"}', {"guide_options": {"flow_steps": 4}}),
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
@pytest.mark.parametrize("texts", NUMBER_TEXT, ids=[t[3].__repr__()[:30] for t in NUMBER_TEXT])
def test_number_like_text_is_the_number_in_every_format(tmp_path, fmt, texts):
    if fmt == "yaml":
        yaml = pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
        if texts[0].startswith("lr: 1e-3"):
            assert yaml.safe_load(texts[0]) == {"lr": "1e-3"}  # the YAML 1.1 reading this rule is for
    text = {"yaml": texts[0], "json": texts[1], "toml": texts[2]}[fmt]
    got = read_config_file(write(tmp_path, f"fit.{fmt}", text + "\n"))
    assert json.dumps(got) == json.dumps(texts[3])  # the types too: 100 an int, 10.0 and 0.001 floats
    Config().replace(**got)  # and the settings are valid


@pytest.mark.parametrize("name, text, match", [
    ("a.yaml", "lr: fast\n", r"a\.yaml, line 1: lr must be a number, got 'fast' \(a string\)"),
    ("a.yaml", "z_dim: 2\nlr: 1e-3x\n", r"a\.yaml, line 2: lr must be a number, got '1e-3x' \(a string\)"),
    ("a.json", '{"lr": "inf"}', r"lr must be a number, got 'inf' \(a string\)"),
    ("a.json", '{"lr": "0x10"}', r"lr must be a number, got '0x10' \(a string\)"),
    ("a.json", '{"lr": ""}', r"lr must be a number, got '' \(a string\)"),
    ("a.toml", 'epochs = "2.5e0"\n', r"a\.toml, line 1: epochs must be an integer, got '2\.5e0' \(a string\)"),
    ("a.toml", 'z_dim = "two"\n', r"a\.toml, line 1: z_dim must be an integer, got 'two' \(a string\)"),
    ("a.json", '{"hidden": ["2.5"]}', r"hidden must be a list of integers \(e\.g\. \[200, 200\]\), got \['2\.5'\]"),
    ("a.json", '{"stream": "1"}', r"stream must be true or false, got '1' \(a string\)"),  # not a number setting
])  # fmt: skip
def test_text_that_is_no_number_is_refused_in_one_line(tmp_path, name, text, match):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    with pytest.raises(UserError, match=match) as e:
        read_config_file(write(tmp_path, name, text))
    assert "\n" not in str(e.value)


# Bounds: a small file cannot name a huge or deep structure (issue 20) -----------------------------


def _laughs(levels=8):
    """A "billion laughs" YAML: 9 ** (levels + 1) values from a few lines of aliases."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines + [f"hidden: *a{levels}"]) + "\n"


@pytest.mark.parametrize("name,text,match", [
    ("deep.json", '{"hidden": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deep"),
    ("deep.yaml", "hidden: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deep"),
    ("deep.toml", "hidden = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deep"),
    ("nested.json", '{"hidden": ' + "[" * 17 + "1" + "]" * 17 + "}", "nested more than 16 deep"),
    ("nested.yaml", "guide_options: " + "{a: " * 20 + "1" + "}" * 20 + "\n", "nested more than 16 deep"),
    ("laughs.yaml", _laughs(), r"more than 10000 values \(YAML aliases expanded\)"),
    ("wide.json", '{"hidden": [' + ", ".join(["1"] * 20_000) + "]}", "more than 10000 values"),
    ("big.json", '{"hidden": [1], "dataset": "' + "x" * 1_000_001 + '"}', r"is 1000031 bytes, more than 1000000"),
])  # fmt: skip
def test_files_beyond_the_bounds_are_one_line_errors(tmp_path, name, text, match):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    with pytest.raises(UserError, match=match) as e:
        read_config_file(write(tmp_path, name, text))
    assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


def test_text_stays_text_where_a_setting_is_text(tmp_path):
    got = read_config_file(write(tmp_path, "a.json", '{"device": "0", "likelihood_options": {"binarize": "static"}}'))
    assert got == {"device": "0", "likelihood_options": {"binarize": "static"}}


@pytest.mark.parametrize("options, match", [
    ({"likelihood": "gaussian", "likelihood_options": {"min_scale": "tiny"}}, r"needs --min-scale > 0, got 'tiny'"),
    ({"likelihood": "gaussian-fixed", "likelihood_options": {"sigma": "wide"}}, r"needs --sigma > 0, got 'wide'"),
    ({"likelihood": "discretized-logistic-mixture", "likelihood_options": {"mixtures": "many"}},
     r"needs a whole --mixtures of at least 1, got 'many'"),
    ({"likelihood": "discretized-logistic-mixture", "likelihood_options": {"mixtures": 2.5}},
     r"needs a whole --mixtures of at least 1, got 2\.5"),
    ({"guide": "iaf", "guide_options": {"flow_steps": "some"}}, r"--flow-steps must be a whole number of at least 1, got 'some'"),
    ({"guide": "iaf", "guide_options": {"flow_steps": 2.5}}, r"--flow-steps must be a whole number of at least 1, got 2\.5"),
])  # fmt: skip
def test_option_text_that_is_no_number_is_refused_in_one_line_by_the_cli(tmp_path, capsys, options, match):
    import re

    from pyro_vae.cli import main

    (tmp_path / "fit.json").write_text(json.dumps({"dataset": "digits", "epochs": 1, "hidden": [8], **options}))
    code = main(["fit", "--config", str(tmp_path / "fit.json"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(match, err), err


def test_yaml_numbers_reach_the_run(tmp_path, capsys):
    pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    from pyro_vae.cli import main

    (tmp_path / "fit.yaml").write_text("dataset: digits\nlikelihood: gaussian\nlr: 1e-3\nbeta: 5e-1\nepochs: 1e0\n"
                                       "likelihood_options:\n  min_scale: 1e-3\n")  # fmt: skip
    assert main(["fit", "--config", str(tmp_path / "fit.yaml"), "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert (resolved["lr"], resolved["beta"], resolved["epochs"]) == (0.001, 0.5, 1)
    assert resolved["likelihood_options"] == {"min_scale": 0.001}


def test_settings_within_the_bounds_are_read(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    text = "base: &h [64, 32]\nhidden: *h\nchannels: *h\n"  # an alias or two is fine
    got = read_config_file(write(tmp_path, "alias.yaml", "z_dim: 2\n" + text.replace("base", "versions")))
    assert got == {"z_dim": 2, "hidden": [64, 32], "channels": [64, 32]}
    nested = '{"guide_options": ' + '{"a": ' * 14 + "1" + "}" * 14 + "}"
    assert read_config_file(write(tmp_path, "ok.json", nested))["guide_options"]["a"]["a"]


def test_a_fifo_is_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(UserError, match="pipe.json is not a regular file"):
        read_config_file(tmp_path / "pipe.json")
