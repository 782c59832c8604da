"""Datasets: where they are found, their shapes and splits, and the user's own arrays."""

import gzip

import numpy as np
import pytest
import torch

import pyro

from pyro_vae import UserError, load_dataset
from pyro_vae.data.dataset import seeded_split
from pyro_vae.data.files import DataWarning, load_arrays
from pyro_vae.data.sources import DATASETS, cache_dir, data_root


def test_registry_lists_datasets():
    assert {"digits", "mnist", "fashion-mnist", "frey", "binarized-mnist"} <= set(DATASETS.names())
    with pytest.raises(UserError, match="unknown dataset 'cifar'; choose one of: digits"):
        DATASETS.get("cifar")


def test_digits_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.shape == (1617, 1, 8, 8) and a.test.shape == (180, 1, 8, 8) and a.image_shape == (1, 8, 8)
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
    import pyro_vae.data.sources as data

    monkeypatch.setattr(data, "_download", lambda *a, **k: False)  # offline, whatever the machine
    monkeypatch.setattr("torchvision.datasets.MNIST.mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(UserError, match=f"{name} data not found: looked for {tmp_path}") as e:
        load_dataset(name, data_dir=tmp_path)
    assert "--data-dir" in str(e.value) and "\n" not in str(e.value)


def test_binarized_mnist_amat_parsing(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    bits = {s: rng.randint(0, 2, size=(n, 784)) for s, n in (("train", 5), ("test", 3), ("valid", 2))}
    for split, x in bits.items():
        text = "".join(" ".join(map(str, row)) + "\n" for row in x).encode()
        if split != "test":
            (folder / f"binarized_mnist_{split}.amat").write_bytes(text)
        else:
            with gzip.open(folder / "binarized_mnist_test.amat.gz", "wb") as f:
                f.write(text)
    d = load_dataset("binarized-mnist", data_dir=tmp_path)
    assert torch.equal(d.train.flatten(1), torch.tensor(bits["train"], dtype=torch.float32))
    assert torch.equal(d.test.flatten(1), torch.tensor(bits["test"], dtype=torch.float32))
    assert torch.equal(d.valid.flatten(1), torch.tensor(bits["valid"], dtype=torch.float32))  # the official validation file
    (folder / "binarized_mnist_train.amat").write_bytes(b"0 1 2\n")
    with pytest.raises(UserError, match="not a binarized MNIST"):
        load_dataset("binarized-mnist", data_dir=tmp_path)


def test_user_arrays(tmp_path):
    x = np.random.RandomState(0).randint(0, 256, size=(50, 6, 5)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    d = load_dataset(data=tmp_path / "x.npy")
    assert d.train.shape == (45, 1, 6, 5) and d.test.shape == (5, 1, 6, 5) and d.image_shape == (1, 6, 5)
    assert d.train.max() <= 1 and d.name == "x"  # uint8 scaled to [0, 1]
    y = np.random.RandomState(1).randn(20, 7).astype(np.float32)
    np.savez(tmp_path / "y.npz", x=y)
    torch.save(torch.from_numpy(y[:4]), tmp_path / "t.pt")
    d = load_dataset(data=tmp_path / "y.npz", test_data=tmp_path / "t.pt")
    assert torch.equal(d.train.flatten(1), torch.from_numpy(y)) and torch.equal(d.test.flatten(1), torch.from_numpy(y[:4]))
    assert d.image_shape == (1, 1, 7)


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
    assert d.train.shape == (60000, 1, 28, 28) and d.test.shape == (10000, 1, 28, 28)
    assert abs(d.train.mean().item() * 255 - 33.32) < 0.01  # the README's mean train pixel
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == before  # nothing unpacked there


def test_shared_frey_and_binarized_mnist(shared_copy):
    root = shared_copy("frey", "binarized_mnist")
    frey = load_dataset("frey", data_dir=root)
    assert frey.train.shape == (1769, 1, 28, 20) and frey.test.shape == (196, 1, 28, 20) and frey.image_shape == (1, 28, 20)
    bm = load_dataset("binarized-mnist", data_dir=root)
    assert bm.train.shape == (50000, 1, 28, 28) and bm.test.shape == (10000, 1, 28, 28)
    assert bm.valid.shape == (10000, 1, 28, 28)
    assert bm.train.sum().item() == 5118041 and bm.test.sum().item() == 1038896  # counts from the data README


# What the numbers in a user's file mean (issue 11, kind 1) ---------------------------------------


RNG = np.random.RandomState(0)
BITS = RNG.randint(0, 2, size=(40, 4, 5))  # 0/1 images
PIXELS = RNG.randint(0, 256, size=(40, 4, 5))  # 8-bit images
PIXELS[0, 0, 0], PIXELS[0, 0, 1] = 0, 255


def _split(source):
    """The train/test split load_arrays makes of ``source`` (the same seeded permutation), flattened."""
    train, test = seeded_split(np.asarray(source).reshape(len(source), -1))
    return torch.as_tensor(train.astype(np.float32)), torch.as_tensor(test.astype(np.float32))


def _load(tmp_path, array, test=None, **kw):
    np.save(tmp_path / "x.npy", array)
    if test is not None:
        np.save(tmp_path / "t.npy", test)
    return load_arrays(tmp_path / "x.npy", tmp_path / "t.npy" if test is not None else None, **kw)


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.int64, np.int8, np.uint16])
def test_binary_integer_and_bool_arrays_are_binary_not_k_over_255(tmp_path, dtype):
    d = _load(tmp_path, BITS.astype(dtype))
    train, test = _split(BITS)
    assert d.levels == 2
    assert torch.equal(d.train.flatten(1), train) and torch.equal(d.test.flatten(1), test)  # values 0.0 / 1.0, not 1/255
    assert abs(torch.cat([d.train.flatten(1), d.test.flatten(1)]).mean().item() - BITS.mean()) < 1e-6


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int16, np.uint32])
def test_integer_pixels_are_8_bit_levels(tmp_path, dtype):
    d = _load(tmp_path, PIXELS.astype(dtype))
    train, test = _split(PIXELS)
    assert d.levels == 256 and d.train.dtype == torch.float32
    assert torch.equal(d.train.flatten(1), train / 255) and torch.equal(d.test.flatten(1), test / 255)
    assert torch.equal((d.train.flatten(1) * 255).round(), train)


