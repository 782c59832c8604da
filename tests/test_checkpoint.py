"""Run-folder files without training: checkpoints checked on load, atomic writes that refuse links,
stale temporary files, the run lock, metrics repair, optimizers the fast path may fuse."""

import json
import os

import pytest
import torch

import pyro.optim

from pyro_vae import UserError
from pyro_vae.checkpoint import FORMAT, atomic_write_text, clean_temp_files, load_checkpoint, save_checkpoint
from pyro_vae.runs.folder import RunLock, append_metrics, read_metrics, write_metrics
from pyro_vae.train.build import fusable_optimizer, speed_for


def good_state():
    return {"config": {"dataset": "digits"}, "epoch": 3, "model": {"w": torch.ones(2, 2)}, "optimizer": {},
            "rng": {"torch": torch.get_rng_state()}}  # fmt: skip


def test_checkpoint_round_trip_and_damage(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, good_state())
    assert load_checkpoint(path)["epoch"] == 3
    for damage, words in [
        ({"format": FORMAT}, "lacks config, epoch, model, optimizer, rng"),
        ({k: v for k, v in {"format": FORMAT, **good_state()}.items() if k != "model"}, "lacks model"),
        ({"format": FORMAT, **good_state(), "epoch": "3"}, "epoch entry has the wrong type"),
        ({"format": FORMAT, **good_state(), "model": {"w": "text"}}, "model entry has the wrong type"),
        (
            {"format": FORMAT, **good_state(), "model": {"w": torch.tensor([1.0, float("nan")])}},
            "parameter w holds NaN",
        ),
        ([1, 2], "not a pyro-vae checkpoint"),
    ]:
        torch.save(damage, path)
        with pytest.raises(UserError, match=words):
            load_checkpoint(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="corrupt or unreadable") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)  # never advises unsafe loading


def test_atomic_writes_refuse_links_and_temp_files_are_cleaned(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("mine")
    (tmp_path / "run").mkdir()
    os.symlink(target, tmp_path / "run" / "evaluation.json")
    with pytest.raises(UserError, match="symbolic link"):
        atomic_write_text(tmp_path / "run" / "evaluation.json", "{}")
    assert target.read_text() == "mine"
    for name in (".checkpoint.pt.abc123.tmp", ".metrics.jsonl.x.tmp"):
        (tmp_path / "run" / name).write_bytes(b"partial")
    (tmp_path / "run" / "keep.tmp").write_text("not ours")  # only hidden .NAME.*.tmp files are ours
    assert clean_temp_files(tmp_path / "run") == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["evaluation.json", "keep.tmp"]


def test_run_lock_refuses_a_second_holder_and_takes_over_stale_ones(tmp_path):
    (tmp_path / ".lock").write_text("999999999")  # left by a killed process: no flock on it
    first = RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    with pytest.raises(UserError, match=f"in use by another pyro-vae run \\(process {os.getpid()}\\)"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path):  # free again
        pass


def test_metrics_are_written_whole_and_damaged_files_are_repaired(tmp_path):
    records = [{"epoch": e, "test_elbo": -30.0 + e} for e in (1, 2)]
    write_metrics(tmp_path, records)
    append_metrics(tmp_path, {"epoch": 3, "test_elbo": -27.0})
    assert [m["epoch"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:  # what a full disk left mid-append (older versions)
        f.write('{"epoch": 4, "train_elbo": -25.35, "test_el')
    assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3]
    assert [m["epoch"] for m in read_metrics(path, upto_epoch=2)] == [1, 2]
    append_metrics(tmp_path, {"epoch": 4, "test_elbo": -26.0})  # the partial line is repaired away
    lines = path.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    path.write_bytes(os.urandom(300))
    assert read_metrics(path) == []
    path.write_text('{"epoch": 1}\n[1, 2]\n{"epoch": "2"}\n{"epoch": 1}\n{"epoch": 2}\n')  # junk, repeats
    assert read_metrics(path) == [{"epoch": 1}, {"epoch": 2}]


def test_fusable_optimizers():
    from pyro_vae.speed import Speed

    adam = pyro.optim.Adam({"lr": 1e-3})
    assert fusable_optimizer(adam) and speed_for(Speed(), adam).optimizer == "fused"
    unfusable = [
        pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-3}, "gamma": 0.5}),
        pyro.optim.Adam(lambda module, name: {"lr": 1e-3 if "weight" in name else 1e-2}),
        pyro.optim.Adam({"lr": 1e-3}, {"clip_norm": 1.0}),
    ]
    for optimizer in unfusable:
        assert not fusable_optimizer(optimizer)
        assert speed_for(Speed(), optimizer).optimizer == "pyro"
        assert speed_for(Speed(optimizer="torch", capture=False), optimizer) == Speed(optimizer="pyro", capture=False)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_raw_pickle_is_refused_without_torchs_warning(tmp_path, protocol):
    import pickle
    import warnings

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"format": "x", "epoch": 1}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="corrupt or unreadable|not a pyro-vae checkpoint"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []
