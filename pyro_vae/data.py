"""Datasets, found offline first: each is one class in the :data:`DATASETS` registry.

Every dataset is returned as a :class:`Dataset`: ``train`` and ``test`` float32 tensors of shape
``(N, D)`` (images flattened row-major; grayscale scaled to [0, 1]) and the image shape for pictures.

Where files are looked for (the layout of ``shared/data``: ``MNIST/raw/``, ``FashionMNIST/raw/``,
``frey/``, ``binarized_mnist/``), in this order of precedence:

1. ``--data-dir DIR`` (``data_dir=`` in Python);
2. the environment variable ``$PYRO_VAE_DATA``;
3. a per-user cache folder, ``$XDG_CACHE_HOME/pyro-vae`` or ``~/.cache/pyro-vae``.

Files found there are only read: archives that torchvision must unpack (MNIST's ``.gz``) are
unpacked in a copy in the cache, never next to the originals. When the files are not there, they
are downloaded into that folder; offline, a :class:`~pyro_vae.errors.UserError` says where it
looked and what to do.
"""

import contextlib
import gzip
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .registry import Registry

DATASETS = Registry("dataset")

#: Seed and fraction of the fixed test split for data sets that come without one.
SPLIT_SEED = 0
TEST_FRACTION = 0.1


@dataclass
class Dataset:
    """A train/test pair of ``(N, D)`` float32 tensors, with ``image_shape`` (H, W) for pictures.

    ``levels`` is the quantization of the values: ``L`` when every value is a level ``k / (L - 1)``,
    ``k = 0, ..., L-1`` (256 for 8-bit images, 17 for ``digits``, 2 for binary data), ``None`` for
    continuous data. Likelihood families use it to dequantize (densities), to define their pmf
    (``discretized-logistic``), and to report bits per dimension against the discrete data.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    image_shape: tuple
    levels: int = None

    @property
    def x_dim(self):
        return self.train.shape[1]

    def to(self, device):
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.image_shape, self.levels)


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyro-vae"


def data_root(data_dir=None):
    """The folder data is read from: ``data_dir``, else ``$PYRO_VAE_DATA``, else the user cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("PYRO_VAE_DATA"):
        return Path(os.environ["PYRO_VAE_DATA"]).expanduser()
    return cache_dir()


def _writable(path):
    path = Path(path)
    while not path.exists():
        path = path.parent
    return os.access(path, os.W_OK)


