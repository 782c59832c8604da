"""The CLI's --guide, --flow-steps, --objective, --particles and --jit, and its one-line errors."""

import json
import textwrap

import pytest

from pyro_vae import load_run
from pyro_vae.cli import main

USER_GUIDE = textwrap.dedent(
    """
    import torch.nn as nn
    import torch.nn.functional as F
    import pyro.distributions as dist
    from pyro_vae import Guide


    class TwoLayerGuide(Guide):
        def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
            super().__init__(x_dim, z_dim, hidden, activation)
            self.body = nn.Sequential(nn.Linear(x_dim, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh())
            self.loc = nn.Linear(24, z_dim)
            self.scale = nn.Linear(24, z_dim)

        def forward(self, x):
            h = self.body(x)
            return dist.Normal(self.loc(h), F.softplus(self.scale(h)) + 1e-4).to_event(1)


    class Broken(TwoLayerGuide):
        def forward(self, x):
            return self.loc(self.body(x))
    """
)

FAST = ["--dataset", "digits", "--hidden", "16", "--z-dim", "3", "--quiet"]


@pytest.fixture
def guide_file(tmp_path):
    path = tmp_path / "my_guides.py"
    path.write_text(USER_GUIDE)
    return path


def test_user_guide_from_a_file_trains_and_evaluates_through_the_cli(tmp_path, guide_file, capsys):
    out = tmp_path / "run"
    spec = f"{guide_file}:TwoLayerGuide"
    assert main(["fit", *FAST, "--guide", spec, "--epochs", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["guide"] == spec
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["valid_elbo"] > metrics[0]["valid_elbo"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--samples", "5", "--subset", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 0.5
    assert type(load_run(out).vae.encoder).__name__ == "TwoLayerGuide"


def test_flow_steps_and_objective_flags_reach_the_run(tmp_path):
    out = tmp_path / "run"
    args = ["--guide", "iaf", "--flow-steps", "3", "--objective", "iwae", "--particles", "3", "--epochs", "1"]
    assert main(["fit", *FAST, *args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["guide"], config["guide_options"]["flow_steps"], config["objective"], config["particles"]) == ("iaf", 3, "iwae", 3)
    assert config["guide_options"] == {"flow_steps": 3}
    assert len(load_run(out).vae.encoder.flows) == 3


def test_jit_trains_through_the_cli_and_resumes_without_it(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", *FAST, "--jit", "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["jit"] is True
    # --jit changes how, not what, is computed: a run may be resumed with or without it
    assert main(["fit", *FAST, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guide", "{file}:Broken"], "returned a Tensor, not a distribution"),
        (["--guide", "{dir}/nowhere.py:G"], "nowhere.py does not exist"),
        (["--guide", "{file}:Missing"], "has no 'Missing'; it defines: Broken, TwoLayerGuide"),
        (["--guide", "nope"], "unknown guide 'nope'; choose one of: diagonal, full-rank, iaf, planar"),
        (["--flow-steps", "3"], "--flow-steps does not apply to the diagonal guide"),
        (["--guide", "planar", "--objective", "elbo-analytic"], "needs a closed-form KL"),
        (["--guide", "planar", "--objective", "rws", "--particles", "2"], "rws objective scores fixed"),
        (["--objective", "iwae"], "needs --particles of at least 2"),
        (["--objective", "iwae", "--particles", "4", "--jit"], "--jit is not available for the iwae objective"),
        (["--objective", "nope"], "Invalid value for '--objective'"),
    ],
)
def test_guide_and_objective_mistakes_are_one_line_errors(tmp_path, guide_file, capsys, args, message):
    args = [a.format(file=guide_file, dir=tmp_path) for a in args]
    code = main(["fit", *FAST, "--epochs", "1", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
