"""The built-in datasets, found offline first: each is one class in the :data:`DATASETS` registry.

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

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..registry import Registry
from .dataset import Dataset, _as_float, image_dataset, seeded_split

DATASETS = Registry("dataset")


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


class DatasetSource:
    """Base class of registered datasets: :meth:`load` returns a :class:`Dataset`."""

    #: the name it is registered under (set by :data:`DATASETS`)
    name: str
    #: (C, H, W) of one image, for pictures
    image_shape: tuple[int, ...] | None = None
    #: the validation set is the last this many training items (the common protocol), else a
    #: seeded :data:`VALID_FRACTION` of them (see :func:`with_validation`)
    validation_last: int | None = None

    def load(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        raise NotImplementedError

    def missing(self, root: Path, files: Sequence[str], hint: str = "") -> UserError:
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

    image_shape = (1, 8, 8)

    def load(self, data_dir=None):
        from sklearn.datasets import load_digits

        digits = load_digits()
        train, test = seeded_split(digits.images)
        labels, test_labels = (torch.as_tensor(y) for y in seeded_split(digits.target))  # the same permutation
        return Dataset(self.name, _as_float(train, 16.0), _as_float(test, 16.0), self.image_shape, 17, labels, test_labels)


class _TorchvisionMNIST(DatasetSource):
    """MNIST-format data through :mod:`torchvision.datasets` (60000 train / 10000 test, 28x28)."""

    image_shape = (1, 28, 28)
    folder: str | None = None  # torchvision's folder name under the root, e.g. "MNIST"
    validation_last = 5000  # 55000 / 5000, the common protocol

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
        labels, test_labels = (torch.as_tensor(s.targets) for s in splits)  # the class of each image, 0..9
        return Dataset(self.name, _as_float(train, 255.0), _as_float(test, 255.0), self.image_shape, 256,
                       labels, test_labels)  # fmt: skip


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

    image_shape = (1, 28, 20)
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

    The official validation split (10000, ``binarized_mnist_valid.amat``) is :attr:`Dataset.valid`.
    Files are ``.amat`` text or ``.amat.gz``.
    """

    image_shape = (1, 28, 28)
    URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"

    def _read(self, root, split):
        folder = root / "binarized_mnist"
        name = f"binarized_mnist_{split}.amat"
        for path, opener in ((folder / name, open), (folder / (name + ".gz"), gzip.open)):
            if path.exists():
                try:
                    with opener(path, "rb") as f:
                        text = f.read()
                except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut file, EOFError
                    raise UserError(f"{path} is damaged or not a gzip file ({type(e).__name__}: {e}); "
                                    "delete it and download it again") from None  # fmt: skip
                break
        else:
            if not _download(self.URL.format(split), folder, name):
                raise self.missing(root, [f"binarized_mnist/{name}[.gz]"])
            text = (folder / name).read_bytes()
        # one image per line: 784 characters '0'/'1' separated by single spaces
        rows = np.frombuffer(text, np.uint8)
        if rows.size % (2 * 784) or set(np.unique(rows[0::2])) - {48, 49}:
            raise UserError(f"{folder / name} is not a binarized MNIST .amat file (784 values 0/1 per line)")
        return torch.from_numpy((rows.reshape(-1, 2 * 784)[:, 0::2] - 48).astype(np.float32)).reshape(-1, 1, 28, 28)

    def load(self, data_dir=None):
        root = data_root(data_dir)
        return Dataset(self.name, self._read(root, "train"), self._read(root, "test"), self.image_shape, 2,
                       valid=self._read(root, "valid"))  # fmt: skip


# Colour image data sets (read by pyro_vae.data.images) ----------------------------------------------