@pytest.mark.parametrize("values", [np.array([-1, 0, 5]), np.array([0, 3, 256]), np.array([0, 40000])])
def test_integers_outside_0_255_are_refused(tmp_path, values):
    x = np.resize(values, (6, 3)).astype(np.int32)
    with pytest.raises(UserError, match=r"int32 values from -?\d+ to \d+; integer arrays are read as binary") as e:
        _load(tmp_path, x)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "source,levels",
    [
        (RNG.randn(30, 7), None),  # real values, negative too: taken as given
        (PIXELS / 255.0, 256),  # 8-bit levels stored as floats
        (BITS * 1.0, 2),
        (PIXELS * 1.0, None),  # floats 0..255 are not rescaled
        (RNG.rand(30, 7) * 0.5 + 0.25, None),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_arrays_are_taken_as_given(tmp_path, source, levels, dtype):
    source = source.astype(dtype)
    d = _load(tmp_path, source)
    train, test = _split(source)  # float16/float64 -> float32, the values as given
    assert torch.equal(d.train.flatten(1), train) and torch.equal(d.test.flatten(1), test)
    assert d.levels == (None if dtype == np.float16 and levels == 256 else levels)  # float16 k/255 is off the grid


@pytest.mark.parametrize(
    "array,dtype_name",
    [
        (np.ones((4, 3), dtype=np.complex64), "complex64"),
        (np.full((4, 3), "a"), "<U1"),
        (np.array(["2020-01-01"] * 12, dtype="datetime64[D]").reshape(4, 3), "datetime64"),
        (np.zeros((4, 3), dtype=np.timedelta64), "timedelta64"),
    ],
)
def test_dtypes_that_cannot_be_data_are_refused(tmp_path, array, dtype_name):
    with pytest.raises(UserError, match=f"holds {dtype_name}.* values, which cannot be data") as e:
        _load(tmp_path, array)
    assert "\n" not in str(e.value)


def test_object_arrays_are_refused_without_loading(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="holds an object array, which cannot be data"):
        load_arrays(tmp_path / "o.npy")
    np.savez(tmp_path / "o.npz", x=np.array([[1, None]], dtype=object))
    with pytest.raises(UserError, match="object array"):
        load_arrays(tmp_path / "o.npz")


def test_train_and_test_each_read_by_their_own_dtype(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing interpretations: no message
        d = _load(tmp_path, PIXELS.astype(np.uint8), (PIXELS[:5] / 255).astype(np.float32))
        assert d.levels == 256 and torch.equal(d.test.flatten(1) * 255, torch.as_tensor(PIXELS[:5].reshape(5, -1) * 1.0))
        assert torch.equal(d.train.flatten(1) * 255, torch.as_tensor(PIXELS.reshape(40, -1) * 1.0))
        d = _load(tmp_path, BITS.astype(np.uint8), BITS[:5].astype(np.float32))
        assert d.levels == 2 and d.test.sum() == BITS[:5].sum()
        d = _load(tmp_path, BITS.astype(bool), BITS[:5].astype(np.uint8))
        assert d.levels == 2


def test_train_test_mismatch_reconciled_with_one_line(tmp_path):
    message = "^--data reads as 8-bit .* but --test-data as binary .* both are used as 8-bit"
    with pytest.warns(DataWarning, match=message):
        d = _load(tmp_path, PIXELS.astype(np.uint8), BITS[:5].astype(np.float32))
    assert d.levels == 256 and torch.equal(d.test.flatten(1), torch.as_tensor(BITS[:5].reshape(5, -1) * 1.0))
    with pytest.warns(DataWarning, match="both float.*continuous"):
        d = _load(tmp_path, RNG.rand(20, 3).astype(np.float32), (PIXELS[:5, 0, :3] / 255).astype(np.float32))
    assert d.levels is None
    with pytest.warns(DataWarning, match="both float.*8-bit"):
        d = _load(tmp_path, (PIXELS / 255).astype(np.float32), BITS[:5].astype(np.float64))
    assert d.levels == 256


@pytest.mark.parametrize(
    "train,test,match",
    [
        (PIXELS.astype(np.uint8), BITS[:5].astype(np.uint8), "both integer arrays"),
        (BITS.astype(bool), PIXELS[:5].astype(np.int64), "both integer arrays"),
        (PIXELS.astype(np.uint8), PIXELS[:5].astype(np.float32), "not on the 256-level grid"),  # unscaled floats
        (PIXELS.astype(np.uint8), RNG.rand(5, 4, 5).astype(np.float32), "not on the 256-level grid"),
        ((PIXELS / 255).astype(np.float32), BITS[:5].astype(np.uint8), "float values of --data are not on the 2-level"),
    ],
)
def test_train_test_mismatch_refused(tmp_path, train, test, match):
    with pytest.raises(UserError, match=match) as e:
        _load(tmp_path, train, test)
    assert "\n" not in str(e.value)


# User files read as users mean them (kind 4) -----------------------------------------------------

KERAS = {"x_test": PIXELS[:10].astype(np.uint8), "x_train": PIXELS[10:].astype(np.uint8),
         "y_train": np.arange(10, 40), "y_test": np.arange(10)}  # fmt: skip


@pytest.mark.parametrize("pair", [("x_train", "x_test"), ("X_train", "X_test"), ("train", "test")])
def test_npz_train_test_pair_taken_from_the_file(tmp_path, pair):
    np.savez(tmp_path / "d.npz", **{pair[1]: KERAS["x_test"], pair[0]: KERAS["x_train"], "other": np.zeros(3)})
    d = load_arrays(tmp_path / "d.npz")
    assert torch.equal(d.train.flatten(1) * 255, torch.as_tensor(KERAS["x_train"].reshape(30, -1) * 1.0))  # x_train trains
    assert torch.equal(d.test.flatten(1) * 255, torch.as_tensor(KERAS["x_test"].reshape(10, -1) * 1.0))
    assert d.levels == 256 and d.image_shape == (1, 4, 5)


def test_npz_keras_layout_keeps_labels_and_refuses_a_second_test_set(tmp_path):
    np.savez(tmp_path / "mnist.npz", **KERAS)
    d = load_arrays(tmp_path / "mnist.npz")
    assert d.train.shape == (30, 1, 4, 5) and d.test.shape == (10, 1, 4, 5)
    assert d.labels.tolist() == list(range(10, 40)) and d.test_labels.tolist() == list(range(10))
    np.save(tmp_path / "t.npy", KERAS["x_test"])
    with pytest.raises(UserError, match="holds its own test set \\(x_test\\), and --test-data"):
        load_arrays(tmp_path / "mnist.npz", tmp_path / "t.npy")
    with pytest.raises(UserError, match="holds a train/test pair \\(x_train, x_test\\); pass it as --data alone"):
        load_arrays(tmp_path / "t.npy", tmp_path / "mnist.npz")


def test_npz_single_array_is_the_training_data_with_its_labels_split_alike(tmp_path):
    x = np.repeat(np.arange(40, dtype=np.uint8)[:, None], 6, axis=1)  # item i holds the value i
    np.savez(tmp_path / "a.npz", x)  # saved as arr_0
    d = load_arrays(tmp_path / "a.npz")
    assert (d.train.shape, d.test.shape, d.levels) == ((36, 6), (4, 6), 256)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(40) * 10)
    d = load_arrays(tmp_path / "b.npz")
    assert torch.equal((d.train[:, 0] * 255).round().long() * 10, d.labels)
    assert torch.equal((d.test[:, 0] * 255).round().long() * 10, d.test_labels)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=np.arange(40))  # a training array alone: seeded split
    assert load_arrays(tmp_path / "c.npz").train.shape == (36, 6)
    np.savez(tmp_path / "t.npz", x_test=x[:3], y_test=np.arange(3))
    d = load_arrays(tmp_path / "c.npz", tmp_path / "t.npz")
    assert d.train.shape == (40, 6) and d.test.shape == (3, 6) and d.test_labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("column", [False, True])
