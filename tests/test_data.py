"""Datasets: where they are found, their shapes and splits, and the user's own arrays."""

import gzip

import numpy as np
import pytest
import torch

from pyro_vae import UserError, load_dataset
from pyro_vae.data import DATASETS, cache_dir, data_root, seeded_split


def test_registry_lists_datasets():
    assert {"digits", "mnist", "fashion-mnist", "frey", "binarized-mnist"} <= set(DATASETS.names())
    with pytest.raises(UserError, match="unknown dataset 'cifar'; choose one of: digits"):
        DATASETS.get("cifar")


def test_digits_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.shape == (1617, 64) and a.test.shape == (180, 64) and a.image_shape == (8, 8)
    assert a.train.dtype == torch.float32 and a.train.min() == 0 and a.train.max() == 1
    assert torch.equal(a.test, b.test)
    # the 17 gray levels 0..16 are scaled by 1/16
    assert torch.allclose(a.train * 16, (a.train * 16).round())


def test_seeded_split_is_a_partition():
    x = np.arange(100)
    train, test = seeded_split(x)
    assert len(test) == 10 and sorted(np.concatenate([train, test]).tolist()) == list(range(100))


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("PYRO_VAE_DATA")
    assert data_root() == cache_dir()


@pytest.mark.parametrize("name", ["mnist", "frey", "binarized-mnist"])
def test_missing_data_says_where_it_looked(name, tmp_path, monkeypatch):
    import pyro_vae.data as data

    monkeypatch.setattr(data, "_download", lambda *a, **k: False)  # offline, whatever the machine
    monkeypatch.setattr("torchvision.datasets.MNIST.mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(UserError, match=f"{name} data not found: looked for {tmp_path}") as e:
        load_dataset(name, data_dir=tmp_path)
    assert "--data-dir" in str(e.value) and "\n" not in str(e.value)


def test_binarized_mnist_amat_parsing(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    bits = {s: rng.randint(0, 2, size=(n, 784)) for s, n in (("train", 5), ("test", 3))}
    for split, x in bits.items():
        text = "".join(" ".join(map(str, row)) + "\n" for row in x).encode()
        if split == "train":
            (folder / "binarized_mnist_train.amat").write_bytes(text)
        else:
            with gzip.open(folder / "binarized_mnist_test.amat.gz", "wb") as f:
                f.write(text)
    d = load_dataset("binarized-mnist", data_dir=tmp_path)
    assert torch.equal(d.train, torch.tensor(bits["train"], dtype=torch.float32))
    assert torch.equal(d.test, torch.tensor(bits["test"], dtype=torch.float32))
    (folder / "binarized_mnist_train.amat").write_bytes(b"0 1 2\n")
    with pytest.raises(UserError, match="not a binarized MNIST"):
        load_dataset("binarized-mnist", data_dir=tmp_path)


def test_user_arrays(tmp_path):
    x = np.random.RandomState(0).randint(0, 256, size=(50, 6, 5)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    d = load_dataset(data=tmp_path / "x.npy")
    assert d.train.shape == (45, 30) and d.test.shape == (5, 30) and d.image_shape == (6, 5)
    assert d.train.max() <= 1 and d.name == "x"  # uint8 scaled to [0, 1]
    y = np.random.RandomState(1).randn(20, 7).astype(np.float32)
    np.savez(tmp_path / "y.npz", x=y)
    torch.save(torch.from_numpy(y[:4]), tmp_path / "t.pt")
    d = load_dataset(data=tmp_path / "y.npz", test_data=tmp_path / "t.pt")
    assert torch.equal(d.train, torch.from_numpy(y)) and torch.equal(d.test, torch.from_numpy(y[:4]))
    assert d.image_shape == (1, 7)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: np.save(p, np.zeros(5)), r"shape \(N, ...\)"),
        (lambda p: p.write_bytes(b"not numpy"), "cannot read"),
    ],
)
def test_user_array_errors(tmp_path, make, match):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(UserError, match=match):
        load_dataset(data=path)


def test_user_array_suffix_and_shape_mismatch(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="must be .npy, .npz or .pt"):
        load_dataset(data=tmp_path / "x.csv")
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "b.npy", np.zeros((4, 5)))
    with pytest.raises(UserError, match="items have shape"):
        load_dataset(data=tmp_path / "a.npy", test_data=tmp_path / "b.npy")


def test_shared_mnist_through_torchvision_without_writing_there(shared_copy):
    root = shared_copy("MNIST")
    before = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    d = load_dataset("mnist", data_dir=root)
    assert d.train.shape == (60000, 784) and d.test.shape == (10000, 784)
    assert abs(d.train.mean().item() * 255 - 33.32) < 0.01  # the README's mean train pixel
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == before  # nothing unpacked there


def test_shared_frey_and_binarized_mnist(shared_copy):
    root = shared_copy("frey", "binarized_mnist")
    frey = load_dataset("frey", data_dir=root)
    assert frey.train.shape == (1769, 560) and frey.test.shape == (196, 560) and frey.image_shape == (28, 20)
    bm = load_dataset("binarized-mnist", data_dir=root)
    assert bm.train.shape == (50000, 784) and bm.test.shape == (10000, 784)
    assert bm.train.sum().item() == 5118041 and bm.test.sum().item() == 1038896  # counts from the data README