class _ImageDatasetSource(DatasetSource):
    """A colour data set in its own on-disk format under the data folder; downloaded with torchvision's
    helpers when absent and the folder is writable, else the one-line "looked here" :class:`UserError`."""

    image_shape = (3, 32, 32)
    #: the files, relative to the data folder, whose absence means "not there"
    files: tuple[str, ...] = ()

    def read(self, root):
        raise NotImplementedError

    def fetch(self, root):
        """Download into ``root``; ``False`` when offline or ``root`` is not writable."""
        return False

    def load(self, data_dir=None):
        root = data_root(data_dir)
        if not all((root / f).exists() for f in self.files) and not self.fetch(root):
            raise self.missing(root, self.files, getattr(self, "hint", ""))
        return image_dataset(self.name, self.read(root), self.image_shape)


def _quiet_download(fn, *args, **kwargs):
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fn(*args, **kwargs)
    except Exception:  # offline, refused, a bad checksum
        return False
    return True


@DATASETS.register("cifar10")
class CIFAR10(_ImageDatasetSource):
    """CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test colour 32x32 images, 10 classes (labels kept).

    Read from ``cifar-10-batches-py/`` (torchvision's layout) with a restricted unpickler that can
    rebuild arrays only (:func:`pyro_vae.data.images.load_cifar10`).
    """

    files = ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch")
    hint = " (it is cifar-10-python.tar.gz at https://www.cs.toronto.edu/~kriz/cifar.html, unpacked)"

    def read(self, root):
        from .images import load_cifar10

        return load_cifar10(root)

    def fetch(self, root):
        if not _writable(root):
            return False
        from torchvision.datasets import CIFAR10 as TV
        from torchvision.datasets.utils import download_and_extract_archive

        return _quiet_download(download_and_extract_archive, TV.url, str(root), filename=TV.filename, md5=TV.tgz_md5)


@DATASETS.register("svhn")
class SVHN(_ImageDatasetSource):
    """SVHN cropped digits (Netzer et al. 2011): 73257 train / 26032 test colour 32x32 images, labels 0..9.

    Read from ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat`` (:func:`pyro_vae.data.images.load_svhn`).
    """

    files = ("svhn/train_32x32.mat", "svhn/test_32x32.mat")
    hint = " (they are at http://ufldl.stanford.edu/housenumbers/)"

    def read(self, root):
        from .images import load_svhn

        return load_svhn(root / "svhn")

    def fetch(self, root):
        from torchvision.datasets import SVHN as TV

        return all(_download(TV.split_list[part][0], root / "svhn", TV.split_list[part][1], TV.split_list[part][2])
                   for part in ("train", "test"))  # fmt: skip


@DATASETS.register("celeba")
class CelebA(_ImageDatasetSource):
    """CelebA aligned faces (Liu et al. 2015), 140x140 centre crop resized to 64x64 (the usual protocol,
    :func:`pyro_vae.data.images.load_celeba`); the official partitions: train (162770 images) to train
    on, valid (19867) as the validation set that selects ``best.pt`` and early stopping
    (:attr:`Dataset.valid`, not carved from train), test (19962) for ``final.json`` and ``evaluate``.

    Read from ``celeba/img_align_celeba/`` and ``celeba/list_eval_partition.txt`` (torchvision's layout).
    Not downloaded (the files are on Google Drive, whose quota usually refuses scripts): fetch them by hand.
    """

    image_shape = (3, 64, 64)
    files = ("celeba/img_align_celeba", "celeba/list_eval_partition.txt")
    hint = " (from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)"

    def read(self, root):
        from .images import load_celeba

        return load_celeba(root)

    def fetch(self, root):
        if not _writable(root):
            return False
        from torchvision.datasets import CelebA as TV

        return _quiet_download(TV, str(root), split="test", download=True)


@DATASETS.register("patches")
class Patches(DatasetSource):
    """Offline colour data: 32x32 patches (stride 16) of the two colour photos bundled with scikit-learn,
    with a seeded 90/10 split (:func:`pyro_vae.data.images.load_sample_patches`). For demos, tests and CI."""

    image_shape = (3, 32, 32)

    def load(self, data_dir=None):
        from .images import load_sample_patches

        return image_dataset(self.name, load_sample_patches(), self.image_shape)