def test_label_columns_n_by_1_are_read_as_n_labels(tmp_path, column):
    from torch.utils.data import TensorDataset

    shape = (lambda y: y.reshape(-1, 1)) if column else (lambda y: y)
    x = np.repeat(np.arange(40, dtype=np.uint8)[:, None], 6, axis=1)  # item i holds the value i
    y = (np.arange(40) * 7) % 10  # integer class labels, not sorted
    np.savez(tmp_path / "keras.npz", x_train=x[10:], y_train=shape(y[10:]), x_test=x[:10], y_test=shape(y[:10]))
    d = load_arrays(tmp_path / "keras.npz")
    assert d.labels.shape == (30,) and d.labels.tolist() == y[10:].tolist() and d.test_labels.tolist() == y[:10].tolist()
    np.savez(tmp_path / "xy.npz", x=x, y=shape(y))  # one array: the labels split with their items
    d = load_arrays(tmp_path / "xy.npz")
    item = (d.train[:, 0] * 255).round().long()
    assert d.labels.shape == (36,) and d.labels.tolist() == y[item.numpy()].tolist()
    np.savez(tmp_path / "t.npz", x_test=x[:3], y_test=shape(y[:3]))  # --test-data with its labels
    assert load_arrays(tmp_path / "xy.npz", tmp_path / "t.npz").test_labels.tolist() == y[:3].tolist()
    for obj in ((torch.from_numpy(x), torch.from_numpy(shape(y))), TensorDataset(torch.from_numpy(x), torch.from_numpy(shape(y)))):
        torch.save(obj, tmp_path / "seq.pt")
        d = load_arrays(tmp_path / "seq.pt")
        item = (d.train[:, 0] * 255).round().long()
        assert d.labels.shape == (36,) and d.labels.tolist() == y[item.numpy()].tolist()


