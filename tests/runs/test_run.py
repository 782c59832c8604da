"""Run folders under faults: the global Pyro store, schedulers, --epochs 0, --overwrite, the lock,
changed data, divergence from the last update, untrusted guides, input layouts, seeds, Ctrl-C."""

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import pyro
import pyro.optim
from pyro.infer import SVI, Trace_ELBO

import pyro_vae
from pyro_vae import OPTIMIZERS, TrainingDiverged, UserError, fit, load_run
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.errors import TrainingInterrupted
from pyro_vae.runs.folder import RunLock
from pyro_vae.speed import Speed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
TINY = dict(dataset="digits", hidden=(16,), z_dim=3, batch_size=256, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on digits stored as (N, 1, 8, 8) uint8 levels."""
    folder = tmp_path_factory.mktemp("trained")
    images = (load_digits().images[:, None] / 16 * 255).round().astype(np.uint8)
    np.save(folder / "digits.npy", images)
    pyro.set_rng_seed(0)
    fit(out=folder / "run", epochs=1, **{**TINY, "dataset": "mnist", "data": str(folder / "digits.npy")})
    return folder


def test_fit_leaves_the_global_param_store_alone(tmp_path):
    pyro.param("my_loc", torch.tensor(2.5))
    fit(out=tmp_path / "run", epochs=1, **TINY)
    assert pyro.param("my_loc").item() == 2.5
    assert list(pyro.get_param_store().keys()) == ["my_loc"]  # the run's parameters are in its own store
    # a user's own SVI loop on a fresh VAE trains its own parameters
    pyro.clear_param_store()
    vae = pyro_vae.VAE(64, 3, (16,), likelihood="bernoulli")
    x = torch.as_tensor(load_digits().data[:256] > 8, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(60)]
    after = vae.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1 * abs(np.mean(losses[:10]))


def test_lr_scheduler_runs_on_pyros_path_and_changes_the_rate(tmp_path):
    made = []

    def adam_decay(args):
        made.append(pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": args, "gamma": 0.1}))
        return made[-1]

    OPTIMIZERS.register("adam-decay-test", adam_decay)
    try:
        lrs = []

        def step_schedule(record):
            made[-1].step()
            lrs.append({o.optimizer.param_groups[0]["lr"] for o in made[-1].optim_objs.values()})

        ours = fit(out=tmp_path / "a", epochs=3, optimizer="adam-decay-test", lr=1e-2, on_epoch=step_schedule, **TINY)
        assert [len(s) for s in lrs] == [1, 1, 1] and [s.pop() for s in lrs] == pytest.approx([1e-3, 1e-4, 1e-5])
        made.clear()
        pyros = fit(out=tmp_path / "b", epochs=3, optimizer="adam-decay-test", lr=1e-2, speed=Speed.baseline(),
                    on_epoch=lambda r: made[-1].step(), **TINY)  # fmt: skip
        plain = fit(out=tmp_path / "c", epochs=3, optimizer="adam", lr=1e-2, **TINY)
    finally:
        OPTIMIZERS._entries.pop("adam-decay-test", None)
    a = [m["train_elbo"] for m in ours.metrics]
    assert a == pytest.approx([m["train_elbo"] for m in pyros.metrics], rel=1e-5)
    assert a[0] == pytest.approx(plain.metrics[0]["train_elbo"], rel=1e-5)  # the same first epoch
    assert a[2] != pytest.approx(plain.metrics[2]["train_elbo"], rel=1e-4)  # then the schedule shows


def test_epochs_0_is_a_loadable_untrained_run(tmp_path):
    fit(out=tmp_path / "run", epochs=0, **TINY)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert (tmp_path / "run" / "samples.png").exists()
    run = load_run(tmp_path / "run", "cpu")
    assert run.metrics == [] and np.isfinite(run.evaluate(samples=2, subset=20, seed=0)["test_elbo"])


def test_overwrite_checks_first_and_keeps_the_old_run_until_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    fit(out=out, epochs=1, **TINY)
    old = {name: (out / name).read_bytes() for name in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    for bad, words in [(dict(guide="missing.py:G"), "missing.py"), (dict(device="cuda:99" if torch.cuda.is_available()
                       else "cuda"), "cuda"), (dict(data=str(tmp_path / "none.npy")), "none.npy")]:  # fmt: skip
        with pytest.raises(UserError, match=words):
            fit(out=out, epochs=1, overwrite=True, **{**TINY, **bad})
        assert {name: (out / name).read_bytes() for name in old} == old
    with pytest.raises(KeyboardInterrupt, match="no checkpoint was written \\(the previous run in it is unchanged\\)"):
        fit(out=out, epochs=1, overwrite=True, on_step=_interrupt, **TINY)
    assert {name: (out / name).read_bytes() for name in old} == old and not (out / ".staging").exists()
    fit(out=out, epochs=2, overwrite=True, **{**TINY, "seed": 5})
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _interrupt(step):
    raise KeyboardInterrupt


def test_lock_changed_data_fewer_epochs_and_interrupt_message(tmp_path, capsys):
    x = (np.random.RandomState(0).rand(300, 16) > 0.5).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    settings = {**TINY, "dataset": "mnist", "data": str(tmp_path / "d.npy")}
    out = tmp_path / "run"
    fit(out=out, epochs=2, **settings)
    config = json.loads((out / "config.json").read_text())
    assert len(config["data_fingerprint"]) == 64
    with RunLock(out), pytest.raises(UserError, match="in use by another pyro-vae run"):
        fit(out=out, epochs=3, resume=True, **settings)
    with pytest.raises(UserError, match="has run 2 epochs"):
        fit(out=out, epochs=1, resume=True, **settings)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    with pytest.raises(TrainingInterrupted) as e:
        fit(out=out, epochs=4, resume=True, on_step=_interrupt, **settings)
    assert str(e.value) == f"interrupted in epoch 3; the checkpoint of epoch 2 in {out} is kept; continue with: " \
                           f"pyro-vae fit --out {out} --resume"  # fmt: skip
    code = main(["fit", "--out", str(out), "--resume", "--epochs", "3", "--quiet"])
    assert code == 0 and load_checkpoint(out / "checkpoint.pt")["epoch"] == 3
    if not torch.cuda.is_available():  # a run trained on CUDA continues on this CPU-only machine, with a note
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        state["config"]["device"] = "cuda"
        torch.save(state, out / "checkpoint.pt")
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
        capsys.readouterr()
        assert main(["fit", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
        assert capsys.readouterr().err.startswith("note: the run was trained with --device cuda; no CUDA GPU here")
        assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    x[0, 0] = 1 - x[0, 0]
    np.save(tmp_path / "d.npy", x)
    with pytest.raises(UserError, match="the data differs"):
        fit(out=out, epochs=4, resume=True, **settings)


def test_divergence_in_the_last_update_is_caught(tmp_path):
    """An update that leaves NaN parameters after the epoch's last loss (one step per epoch) is caught."""

    def poison(at_epoch):
        def on_step(step):  # runs after the step's update: stands in for an update that overflowed
            if step.epoch == at_epoch:
                with torch.no_grad():
                    next(step.vae.decoder.parameters())[0].fill_(float("nan"))

        return on_step

    one_step = {**TINY, "batch_size": 5000}
    with pytest.raises(TrainingDiverged) as e:
        fit(out=tmp_path / "a", epochs=2, on_step=poison(1), **one_step)
    assert "in the update of epoch 1, step 1" in str(e.value)
    assert str(e.value).endswith("no checkpoint was written; start again with --overwrite and a smaller --lr")
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    with pytest.raises(TrainingDiverged) as e:
        fit(out=tmp_path / "b", epochs=3, on_step=poison(2), **one_step)
    assert "in the update of epoch 2, step 1" in str(e.value)
    assert str(e.value).endswith(f"the last good checkpoint, of epoch 1, in {tmp_path / 'b'} is kept")
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_untrusted_guide_code_is_not_run(tmp_path, capsys):
    marker = tmp_path / "marker"
    (tmp_path / "guide.py").write_text(
        f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\nfrom pyro_vae import DiagonalGuide as G\n"
    )
    spec = f"{tmp_path / 'guide.py'}:G"
    fit(out=tmp_path / "run", epochs=1, guide=spec, **TINY)
    marker.unlink()
    with pytest.raises(UserError, match="would run that code. If you trust it, pass --trust-guide"):
        load_run(tmp_path / "run")
    assert main(["sample", str(tmp_path / "run"), "-n", "4", "-o", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--trust-guide" in err and not marker.exists()
    # allowed: the file runs (once per process: it was run by fit above, so the module is reused)
    assert load_run(tmp_path / "run", trust_guide=True).sample(2).shape == (2, 1, 8, 8)
    assert main(["sample", str(tmp_path / "run"), "-n", "4", "-o", str(tmp_path / "s.png"), "--guide", spec]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--samples", "2", "--trust-guide"]) == 0
    assert (tmp_path / "s.png").exists()


def test_reconstruct_and_encode_take_the_training_layout(trained):
    run = load_run(trained / "run", "cpu")
    images = np.load(trained / "digits.npy")[:8]  # (8, 1, 8, 8) uint8
    as_floats = torch.as_tensor(images.reshape(8, 64) / 255.0, dtype=torch.float32)
    for layout in (images, images[:, 0], images.reshape(8, 64), torch.as_tensor(images)):
        assert torch.allclose(run.encode(layout), run.encode(as_floats))
        torch.manual_seed(1)
        a = run.reconstruct(layout)
        torch.manual_seed(1)
        assert torch.equal(a, run.reconstruct(as_floats)) and a.shape == (8, 1, 8, 8)
    assert run.encode(images[0]).shape == (1, 3)  # one item without N
    for bad in (torch.zeros(2, 5), np.zeros((2, 8, 9)), np.array(["a", "b"])):
        with pytest.raises(UserError):
            run.reconstruct(bad)
    for n in (-1, 0, 2.5, True):
        with pytest.raises(UserError, match="positive integer"):
            run.sample(n)


def test_evaluate_seed_and_unwritable_evaluation(trained, tmp_path, capsys):
    run = load_run(trained / "run", "cpu")
    a, b = run.evaluate(samples=3, subset=50, seed=7), run.evaluate(samples=3, subset=50, seed=7)
    c = run.evaluate(samples=3, subset=50, seed=8)
    assert a == b and a["test_log_likelihood"] != c["test_log_likelihood"]
    folder = tmp_path / "run"
    shutil.copytree(trained / "run", folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (folder / "evaluation.json").symlink_to(victim)
    args = ["evaluate", str(folder), "--samples", "3", "--subset", "50", "--seed", "7", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == a and victim.read_text() == "mine"
    assert captured.err.startswith("note: ") and "symbolic link" in captured.err
    assert main(["sample", str(folder), "-o", str(tmp_path / "missing" / "s.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the run's data file moved away: the message names it
    shutil.move(trained / "digits.npy", tmp_path / "moved.npy")
    try:
        with pytest.raises(UserError, match="the run's data file .*digits.npy .* is missing"):
            run.evaluate(samples=2)
    finally:
        shutil.move(tmp_path / "moved.npy", trained / "digits.npy")


def test_run_shows_its_scores_as_text_and_html(tmp_path):
    run = fit(out=tmp_path / "run", epochs=2, seed=0, **TINY)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    text = repr(run)
    assert text.splitlines()[0] == f"Run({str(tmp_path / 'run')!r})"
    assert "bernoulli VAE, z_dim=3, mlp, hidden 16, relu; guide diagonal, objective elbo" in text
    assert f"2 epochs; best epoch {final['best_epoch']} (valid ELBO {final['best_valid_elbo']:.3f})" in text
    assert f"test ELBO  {final['test_elbo']:.3f} nats/item (best.pt), {final['test_elbo_last']:.3f}" in text
    assert "evaluated" not in text
    result = run.evaluate(samples=5, subset=20, seed=0)
    main(["evaluate", str(tmp_path / "run"), "--samples", "5", "--subset", "20", "--seed", "0"])
    again = load_run(tmp_path / "run", device="cpu")
    assert "weights of best.pt" in repr(again)
    assert f"log p(x) >= {result['test_log_likelihood']:.3f} nats" in repr(again)
    page = again._repr_html_()
    assert page.count("<img src='data:image/png;base64,") == 3  # curves, samples, reconstructions
    assert f"{final['test_elbo']:.3f}" in page and "<table>" in page
    (tmp_path / "run" / "evaluation.json").write_text("{damaged")  # shown without it, not an error
    assert "evaluated" not in repr(again)


# Runs you can share: parts given as code travel in the run folder; registered parts say what to register ---

SHARED_PARTS = '''
import pyro.distributions as dist
import torch

from pyro_vae import Density, DiagonalGuide


class MyGuide(DiagonalGuide):
    pass


class FixedGaussian(Density):
    """N(mu, 0.2^2) on the data as given."""

    params_per_dim = 1
    domain = "real"

    def __init__(self, sigma=0.2, levels=None):
        super().__init__(levels)
        self.sigma = sigma

    def options(self):
        return {"sigma": self.sigma}

    def distribution(self, params):
        return dist.Normal(params, torch.full_like(params, self.sigma))

    def mean(self, params):
        return params
'''


def test_parts_given_as_code_are_copied_and_the_folder_opens_elsewhere(tmp_path):
    import hashlib

    source = tmp_path / "lab" / "parts.py"
    source.parent.mkdir()
    source.write_text(SHARED_PARTS)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    fit(out=tmp_path / "run", epochs=1, guide=f"{source}:MyGuide", likelihood=f"{source}:FixedGaussian", **TINY)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["code"]["guide"] == {"spec": f"{source}:MyGuide", "file": "guide_code.py", "name": "MyGuide",
                                     "sha256": digest}  # fmt: skip
    assert meta["code"]["likelihood"]["file"] == "likelihood_code.py" and meta["code"]["likelihood"]["sha256"] == digest
    assert meta["likelihood_options"] == {"sigma": 0.2}
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(1))
    want = load_run(tmp_path / "run", trust_guide=True).encode(x)
    # "another machine": the folder moved, the source file gone
    shutil.move(tmp_path / "run", tmp_path / "moved")
    shutil.rmtree(tmp_path / "lab")
    with pytest.raises(UserError, match="names its guide as code.*pass --trust-guide"):
        load_run(tmp_path / "moved")
    run = load_run(tmp_path / "moved", trust_guide=True)
    assert type(run.vae.encoder).__name__ == "MyGuide" and type(run.vae.likelihood).__name__ == "FixedGaussian"
    assert run.vae.encoder.__module__ != "pyro_vae" and torch.equal(run.encode(x), want)
    # a copy altered since training is refused with one line, before it runs
    copy = tmp_path / "moved" / "likelihood_code.py"
    copy.write_text(copy.read_text() + "\nraise SystemExit('ran')\n")
    with pytest.raises(UserError, match="likelihood_code.py was altered since training .*sha256.*refusing to run it"):
        load_run(tmp_path / "moved", trust_guide=True)


def test_an_architecture_as_code_alone_still_needs_trust(tmp_path):
    source = tmp_path / "arch.py"
    source.write_text("from pyro_vae.vae.nets import MLPArchitecture as Mine\n")
    fit(out=tmp_path / "run", epochs=1, arch=f"{source}:Mine", **TINY)
    assert (tmp_path / "run" / "arch_code.py").read_text() == source.read_text()
    with pytest.raises(UserError, match="names its architecture as code"):
        load_run(tmp_path / "run")
    source.unlink()
    assert load_run(tmp_path / "run", trust_guide=True).sample(2).shape[0] == 2


def test_parts_registered_in_python_say_what_to_register(tmp_path, monkeypatch):
    monkeypatch.setattr(pyro_vae.GUIDES, "_entries", dict(pyro_vae.GUIDES._entries))

    class NotebookGuide(pyro_vae.DiagonalGuide):
        pass

    pyro_vae.GUIDES.register("notebook-guide", NotebookGuide)
    fit(out=tmp_path / "run", epochs=1, guide="notebook-guide", **TINY)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["registered"] == {
        "guide": {"name": "notebook-guide", "class": f"{__name__}.{NotebookGuide.__qualname__}"}
    }
    assert load_run(tmp_path / "run").vae.encoder.__class__ is NotebookGuide
    del pyro_vae.GUIDES._entries["notebook-guide"]  # a fresh process: nothing registered
    with pytest.raises(UserError) as e:
        load_run(tmp_path / "run")
    assert "uses the guide 'notebook-guide', registered in Python as" in str(e.value)
    assert str(e.value).endswith("register it before opening the run: "
                                 "pyro_vae.GUIDES.register('notebook-guide', NotebookGuide)")  # fmt: skip
    assert "\n" not in str(e.value)


# One API: encode's type, items in the data's shape, fit returns the best checkpoint, messages through logging ---


def test_encode_returns_one_type_and_items_keep_the_data_shape(trained, tmp_path):
    from pyro_vae.runs import latent

    run = load_run(trained / "run", "cpu")
    x = run.test_data()[:6]
    results = [run.encode(x), run.encode(x, what="scale"), run.encode(split="test"),
               run.encode(split="test", what="samples", samples=2), run.encode(split="test", path=tmp_path / "z.npy")]  # fmt: skip
    assert all(type(r) is torch.Tensor and r.dtype == torch.float32 and r.device.type == "cpu" for r in results)
    codes, labels = latent.encode_run(run, split="test")
    assert torch.equal(results[2], torch.as_tensor(codes)) and torch.equal(results[0], results[2][:6])
    assert results[3].shape == (len(codes), 2, 3) and np.array_equal(np.load(tmp_path / "z.npy"), codes)
    with pytest.raises(UserError, match="not of given items"):
        run.encode(x, path=tmp_path / "z2.npy")
    # sample and reconstruct: items shaped as the data was, (N, 1, 8, 8) here and (N, 64) for flat data
    assert run.sample(4).shape == (4, 1, 8, 8) and run.reconstruct(x).shape == (6, 1, 8, 8)
    flat = np.load(trained / "digits.npy").reshape(-1, 64)
    np.save(tmp_path / "flat.npy", flat)
    flat_run = fit(out=tmp_path / "flat", epochs=1, **{**TINY, "dataset": "mnist", "data": str(tmp_path / "flat.npy")})
    assert flat_run.sample(3).shape == (3, 64) and flat_run.reconstruct(flat[:2]).shape == (2, 64)


def test_fit_returns_the_best_checkpoint_as_load_run_does(tmp_path, monkeypatch):
    from pyro_vae.train.trainer import Trainer

    scores = iter([-100.0, -90.0, -95.0] * 2)  # the best validation ELBO at epoch 2 of 3
    monkeypatch.setattr(Trainer, "valid_elbo", lambda self: next(scores))
    best = fit(out=tmp_path / "a", epochs=3, **TINY)
    assert best.checkpoint == "best" and best.final["best_epoch"] == 2
    opened = load_run(tmp_path / "a", "cpu")
    assert all(torch.equal(v, opened.vae.state_dict()[k]) for k, v in best.vae.state_dict().items())
    last = fit(out=tmp_path / "b", epochs=3, checkpoint="last", **TINY)
    opened = load_run(tmp_path / "b", "cpu", checkpoint="last")
    assert last.checkpoint == "last"
    assert all(torch.equal(v, opened.vae.state_dict()[k]) for k, v in last.vae.state_dict().items())
    assert not all(torch.equal(v, best.vae.state_dict()[k]) for k, v in last.vae.state_dict().items())
    with pytest.raises(UserError, match="checkpoint must be 'best' or 'last'"):
        fit(out=tmp_path / "c", epochs=1, checkpoint="first", **TINY)


def test_messages_go_through_logging_and_the_cli_prints_them(tmp_path, caplog, capsys):
    import logging

    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        fit(out=tmp_path / "a", epochs=1, **{**TINY, "quiet": False})
    (record,) = [r for r in caplog.records if r.name == "pyro_vae"]
    assert (
        record.levelno == logging.INFO
        and "test ELBO" in record.getMessage()
        and str(tmp_path / "a") in record.getMessage()
    )
    assert "test ELBO" not in capsys.readouterr().out  # the library itself prints nothing
    caplog.clear()
    args = [
        "fit",
        "--dataset",
        "digits",
        "--hidden",
        "16",
        "--z-dim",
        "3",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("bernoulli VAE on digits: test ELBO ") and str(tmp_path / "b") in out
    assert not logging.getLogger("pyro_vae").handlers  # the CLI's handler is removed again


# Messages that suggest a command suggest one that works; received code needs trust (issue 20) -----


@pytest.mark.parametrize("settings", [
    {},
    dict(dataset="digits", hidden=(16, 8), z_dim=3, batch_size=64, epochs=2, seed=7),
    dict(lr=0.000123456789, beta=0.5, kl_warmup=1.5, free_bits=0.25, clip_norm=1.5, early_stopping=2,
         lr_schedule="step", lr_step=3, lr_gamma=0.5, lr_warmup=10, weight_decay=1e-5, stream=True),
    dict(data="/tmp/my data/x y.npy", test_data="/tmp/t.npy", layout="nhwc", image_size=(30, 20), arch="conv",
         channels=(8, 16), likelihood="gaussian", likelihood_options={"min_scale": 0.01}, device="cpu"),
    dict(guide="iaf", guide_options={"flow_steps": 3}, likelihood_options={"binarize": "threshold"}, particles=3,
         objective="iwae", activation="tanh", optimizer="adagrad", data_dir="/tmp/d"),
    dict(guide="/tmp/my guides.py:G", likelihood="discretized-logistic-mixture", likelihood_options={"mixtures": 4}),
])  # fmt: skip
def test_fit_command_gives_back_the_same_settings(settings, capsys):
    import shlex

    from pyro_vae.config import Config
    from pyro_vae.runs.folder import fit_command

    config = Config(**settings)
    command = fit_command(config, "runs/a b")
    words = shlex.split(command)
    assert words[:2] == ["pyro-vae", "fit"] and words[-2:] == ["--out", "runs/a b"] and "--trust-guide" not in words
    assert main([*words[1:], "--print-config"]) == 0
    assert Config.from_dict(json.loads(capsys.readouterr().out)).to_dict() == config.to_dict()
    assert fit_command(config, "r", overwrite=True).endswith("--out r --overwrite")
    assert fit_command(config.replace(guide_options={"my_option": 1}), "r") is None  # no flag for it


def test_resume_advice_names_trust_for_code():
    from pyro_vae.config import Config
    from pyro_vae.runs.folder import resume_command

    assert resume_command("r") == resume_command("r", Config()) == "pyro-vae fit --out r --resume"
    assert resume_command("r", Config(arch="x.py:N")) == "pyro-vae fit --out r --resume --trust-guide"


@pytest.mark.parametrize("when", ["config", "checkpoint", "staging"])
def test_a_full_disk_before_the_first_checkpoint_advises_a_command_that_works(tmp_path, monkeypatch, capsys, when):
    import errno
    import shlex

    import pyro_vae.runs.folder as folder  # the run folder writes config.json and the checkpoints

    out = tmp_path / "run"
    base = ["fit", "--dataset", "digits", "--hidden", "16", "--z-dim", "3", "--batch-size", "256", "--device", "cpu",
            "--lr", "0.003", "--quiet"]  # fmt: skip
    cli = [*base, "--epochs", "2", "--out", str(out)]
    if when == "staging":  # an --overwrite of an older run: the old run is kept, the advice replaces it
        assert main([*base, "--epochs", "1", "--out", str(out)]) == 0
        cli.append("--overwrite")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder, "write_config" if when == "config" else "save_checkpoint", full)
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "before the first checkpoint; free space and continue with: " in err
    advice = err.split("continue with: ")[1].strip()
    assert ("--overwrite" in advice) == (when != "config") and not (out / ".staging").exists()
    if when == "staging":
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the old run is still there
    monkeypatch.undo()
    assert main(shlex.split(advice)[1:]) == 0
    uninterrupted = tmp_path / "again"
    assert main([*base, "--epochs", "2", "--out", str(uninterrupted)]) == 0
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(uninterrupted / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_run_naming_its_architecture_as_code_is_not_opened_untrusted(trained, tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "net.py").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")
    shutil.copytree(trained / "run", tmp_path / "recv")
    meta = json.loads((tmp_path / "recv" / "config.json").read_text())
    meta["arch"] = f"{tmp_path / 'net.py'}:Net"
    (tmp_path / "recv" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"names its architecture as code, .*net.py:Net; .* --trust-guide \(or --arch"):
        load_run(tmp_path / "recv")
    assert main(["encode", str(tmp_path / "recv"), "-o", str(tmp_path / "z.npy")]) == 2
    assert not marker.exists()
    with pytest.raises(UserError, match="from another configuration than its config.json"):  # allowed: next check
        load_run(tmp_path / "recv", arch=meta["arch"])
    with pytest.raises(UserError, match="from another configuration than its config.json"):
        load_run(tmp_path / "recv", trust_guide=True)


def test_the_api_validates_as_the_cli(trained, tmp_path):
    with pytest.raises(UserError, match="the run folder must be a path"):
        load_run(None)
    with pytest.raises(UserError, match="--checkpoint must be one of best, last, got 5"):
        load_run(trained / "run", checkpoint=5)
    run = load_run(trained / "run", "cpu")
    for kwargs, message in [({"samples": "a"}, "--samples must be an integer"), ({"samples": 0}, "at least 1, got 0"),
                            ({"samples": 2, "subset": 1.5}, "--subset must be an integer")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            run.evaluate(**kwargs)
    for kwargs, message in [
        ({"out": 5}, "out must be a path"),
        ({"out": tmp_path / "x", "loggers": 5}, "logger names"),
        ({"out": tmp_path / "x", "log_images_every": "x"}, "--log-images-every must be an integer"),
    ]:
        with pytest.raises(UserError, match=message):
            fit(epochs=0, **TINY, **kwargs)
    assert not (tmp_path / "x").exists()
