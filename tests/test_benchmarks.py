"""The benchmark's loops compute the same ELBO; its scripts run end to end (on digits, tiny)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import pyro
from pyro.infer import Trace_ELBO

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import loops
import peers
import speed

from pyro_vae.speed import trace_elbo_loss
from pyro_vae.vae.model import VAE

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", list(loops.ARCHITECTURES))
def test_hand_written_and_example_losses_equal_pyro_vaes(arch):
    """(b) and (c) compute pyro-vae's ELBO: same value and gradient for the same weights and draws."""
    hidden, activation, z_dim = loops.ARCHITECTURES[arch]
    torch.manual_seed(0)
    vae = VAE(784, z_dim, hidden, activation)
    hand = loops.TorchVAE(784, z_dim, hidden, activation)
    hand.encoder.load_state_dict(vae.encoder.net.state_dict())
    hand.decoder.load_state_dict(vae.decoder.state_dict())
    example = loops.ExampleVAE(z_dim, hidden, activation)
    example.encoder.net.load_state_dict(vae.encoder.net.state_dict())
    example.decoder.load_state_dict(vae.decoder.state_dict())
    x = torch.bernoulli(torch.rand(32, 784, generator=torch.Generator().manual_seed(1)))

    pyro.set_rng_seed(3)
    ours = trace_elbo_loss(Trace_ELBO(), vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    theirs = hand.loss(x)
    pyro.set_rng_seed(3)
    example_loss = Trace_ELBO().differentiable_loss(example.model, example.guide, x)
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-6)
    assert example_loss.item() == pytest.approx(ours.item(), rel=1e-6)
    g_ours = torch.autograd.grad(ours, list(vae.encoder.net.parameters()) + list(vae.decoder.parameters()))
    g_hand = torch.autograd.grad(theirs, list(hand.encoder.parameters()) + list(hand.decoder.parameters()))
    for a, b in zip(g_ours, g_hand):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_speed_script_end_to_end(tmp_path, monkeypatch):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n\n<!-- speed-table:start -->\nold\n<!-- speed-table:end -->\n\nmore\n")
    monkeypatch.setattr(speed, "DOCS", docs)
    argv = ["--dataset", "digits", "--archs", "relu400", "--batch-sizes", "64", "--steps", "2", "--block", "1",
            "--warmup", "1", "--no-memory", "--loops", "a,b,c,a0", "--out", str(tmp_path), "--update-docs"]  # fmt: skip
    speed.main(argv)
    report = json.loads((tmp_path / "speed.json").read_text())
    (row,) = report["results"]
    assert set(row["loops"]) == {"a", "b", "c", "a0"}
    assert set(row["ratios"]) == {"a/b", "c/a", "a0/a"}
    a = row["loops"]["a"]
    assert a["ms_per_step"] > 0 and a["items_per_s"] == pytest.approx(64 / a["ms_per_step"] * 1e3)
    assert a["s_per_epoch"] == pytest.approx(26 * a["ms_per_step"] / 1e3)  # ceil(1617 / 64) steps
    assert row["ratios"]["a/b"] == pytest.approx(a["ms_per_step"] / row["loops"]["b"]["ms_per_step"])
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["pyro"] == pyro.__version__
    text = docs.read_text()
    assert "old" not in text and "intro" in text and "more" in text and "| cpu | relu400 | 64 |" in text


def test_profile_script_end_to_end(tmp_path, monkeypatch):
    import profile_step

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    monkeypatch.setattr(speed, "DOCS", docs)
    argv = ["--dataset", "digits", "--batch-size", "64", "--rounds", "12", "--steps", "2", "--block", "1",
            "--warmup", "1", "--out", str(tmp_path), "--update-docs"]  # fmt: skip
    profile_step.main(argv)
    report = json.loads((tmp_path / "profile-relu400-64-cpu.json").read_text())
    for loop in ("a0", "a", "b"):
        phases = report["phases_ms"][loop]
        assert phases["total"] == pytest.approx(sum(v for k, v in phases.items() if k != "total"))
    assert "+ loss captured as a graph (= a, the default)" in report["ablation_ms"]
    assert "<!-- profile-table:relu400-64-cpu:start -->" in docs.read_text()