@pytest.mark.parametrize("bad", [(40, 2), (1, 40), (40, 1, 1), (39,), (39, 1)])
def test_labels_of_other_shapes_are_refused_naming_the_shape(tmp_path, bad):
    from torch.utils.data import TensorDataset

    x = np.zeros((40, 6), np.uint8)
    labels = np.zeros(bad, np.int64)  # one-hot columns, a row, an extra axis, a label missing
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    with pytest.raises(UserError, match=rf"d.npz holds labels of shape \({bad[0]}, ?{', '.join(map(str, bad[1:]))}\) "
                                        r"for 40 items; labels must be one per item, shape \(40,\) or \(40, 1\)") as e:
        load_arrays(tmp_path / "d.npz")
    assert "\n" not in str(e.value)
    torch.save(TensorDataset(torch.from_numpy(x), torch.from_numpy(labels)) if bad[0] == 40 else (torch.from_numpy(x), torch.from_numpy(labels)),
               tmp_path / "d.pt")  # fmt: skip
    with pytest.raises(UserError, match=r"second item \(shape .*\) is not labels of shape \(40,\) or \(40, 1\)"):
        load_arrays(tmp_path / "d.pt")


@pytest.mark.parametrize(
    "arrays,keys",
    [
        ({"a": BITS, "b": BITS}, "a, b"),
        ({"x_test": BITS}, "x_test"),  # a test set without a training set
        ({"x": BITS, "data": BITS}, "x, data"),
        ({"x": BITS, "x_test": BITS}, "x, x_test"),
        ({"y": np.arange(40)}, "y"),  # only labels
    ],
)
def test_npz_unknown_layouts_refused_listing_the_keys(tmp_path, arrays, keys):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=f"holds arrays {keys}: cannot tell which to train on; name the arrays x_train"):
        load_arrays(tmp_path / "d.npz")


