"""The :class:`Dataset` type: a train / test (and validation) pair of tensors in the data's own shape, and the
seeded splits.

Every dataset is returned as a :class:`Dataset`: ``train`` and ``test`` float32 tensors of shape
``(N, *item_shape)``: images keep their shape ``(N, C, H, W)`` (grayscale ``C = 1``, values scaled to
[0, 1]); vectors are ``(N, D)``. ``image_shape`` is the ``(C, H, W)`` of pictures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

#: Seed and fraction of the fixed test split for data sets that come without one.
SPLIT_SEED = 0
TEST_FRACTION = 0.1


@dataclass
class Dataset:
    """A train/test pair of ``(N, *item_shape)`` float32 tensors (``(N, C, H, W)`` images or ``(N, D)``
    vectors), with ``image_shape`` ``(C, H, W)`` for pictures.

    ``levels`` is the quantization of the values: ``L`` when every value is a level ``k / (L - 1)``,
    ``k = 0, ..., L-1`` (256 for 8-bit images, 17 for ``digits``, 2 for binary data), ``None`` for
    continuous data. Likelihood families use it to dequantize (densities), to define their pmf
    (``discretized-logistic``), and to report bits per dimension against the discrete data.
    ``labels`` / ``test_labels`` are ``(N,)`` tensors of the items' labels when the user's file
    holds them or the data set has them (``digits``, ``mnist``, ``fashion-mnist``: the class 0..9),
    else ``None``; unused by training, used by the latent tools (``pyro-vae encode``, ``latents``).

    ``valid`` (with ``valid_labels``) is the validation set that training scores every epoch and
    selects ``best.pt`` by; ``None`` until :func:`with_validation` carves it from ``train`` (or the
    source has its own, as binarized MNIST's official validation file).
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, ...]
    levels: int | None = None
    labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def x_dim(self) -> int:
        """The number of values ``D`` of one item."""
        return self.train[0].numel()

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one item: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
        return tuple(self.train.shape[1:])

    def fingerprint(self) -> str:
        """A hex sha256 of the data's content: the shape, dtype and bytes of ``train`` then ``test``
        (then ``valid``, when there is one).

        Equal for the same values however they were stored (uint8 ``k`` or float ``k/255``); any changed
        value, item or split changes it. Computed once and cached (its cost on MNIST: docs/benchmarks.md,
        "Measurements cited by the code").
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for part in (self.train, self.test) + ((self.valid,) if self.valid is not None else ()):
                t = part.detach().to("cpu").contiguous()
                # (N, D) whatever the item shape: the same values give the same fingerprint as before
                digest.update(f"{(t.shape[0], t[0].numel() if len(t) else 0)}|{t.dtype}|".encode())
                digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def to(self, device: torch.device | str) -> Dataset:
        moved = Dataset(self.name, self.train.to(device), self.test.to(device), self.image_shape, self.levels,
                        self.labels, self.test_labels,
                        None if self.valid is None else self.valid.to(device), self.valid_labels)  # fmt: skip
        moved._fingerprint = self._fingerprint
        return moved


def seeded_split(x, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """A fixed split of ``x`` into train and test (a seeded permutation, the same on every machine)."""
    n = len(x)
    perm = np.random.RandomState(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return x[perm[n_test:]], x[perm[:n_test]]


def _as_float(array, scale=1.0):
    """Images ``(N, H, W)`` or ``(N, C, H, W)`` as float32 ``(N, C, H, W)`` divided by ``scale``."""
    a = np.asarray(array, dtype=np.float32)
    a = a.reshape(len(a), 1, *a.shape[1:]) if a.ndim == 3 else a
    return torch.as_tensor(a / np.float32(scale) if scale != 1.0 else a)


def images_to_float(images):
    """uint8 images ``(N, C, H, W)`` (numpy or torch) as float32 ``k / 255``, the same values as 8-bit data
    read anywhere else in the package (a float32 division, correctly rounded)."""
    return torch.as_tensor(np.asarray(images)).to(torch.float32).div_(255.0)


def image_dataset(name, data, image_shape=None):
    """A :class:`Dataset` of 256 levels from an :class:`~pyro_vae.data.images.ImageData`'s uint8 splits.

    A data set's own validation split (``data.valid``, CelebA's official one) is :attr:`Dataset.valid`,
    so that :func:`~pyro_vae.data.load.with_validation` keeps it instead of carving one from the training items.
    """
    train, test, valid = data.train, data.test, getattr(data, "valid", None)

    def labels_of(part):
        return None if part is None or part.labels is None else torch.as_tensor(part.labels)

    shape = tuple(image_shape or train.images.shape[1:])
    return Dataset(name, images_to_float(train.images), images_to_float(test.images), shape, 256, labels_of(train),
                   labels_of(test), None if valid is None else images_to_float(valid.images),
                   labels_of(valid))  # fmt: skip