def test_time_to_quality_script_end_to_end(tmp_path, monkeypatch):
    import time_to_quality

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    monkeypatch.setattr(speed, "DOCS", docs)
    argv = ["--dataset", "digits", "--targets=-45,-40", "--milestones", "-60", "--max-epochs", "3",
            "--loops", "a,b", "--out", str(tmp_path), "--update-docs"]  # fmt: skip
    time_to_quality.main(argv)
    report = json.loads((tmp_path / "time-to-quality-relu400-128-cpu.json").read_text())
    assert set(report["loops"]) == {"a", "b"}
    assert set(report["loops"]["a"]["reached"]) == {"-45.0", "-40.0"}
    assert "to >= -45: epoch, training s" in docs.read_text()
    assert (tmp_path / "time-to-quality-relu400-128-cpu.md").read_text() in docs.read_text()
    assert "<!-- quality-table:start -->" in docs.read_text()


@pytest.mark.parametrize("name", ["d", "e"])
def test_peer_loops_run_two_steps(name):
    """(d) NumPyro and (e) pythae, from the extra [bench], take steps (skipped when not installed)."""
    why = peers.available()[name]
    if why:
        pytest.skip(f"({name}) {why}")
    config = loops.config_for("relu400", 64, "cpu", "digits")
    loop = loops.LOOPS[name](config)
    loop.run(2)
    loop.sync()
    last = float(loop.last)
    assert last == last and last > 0  # a finite, positive loss (negative ELBO)
    if name == "d":
        assert loop.compile_s > 0
        _, test = peers._train_data(config, "cpu")
        images = test.reshape(len(test), 1, 8, 8)  # a Trainer's test set keeps the items' shape
        assert loop.test_elbo(images) == pytest.approx(loop.test_elbo(test), rel=1e-6) and loop.test_elbo(test) < 0


def test_peer_loops_skipped_with_reason_when_absent(monkeypatch):
    """Without numpyro/pythae the loops raise Unavailable with an install hint, and speed.py skips them."""
    monkeypatch.setattr(peers, "_importable", lambda module: False)
    assert all("pip install -e .[bench]" in why for why in peers.available().values())
    import builtins

    real_import = builtins.__import__

    def no_peers(name, *args, **kwargs):
        if name.split(".")[0] in ("jax", "numpyro", "pythae"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peers)
    config = loops.config_for("relu400", 64, "cpu", "digits")
    for name in ("d", "e"):
        with pytest.raises(peers.Unavailable, match=r"pip install -e \.\[bench\]"):
            loops.LOOPS[name](config)


def test_report_writer_has_the_peer_columns():
    """The speed table shows d/a and e/a beside a/b and c/a, (d)'s compile time, (e)'s static binarization,
    and the reason a loop was skipped."""

    def loop(ms, label, **extra):
        return {"label": label, "ms_per_step": ms, "ms_per_step_quartiles": [ms, ms, ms], "cpu_ms_per_step": ms,
                "items_per_s": 128 / ms * 1e3, "s_per_epoch": 469 * ms / 1e3, **extra}  # fmt: skip

    row = {"device": "cpu", "arch": "relu400", "batch_size": 128, "skipped": {},
           "loops": {"a": loop(4.0, "pyro-vae"), "b": loop(3.6, "hand-written PyTorch"),
                     "c": loop(9.0, "Pyro example loop"), "d": loop(1.8, "NumPyro", compile_s=2.7),
                     "e": loop(6.0, "pythae")}}  # fmt: skip
    row["ratios"] = row["cpu_ratios"] = {"a/b": 4.0 / 3.6, "c/a": 2.25, "d/a": 0.45, "e/a": 1.5}
    cuda = {**row, "device": "cuda", "loops": {k: v for k, v in row["loops"].items() if k != "d"},
            "skipped": {"d": "jax has no gpu backend here"}}  # fmt: skip
    cuda["ratios"] = cuda["cpu_ratios"] = {"a/b": 1.1, "c/a": 3.0, "e/a": 1.5}
    report = {"date": "today", "machine": speed.machine(), "load_before": (1.0,), "load_after": (1.0,),
              "settings": {"steps": 2, "block": 1, "warmup": 1}, "results": [row, cuda]}  # fmt: skip
    table = speed.markdown(report)
    assert "| device | net | batch | a/b | c/a | d/a | e/a |" in table
    assert "| cpu | relu400 | 128 | 1.11 | 2.25 | 0.45 | 1.50 |" in table
    assert "| cuda | relu400 | 128 | 1.10 | 3.00 | - | 1.50 |" in table
    assert "| cpu | relu400 | 128 | (d) NumPyro | 1.80" in table
    assert "compile time" in table and "2.7 s" in table
    assert "statically" in table and "jax has no gpu backend here" in table