def test_npz_with_two_pairs_or_no_arrays_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=BITS, x_test=BITS, train=BITS, test=BITS)
    with pytest.raises(UserError, match="several train/test pairs"):
        load_arrays(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz")
    with pytest.raises(UserError, match="holds no arrays"):
        load_arrays(tmp_path / "e.npz")


def test_pt_layouts(tmp_path):
    from torch.utils.data import TensorDataset

    x, y = torch.from_numpy(PIXELS.astype(np.uint8)), torch.arange(40)
    train, test = _split(PIXELS)
    layouts = [("t", x), ("tuple", (x, y)), ("list", [x]), ("ds", TensorDataset(x, y)), ("d1", {"x": x, "y": y})]
    for name, obj in layouts:
        torch.save(obj, tmp_path / f"{name}.pt")
        d = load_arrays(tmp_path / f"{name}.pt")
        assert torch.equal(d.train.flatten(1), train / 255) and torch.equal(d.test.flatten(1), test / 255) and d.levels == 256, name
        if name in ("tuple", "ds", "d1"):
            assert torch.equal(d.labels, torch.as_tensor(seeded_split(np.arange(40))[0])), name
    torch.save({"x_train": x[10:], "x_test": x[:10]}, tmp_path / "pair.pt")
    d = load_arrays(tmp_path / "pair.pt")
    assert torch.equal(d.train.flatten(1), torch.as_tensor(PIXELS[10:].reshape(30, -1) / 255, dtype=torch.float32))
    torch.save(torch.from_numpy(BITS).bool(), tmp_path / "b.pt")
    assert load_arrays(tmp_path / "b.pt").levels == 2
    torch.save(torch.rand(20, 3).bfloat16(), tmp_path / "bf.pt")
    assert load_arrays(tmp_path / "bf.pt").train.dtype == torch.float32


@pytest.mark.parametrize(
    "obj,match",
    [
        (lambda: (torch.rand(8, 3), torch.rand(4, 3)), "second item .* is not labels"),  # (train, test): say how
        (lambda: (torch.rand(8, 3), torch.arange(8), torch.arange(8)), "tuple of 3 items"),
        (lambda: [], "list of 0 items"),
        (lambda: {"a": torch.rand(8, 3), "b": torch.rand(8, 3)}, "holds arrays a, b"),
        (lambda: {1: torch.rand(8, 3)}, "its keys must be names"),
        (lambda: {"x": [1, 2]}, "x is a list, not a tensor"),
        (lambda: "text", "holds a str"),
        (lambda: torch.nn.Linear(2, 2), "holds objects other than tensors.*torch.nn.modules.linear.Linear"),
    ],
)
def test_pt_refusals_are_one_line_and_never_advise_unsafe_loading(tmp_path, obj, match):
    torch.save(obj(), tmp_path / "x.pt")
    with pytest.raises(UserError, match=match) as e:
        load_arrays(tmp_path / "x.pt")
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)