def seeded_split(x, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """A fixed split of ``x`` into train and test (a seeded permutation, the same on every machine)."""
    n = len(x)
    perm = np.random.RandomState(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return x[perm[n_test:]], x[perm[:n_test]]


def _as_float(array, scale=1.0):
    return torch.as_tensor(np.asarray(array, dtype=np.float32).reshape(len(array), -1) / scale)


class DatasetSource:
    """Base class of registered datasets: :meth:`load` returns a :class:`Dataset`."""

    #: (H, W) of one image, for pictures
    image_shape = None

    def load(self, data_dir=None):
        raise NotImplementedError

    def missing(self, root, files, hint=""):
        looked = ", ".join(str(root / f) for f in files)
        return UserError(
            f"{self.name} data not found: looked for {looked} and could not download it; copy the files there, "
            f"or point --data-dir or $PYRO_VAE_DATA at a folder that holds them{hint}"
        )


@DATASETS.register("digits")
class Digits(DatasetSource):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 17 gray levels, no download).

    Values 0..16 are scaled to [0, 1]; a fixed seeded 90/10 split.
    """

    image_shape = (8, 8)

    def load(self, data_dir=None):
        from sklearn.datasets import load_digits

        train, test = seeded_split(load_digits().images)
        return Dataset(self.name, _as_float(train, 16.0), _as_float(test, 16.0), self.image_shape, 17)


class _TorchvisionMNIST(DatasetSource):
    """MNIST-format data through :mod:`torchvision.datasets` (60000 train / 10000 test, 28x28)."""

    image_shape = (28, 28)
    folder = None  # torchvision's folder name under the root, e.g. "MNIST"

    def _torchvision_class(self):
        raise NotImplementedError

    def load(self, data_dir=None):
        cls = self._torchvision_class()
        root = data_root(data_dir)
        raw = root / self.folder / "raw"
        files = [Path(url).name for url, _ in cls.resources]
        unpacked = [raw / f[: -len(".gz")] for f in files]
        work = root
        if not all(p.exists() for p in unpacked) and any((raw / f).exists() for f in files) and root != cache_dir():
            # torchvision unpacks archives next to themselves: never write into the user's data folder
            # (it may be shared or read-only); unpack a copy in the cache instead.
            work = cache_dir()
            (work / self.folder / "raw").mkdir(parents=True, exist_ok=True)
            for f in files:
                target = work / self.folder / "raw" / f
                if (raw / f).exists() and not target.exists():
                    shutil.copyfile(raw / f, target.with_suffix(".part"))
                    os.replace(target.with_suffix(".part"), target)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                splits = [cls(str(work), train=t, download=True) for t in (True, False)]
        except Exception:  # torchvision raises RuntimeError or URLError when it can neither find nor fetch
            raise self.missing(root / self.folder / "raw", files) from None
        train, test = (s.data.numpy() for s in splits)
        return Dataset(self.name, _as_float(train, 255.0), _as_float(test, 255.0), self.image_shape, 256)


@DATASETS.register("mnist")
class MNIST(_TorchvisionMNIST):
    """MNIST handwritten digits, grayscale in [0, 1] (LeCun et al.)."""

    folder = "MNIST"

    def _torchvision_class(self):
        from torchvision.datasets import MNIST

        return MNIST


@DATASETS.register("fashion-mnist")
class FashionMNIST(_TorchvisionMNIST):
    """Fashion-MNIST (Xiao et al. 2017), grayscale in [0, 1]."""

    folder = "FashionMNIST"

    def _torchvision_class(self):
        from torchvision.datasets import FashionMNIST

        return FashionMNIST


def _download(url, folder, filename, md5=None):
    """Fetch ``url`` into ``folder`` when it is writable; ``False`` when offline or refused."""
    from torchvision.datasets.utils import download_url

    target = folder if _writable(folder) else None
    if target is None:
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            download_url(url, str(target), filename, md5)
    except Exception:  # offline: URLError, HTTPError, socket errors; a bad checksum: RuntimeError
        return False
    return (Path(target) / filename).exists()


@DATASETS.register("frey")
class FreyFace(DatasetSource):
    """Brendan Frey's 1965 face images of 28x20 pixels (Roweis's ``frey_rawface.mat``), in [0, 1].

    The data set of the paper's Gaussian-decoder experiments; a fixed seeded 90/10 split.
    """

    image_shape = (28, 20)
    URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
    MD5 = "5aeb024d42b8a6091f30e5eb18c8a48d"

    def load(self, data_dir=None):
        import scipy.io

        root = data_root(data_dir)
        path = root / "frey" / "frey_rawface.mat"
        if not path.exists() and not _download(self.URL, root / "frey", path.name, self.MD5):
            raise self.missing(root, ["frey/frey_rawface.mat"], f" (it is at {self.URL})")
        try:
            faces = scipy.io.loadmat(str(path))["ff"].T.reshape(-1, 28, 20)
        except Exception as e:  # scipy raises several types for a damaged .mat file
            raise UserError(f"cannot read {path}: {e}") from None
        train, test = seeded_split(faces)
        return Dataset(self.name, _as_float(train, 255.0), _as_float(test, 255.0), self.image_shape, 256)


@DATASETS.register("binarized-mnist")
class BinarizedMNIST(DatasetSource):
    """Larochelle's fixed binarization of MNIST (Larochelle & Murray 2011): 50000 train, 10000 test.

    The validation split (10000) is not used for training. Files are ``.amat`` text or ``.amat.gz``.
    """

    image_shape = (28, 28)
    URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"

    def _read(self, root, split):
        folder = root / "binarized_mnist"
        name = f"binarized_mnist_{split}.amat"
        for path, opener in ((folder / name, open), (folder / (name + ".gz"), gzip.open)):
            if path.exists():
                with opener(path, "rb") as f:
                    text = f.read()
                break
        else:
            if not _download(self.URL.format(split), folder, name):
                raise self.missing(root, [f"binarized_mnist/{name}[.gz]"])
            text = (folder / name).read_bytes()
        # one image per line: 784 characters '0'/'1' separated by single spaces
        rows = np.frombuffer(text, np.uint8)
        if rows.size % (2 * 784) or set(np.unique(rows[0::2])) - {48, 49}:
            raise UserError(f"{folder / name} is not a binarized MNIST .amat file (784 values 0/1 per line)")
        return torch.from_numpy((rows.reshape(-1, 2 * 784)[:, 0::2] - 48).astype(np.float32))

    def load(self, data_dir=None):
        root = data_root(data_dir)
        return Dataset(self.name, self._read(root, "train"), self._read(root, "test"), self.image_shape, 2)


def _read_array(path, what):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = next((k for k in ("x", "data", "train") if k in keys), keys[0] if keys else None)
                if key is None:
                    raise UserError(f"{what} file {path} holds no arrays")
                array = archive[key]
        elif path.suffix == ".pt":
            array = torch.load(path, map_location="cpu", weights_only=True)
            array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        else:
            raise UserError(f"{what} file {path} must be .npy, .npz or .pt")
    except UserError:
        raise
    except Exception as e:  # numpy/torch raise many types for a damaged file
        raise UserError(f"cannot read {what} file {path}: {e}") from None
    if array.ndim < 2 or len(array) == 0 or not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{what} file {path} must hold a numeric array of shape (N, ...), got shape {array.shape}")
    return array


def detect_levels(*arrays, candidates=(2, 256)):
    """The quantization of float data in [0, 1]: the first ``L`` in ``candidates`` such that every
    value is within 1e-6 of a level ``k/(L-1)`` (binary data: 2; 8-bit data stored as floats: 256),
    else ``None`` (continuous data)."""
    for levels in candidates:
        ok = True
        for x in arrays:
            if x.numel() and (x.min() < 0 or x.max() > 1):
                return None
            scaled = x * (levels - 1)  # float32 error here is < 1e-7 * (levels - 1)
            if x.numel() and (scaled - scaled.round()).abs().max() > 1e-6 * (levels - 1):
                ok = False
                break
        if ok:
            return levels
    return None


def load_arrays(data, test_data=None):
    """A user's own arrays (``--data`` / ``--test-data``): shape (N, ...); uint8 is scaled to [0, 1].

    The levels are 256 for uint8 arrays; for float arrays they are detected (:func:`detect_levels`):
    2 for binary data, 256 for 8-bit values stored as ``k/255``, otherwise ``None`` (continuous).
    """
    train = _read_array(data, "--data")
    test = _read_array(test_data, "--test-data") if test_data else None
    if test is None:
        train, test = seeded_split(train)
    if train.shape[1:] != test.shape[1:]:
        raise UserError(f"--data items have shape {train.shape[1:]} but --test-data items {test.shape[1:]}")
    scale = 255.0 if train.dtype == np.uint8 else 1.0
    shape = train.shape[1:]
    if len(shape) == 2:
        image_shape = tuple(shape)
    elif len(shape) == 3 and shape[0] == 1:
        image_shape = tuple(shape[1:])
    else:
        d = int(np.prod(shape))
        side = int(round(d**0.5))
        image_shape = (side, side) if side * side == d else (1, d)
    train, test = _as_float(train, scale), _as_float(test, scale)
    levels = 256 if scale == 255.0 else detect_levels(train, test)
    return Dataset(Path(data).stem, train, test, image_shape, levels)


def load_dataset(name="digits", data_dir=None, data=None, test_data=None):
    """Load a registered dataset by ``name``, or the user's arrays when ``data`` is given."""
    if data:
        return load_arrays(data, test_data)
    if test_data:
        raise UserError("--test-data needs --data")
    return DATASETS.get(name)().load(data_dir)
