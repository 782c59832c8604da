"""Training the models with labels (pyro_vae.train.labelled) from the CLI and from Python: the labelled draw, the
run folder's numbers, --resume, and the combinations refused with one error line."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli

import pyro_vae
from pyro_vae import load_run
from pyro_vae.data.load import with_validation
from pyro_vae.errors import UserError
from pyro_vae.train.labelled import LABELLED_SEED, draw_labelled

FAST = ["--dataset", "digits", "--hidden", "32", "--z-dim", "2", "--batch-size", "128", "--device", "cpu"]
SETTINGS = dict(dataset="digits", hidden=(32,), z_dim=2, batch_size=128, device="cpu")




def test_draw_labelled_is_balanced_seeded_and_within_the_items():
    labels = torch.arange(10).repeat(30)[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    chosen = draw_labelled(labels, 10, 23, seed=5)
    assert len(chosen) == 23 and len(set(chosen.tolist())) == 23 and torch.equal(chosen, chosen.sort().values)
    counts = torch.bincount(labels[chosen], minlength=10)
    assert counts.tolist() == [3, 3, 3] + [2] * 7  # 23 = 10 * 2 + 3: the first three classes one more
    assert torch.equal(chosen, draw_labelled(labels, 10, 23, seed=5))
    assert not torch.equal(chosen, draw_labelled(labels, 10, 23, seed=6))
    with pytest.raises(UserError, match="fewer than one"):
        draw_labelled(labels, 10, 9, seed=0)
    with pytest.raises(UserError, match="more than the 300"):
        draw_labelled(labels, 10, 10 * 31, seed=0)
    with pytest.raises(UserError, match="31 items of class 0, but the training items hold 30"):
        draw_labelled(torch.cat([labels, torch.full((10,), 9)]), 10, 10 * 31, seed=0)


def test_refusals_before_any_training(capsys, tmp_path):
    assert_user_error(run_cli(capsys, "fit", *FAST, "--semi-supervised", "--objective", "iwae", "--particles", "2",
                              "--out", tmp_path / "a"), "TraceEnum_ELBO", "--objective iwae")  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", *FAST, "--semi-supervised", "--beta", "2", "--out", tmp_path / "b"),
                      "--beta")  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", *FAST, "--conditional", "--semi-supervised", "--out", tmp_path / "c"),
                      "exclude each other")  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", *FAST, "--labelled", "20", "--out", tmp_path / "d"), "--semi-supervised")
    assert_user_error(run_cli(capsys, "fit", *FAST, "--semi-supervised", "--labelled", "5", "--out", tmp_path / "e"),
                      "fewer than one labelled item per class")  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", *FAST, "--conditional", "--devices", "2", "--out", tmp_path / "f"),
                      "--devices")  # fmt: skip
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.uint8))
    assert_user_error(run_cli(capsys, "fit", "--data", unlabelled, "--conditional", "--out", tmp_path / "g"),
                      "needs labelled data")  # fmt: skip
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.ones((40, 6), np.uint8), y_train=np.full(40, -1), x_test=np.ones((10, 6), np.uint8),
             y_test=np.zeros(10))  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", "--data", bad, "--conditional", "--out", tmp_path / "h"), "class indices")
    assert not any((tmp_path / name).exists() for name in "abcdefgh")


@pytest.mark.slow
def test_semi_supervised_run_folder_resume_and_evaluate(tmp_path, capsys):
    settings = dict(SETTINGS, semi_supervised=True, labelled=30, quiet=True)
    full = pyro_vae.fit(epochs=2, out=tmp_path / "full", **settings)
    pyro_vae.fit(epochs=1, out=tmp_path / "part", **settings)
    resumed = pyro_vae.fit(epochs=2, out=tmp_path / "part", resume=True, **settings)
    assert [m["train_elbo"] for m in full.metrics] == [m["train_elbo"] for m in resumed.metrics]
    assert [m["valid_error"] for m in full.metrics] == [m["valid_error"] for m in resumed.metrics]
    assert full.final["test_error"] == resumed.final["test_error"]
    meta = json.loads((tmp_path / "full" / "config.json").read_text())
    assert meta["num_classes"] == 10 and meta["labelled"] == 30 and meta["labelled_seed"] == LABELLED_SEED
    train = with_validation(pyro_vae.load_dataset("digits"), "digits")  # the training split the run draws from
    assert len(train.train) == meta["n_train"] - meta["n_valid"]
    items = torch.as_tensor(meta["labelled_items"])
    assert torch.bincount(train.labels[items].long(), minlength=10).tolist() == [3] * 10
    run = load_run(tmp_path / "full")
    assert 0 <= run.final["test_error"] <= 1
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "full", "--samples", "3", "--json")
    result = json.loads(out)
    assert code == 0 and result["items"] == run.meta["n_test"]
    assert result["test_error"] == pytest.approx(run.final["test_error"])  # the classifier is deterministic
    assert result["test_log_likelihood"] >= result["test_elbo"] - 1.0
    code, out, err = run_cli(capsys, "sample", tmp_path / "full", "--label", "3", "-n", "16", "-o", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0 and "class 3" in out
    assert_user_error(run_cli(capsys, "sample", tmp_path / "full", "--label", "10", "-o", tmp_path / "t.png"),
                      "--label", "0..9")  # fmt: skip
    code, out, err = run_cli(capsys, "encode", tmp_path / "full", "-o", tmp_path / "z.npy")  # tests/runs/test_latent.py
    assert code == 0 and "q(z|x,y), y: the labels of the test split" in out, err


@pytest.mark.slow
def test_conditional_run_from_the_cli(tmp_path, capsys):
    out = tmp_path / "cvae"
    code, _, err = run_cli(capsys, "fit", *FAST, "--conditional", "--epochs", "2", "--out", out, "--quiet")
    assert code == 0, err
    assert (out / "samples.png").stat().st_size > 0 and (out / "reconstructions.png").stat().st_size > 0
    final = json.loads((out / "final.json").read_text())
    assert "test_error" not in final and final["test_elbo"] < 0
    code, text, _ = run_cli(capsys, "evaluate", out, "--samples", "5")
    assert code == 0 and "log p(x | y)" in text
    run = load_run(out)
    x = run.test_data()[:4]
    assert run.reconstruct(x, labels=[0, 1, 2, 3]).shape == (4, 1, 8, 8)  # items in the data's shape (issue 25)
    assert_user_error(run_cli(capsys, "sample", tmp_path / "cvae", "--label", "-1", "-o", tmp_path / "t.png"), "0..9")
    with pytest.raises(UserError, match="needs the items' labels"):
        run.reconstruct(x)
    with pytest.raises(UserError, match="one label per item"):
        run.reconstruct(x, labels=[0, 1])