def test_damaged_pt_refused(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read --data file .*x.pt") as e:
        load_arrays(tmp_path / "x.pt")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


# Degenerate sizes (kind 7, the data part) --------------------------------------------------------


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((0, 3)), "holds no items"),
        (np.zeros((5, 0)), r"items with no values \(shape \(5, 0\)\)"),
        (np.zeros((5, 3, 0), dtype=np.uint8), "items with no values"),
        (np.zeros(5), r"shape \(N, ...\)"),
        (np.zeros((1, 8), dtype=np.uint8), "holds 1 item; a train/test split needs at least 2"),
    ],
)
def test_degenerate_sizes_refused(tmp_path, array, match):
    with pytest.raises(UserError, match=match):
        _load(tmp_path, array)


def test_degenerate_test_file_refused_and_one_item_with_a_test_set_loads(tmp_path):
    with pytest.raises(UserError, match="--test-data file .* holds no items"):
        _load(tmp_path, PIXELS.astype(np.uint8), np.zeros((0, 4, 5), np.uint8))
    np.savez(tmp_path / "e.npz", x_train=PIXELS, x_test=np.zeros((0, 4, 5)))
    with pytest.raises(UserError, match=r"\(x_test\) holds no items"):
        load_arrays(tmp_path / "e.npz")
    d = _load(tmp_path, PIXELS[:1].astype(np.uint8), PIXELS[:1].astype(np.uint8))
    assert d.train.shape == d.test.shape == (1, 1, 4, 5) and torch.equal(d.train, d.test)
    d = _load(tmp_path, PIXELS[:2].astype(np.uint8))
    assert d.train.shape == d.test.shape == (1, 1, 4, 5)