def test_peers_take_the_data_as_pyro_vae_prepares_it():
    """The peers' data helper follows pyro-vae's layout (it runs only where the peers are installed)."""
    config = loops.config_for("relu400", 64, "cpu", "digits")
    train, test = peers._train_data(config, "cpu")
    assert train.shape == (1455, 64) and test.shape[1] == 64  # digits: 1617 training items less 10% validation
    assert set(test.unique().tolist()) <= {0.0, 1.0}  # the test set binarized once
    assert 0 <= train.min() and train.max() <= 1  # probabilities, binarized per batch


def test_bf16_cpu_report_runs_on_digits(tmp_path):
    """benchmarks/bf16_cpu.py (issue 24): fp32 and bf16 trainers side by side, one row per setting."""
    from pyro_vae.speed.precision import cpu_bf16_features

    if not cpu_bf16_features():
        pytest.skip("this CPU has neither AVX512_BF16 nor AMX")
    import bf16_cpu

    bf16_cpu.main(["--dataset", "digits", "--archs", "relu400", "--batch-sizes", "128", "--seeds", "0",
                   "--epochs", "2", "--out", str(tmp_path)])  # fmt: skip
    report = json.loads((tmp_path / "bf16-cpu.json").read_text())
    runs = report["results"][0]["runs"]["0"]
    assert set(runs) == {"fp32", "bf16"} and all(len(r["test_elbo"]) == 2 for r in runs.values())
    assert runs["fp32"]["test_elbo"][-1] != runs["bf16"]["test_elbo"][-1]  # the products ran in bf16
    assert abs(runs["fp32"]["test_elbo"][-1] - runs["bf16"]["test_elbo"][-1]) < 1.0
    assert "| relu400 | 128 |" in (tmp_path / "bf16-cpu.md").read_text()


def test_numpyro_phases_take_the_pieces_of_its_step():
    """benchmarks/numpyro_phases.py (issue 24): NumPyro's step timed piece by piece (skipped without the extra)."""
    why = peers.available()["d"]
    if why:
        pytest.skip(f"(d) {why}")
    import numpyro_phases

    config = loops.config_for("relu400", 64, "cpu", "digits")
    d = numpyro_phases.NumPyroPhases(config, train=peers._train_data(config, "cpu")[0], block=2)
    for _ in range(3):
        d.time_round()
    row = d.phases(skip=0)
    assert row["total"] == pytest.approx(
        sum(v for k, v in row.items() if k.startswith(("minibatch", "forward", "back", "opt")))
    )
    assert row["whole jitted step (fori_loop, fused across phases)"] > 0 and d.compile_s > 0


def test_step_overheads_report(tmp_path):
    """benchmarks/step_overheads.py (issue 24): the uint8 and compiled-call bounds, derived rows as differences."""
    import step_overheads

    step_overheads.main(["--threads", "1", "--items", "500", "--calls", "5", "--blocks", "3", "--out", str(tmp_path)])
    ms = json.loads((tmp_path / "step-overheads.json").read_text())["ms"]
    assert ms["uint8 saves per step (ms)"] == ms["minibatch, float32 data (ms)"] - ms["minibatch, uint8 data (ms)"]
    assert ms["compiled call overhead per call (ms)"] == ms["tiny op, compiled call (ms)"] - ms["tiny op, eager (ms)"]
    assert all(ms[k] > 0 for k in ms if "saves" not in k and "overhead" not in k)
    assert "| minibatch, uint8 data |" in (tmp_path / "step-overheads.md").read_text()