def test_cli_refusals_are_one_error_line(tmp_path, capsys):
    from pyro_vae.cli import main

    np.save(tmp_path / "one.npy", PIXELS[:1].astype(np.uint8))
    np.save(tmp_path / "c.npy", np.ones((4, 3), np.complex128))
    for name in ("one", "c"):
        assert main(["fit", "--data", str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --data file") and err.count("\n") == 1


def test_batch_larger_than_the_data_runs_one_batch(tmp_path):
    import json

    import pyro_vae

    np.save(tmp_path / "x.npy", BITS[:12].astype(np.uint8))
    run = pyro_vae.fit(data=str(tmp_path / "x.npy"), batch_size=128, epochs=2, hidden=(8,), z_dim=2, device="cpu",
                       out=tmp_path / "run", quiet=True)  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # 12 items: 1 for the test set, then 1 of the 11 training items for validation
    assert (config["n_train"], config["n_valid"], config["n_test"], config["levels"]) == (11, 1, 1, 2)
    assert len(run.metrics) == 2 and all(np.isfinite(m["valid_elbo"]) for m in run.metrics)


# The data's fingerprint --------------------------------------------------------------------------


def test_fingerprint_follows_the_values(tmp_path):
    a = _load(tmp_path, PIXELS.astype(np.uint8))
    fp = a.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0 and a.fingerprint() is fp  # hex sha256, cached
    assert _load(tmp_path, (PIXELS / 255).astype(np.float32)).fingerprint() == fp  # same values, other dtype
    assert a.to("cpu").fingerprint() == fp
    changed = PIXELS.copy()
    changed[17, 2, 3] = (changed[17, 2, 3] + 1) % 256
    assert _load(tmp_path, changed.astype(np.uint8)).fingerprint() != fp
    np.save(tmp_path / "t.npy", PIXELS[:3].astype(np.uint8))
    d = load_arrays(tmp_path / "x.npy", tmp_path / "t.npy")  # another test set
    assert d.fingerprint() != fp
    swapped = type(a)(a.name, a.test, a.train, a.image_shape, a.levels)
    assert swapped.fingerprint() != fp
    assert load_dataset("digits").fingerprint() == load_dataset("digits").fingerprint()


# Images keep their shape (issue 12) ---------------------------------------------------------------


def test_registered_image_datasets_are_listed():
    assert {"cifar10", "svhn", "celeba", "patches"} <= set(DATASETS.names())


def test_user_images_nchw_and_nhwc_give_the_same_items(tmp_path):
    rng = np.random.default_rng(3)
    nchw = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", nchw)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    a, b = load_arrays(tmp_path / "nchw.npy"), load_arrays(tmp_path / "nhwc.npy")
    assert a.train.shape == (18, 3, 8, 8) and a.image_shape == (3, 8, 8) and a.levels == 256
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    _, test = seeded_split(nchw)
    assert torch.equal(a.test * 255, torch.as_tensor(test, dtype=torch.float32))  # k / 255 exactly, channels first
    assert a.x_dim == 192 and a.item_shape == (3, 8, 8)


def test_ambiguous_image_layout_is_refused_naming_the_flag(tmp_path):
    x = np.zeros((10, 3, 8, 3), dtype=np.uint8)  # channels first or last?
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(UserError, match=r"--layout nchw\|nhwc"):
        load_arrays(tmp_path / "x.npy")
    np.save(tmp_path / "y.npy", np.zeros((10, 2, 8, 8), dtype=np.uint8))  # neither axis is 1, 3 or 4 channels
    with pytest.raises(UserError, match=r"--layout nchw\|nhwc"):
        load_arrays(tmp_path / "y.npy")
    assert load_arrays(tmp_path / "x.npy", layout="nchw").train.shape == (9, 3, 8, 3)
    assert load_arrays(tmp_path / "x.npy", layout="nhwc").train.shape == (9, 3, 3, 8)
    assert load_arrays(tmp_path / "y.npy", layout="nchw").item_shape == (2, 8, 8)
    np.save(tmp_path / "v.npy", np.zeros((10, 6), dtype=np.float32))
    with pytest.raises(UserError, match="--layout applies to 4-d"):
        load_arrays(tmp_path / "v.npy", layout="nchw")


def test_vectors_stay_vectors_and_gray_images_get_a_channel(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((10, 6)).astype(np.float32))
    np.save(tmp_path / "g.npy", np.zeros((10, 5, 7), dtype=np.uint8))
    assert load_arrays(tmp_path / "v.npy").train.shape == (9, 6)
    g = load_arrays(tmp_path / "g.npy")
    assert g.train.shape == (9, 1, 5, 7) and g.image_shape == (1, 5, 7)


def test_fingerprint_is_that_of_the_flat_values():
    a = load_dataset("digits")
    flat = type(a)(a.name, a.train.flatten(1), a.test.flatten(1), a.image_shape, a.levels)
    assert a.fingerprint() == flat.fingerprint()


def test_patches_dataset_is_offline_colour_8_bit():
    from pyro_vae.data.images import load_sample_patches

    d = load_dataset("patches")
    ref = load_sample_patches()
    assert d.train.shape == (len(ref.train), 3, 32, 32) and d.image_shape == (3, 32, 32) and d.levels == 256
    assert torch.equal(d.test, torch.as_tensor(ref.test.images).float() / 255)


def test_cifar10_svhn_celeba_read_from_the_data_folder_or_say_where_they_looked(tmp_path, monkeypatch):
    import scipy.io
    from test_images import write_cifar

    monkeypatch.setattr("pyro_vae.data.sources._writable", lambda path: False)  # a read-only folder: nothing is fetched
    with pytest.raises(UserError, match=r"cifar10 data not found: looked for .*cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)
    rows, labels = write_cifar(tmp_path, n=3)
    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.train.shape == (15, 3, 32, 32) and d.test.shape == (2, 3, 32, 32) and d.levels == 256
    assert torch.equal(d.test.flatten(1) * 255, torch.as_tensor(rows["test_batch"], dtype=torch.float32))
    assert d.test_labels.tolist() == labels["test_batch"]
    rng = np.random.default_rng(1)
    (tmp_path / "svhn").mkdir()
    for part, n in (("train", 4), ("test", 2)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(tmp_path / "svhn" / f"{part}_32x32.mat", {"X": x, "y": np.full((n, 1), 10)})
    s = load_dataset("svhn", data_dir=tmp_path)
    assert s.train.shape == (4, 3, 32, 32) and torch.equal(s.test[1, 2] * 255, torch.as_tensor(x[:, :, 2, 1]).float())
    with pytest.raises(UserError, match=r"celeba data not found: looked for .*celeba/list_eval_partition.txt"):
        load_dataset("celeba", data_dir=tmp_path)


def test_celeba_official_validation_partition_is_the_validation_set(tmp_path):
    import json

    from test_images import write_celeba

    from pyro_vae.data.images import load_celeba
    from pyro_vae.data.load import with_validation

    # images 1..7 marked train, train, valid, test, train, valid, train (list_eval_partition.txt: 0, 1, 2)
    write_celeba(tmp_path, parts=(0, 0, 1, 2, 0, 1, 0))
    d = load_dataset("celeba", data_dir=tmp_path)
    parts = load_celeba(tmp_path)
    assert (len(d.train), len(d.valid), len(d.test)) == (4, 2, 1) and d.valid_labels is None
    for split, part in ((d.train, parts.train), (d.valid, parts.valid), (d.test, parts.test)):
        assert torch.equal(split * 255, torch.as_tensor(part.images).float())  # the files of each partition
    kept = with_validation(d, "celeba")
    assert kept is d  # not carved from the training images: all 4 train on
    # a run scores the two official validation images every epoch and records them as its validation set
    from pyro_vae import fit

    run = fit(dataset="celeba", data_dir=str(tmp_path), likelihood="bernoulli", z_dim=2, hidden=8, epochs=1,
              batch_size=4, device="cpu", out=tmp_path / "run", quiet=True)  # fmt: skip
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (meta["n_train"], meta["n_valid"], meta["n_test"]) == (6, 2, 1)  # 4 trained on, as documented
    assert run.metrics[0]["valid_elbo"] is not None


def test_image_folder_with_resize_and_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    d = load_dataset(data=str(tmp_path / "imgs"), image_size=(6, 4))
    assert d.train.shape == (9, 3, 6, 4) and d.test.shape == (1, 3, 6, 4) and d.levels == 256
    assert sorted(torch.cat([d.labels, d.test_labels]).tolist()) == [0] * 5 + [1] * 5
    with pytest.raises(UserError, match="--image-size applies to a folder"):
        load_dataset("digits", image_size=(6, 4))


# 8-bit data stored as uint8; streaming through a DataLoader (issue 12) ---------------------------


def test_8_bit_training_data_is_stored_as_uint8_with_identical_values():
    from pyro_vae.train.build import TrainingData

    x = torch.randint(0, 256, (50, 3, 4, 4)).float() / 255
    stored = TrainingData(x, "cpu")
    assert stored.x.dtype == torch.uint8 and stored.nbytes == x.numel()
    idx = torch.randperm(50)[:7]
    assert torch.equal(stored[idx], x[idx])  # bit for bit: k / 255 in float32
    cont = TrainingData(x + 1e-3, "cpu")  # off the grid: kept as float32
    assert cont.x.dtype == torch.float32 and torch.equal(cont[idx], x[idx] + 1e-3)
    order = torch.randperm(50)
    streamed = TrainingData(x, "cpu", stream=True)
    for a, b in zip(stored.batches(order, 16), streamed.batches(order, 16)):
        assert torch.equal(a, b)
    assert [len(b) for b in streamed.batches(order, 16)] == [16, 16, 16, 2]


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized-logistic"])
def test_streamed_and_device_resident_training_give_the_same_losses(tmp_path, likelihood):
    from pyro_vae.train.trainer import Trainer

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (90, 3, 5, 5), dtype=np.uint8))
    settings = dict(data=str(tmp_path / "x.npy"), likelihood=likelihood, hidden=(8,), z_dim=2, batch_size=16,
                    device="cpu", seed=3)  # fmt: skip
    records = []
    for stream in (False, True):
        pyro.clear_param_store()
        trainer = Trainer(**settings, stream=stream)
        assert trainer.train.x.dtype == torch.uint8 and trainer.train.stream == stream
        records.append([trainer.train_epoch()["train_elbo"] for _ in range(2)] + [trainer.test_elbo()])
    assert records[0] == records[1]  # the same numbers, to the last bit


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_raw_pickle_pt_file_is_one_error_without_torchs_warning(tmp_path, protocol):
    import pickle
    import warnings

    (tmp_path / "x.pt").write_bytes(pickle.dumps([[0.5, 0.25]] * 10, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            d = load_arrays(tmp_path / "x.pt")  # plain lists unpickle under weights_only: read, or
            assert d.train.shape[1:] == (2,)
        except UserError as e:  # refused in one line
            assert "\n" not in str(e)
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
