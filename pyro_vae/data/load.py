"""``load_dataset``: a registered dataset by name or the user's own data, and the validation split carved from its
training items (:func:`with_validation`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from .dataset import SPLIT_SEED, Dataset
from .files import load_arrays, load_image_dir
from .sources import DATASETS

#: the share of the training items that :func:`with_validation` sets aside, when the source has no rule
VALID_FRACTION = 0.1
#: the seed of that split (another permutation than the train/test split's)
VALID_SPLIT_SEED = SPLIT_SEED + 1


def with_validation(dataset: Dataset, name: str | None = None) -> Dataset:
    """``dataset`` with a validation set carved from its training items, unless it has one.

    - a registered dataset with :attr:`DatasetSource.validation_last` (MNIST, Fashion-MNIST): the
      last 5000 training items (55000 / 5000);
    - otherwise (and for a user's ``--data``, ``name=None``): a seeded :data:`VALID_FRACTION` of the
      training items (a fixed permutation, :data:`VALID_SPLIT_SEED`); with fewer than 2 training
      items there is no validation set (``valid`` stays ``None``).

    Labels follow their items. The data is not copied where slicing suffices.
    """
    if dataset.valid is not None:
        return dataset
    n = len(dataset.train)
    last = getattr(DATASETS.get(name), "validation_last", None) if name is not None else None
    if last is not None and n > last:
        keep, held = torch.arange(n - last), torch.arange(n - last, n)
    elif n >= 2:
        perm = torch.from_numpy(np.random.RandomState(VALID_SPLIT_SEED).permutation(n))
        n_valid = max(1, int(round(n * VALID_FRACTION)))
        keep, held = perm[n_valid:].sort().values, perm[:n_valid].sort().values
    else:
        return dataset

    def pick(t, index):
        return None if t is None else t[index]

    return Dataset(dataset.name, dataset.train[keep], dataset.test, dataset.image_shape, dataset.levels,
                   pick(dataset.labels, keep), dataset.test_labels, dataset.train[held],
                   pick(dataset.labels, held))  # fmt: skip


def load_dataset(
    name: str = "digits", data_dir: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
    test_data: str | os.PathLike | None = None, layout: str | None = None,
    image_size: int | str | Sequence[int] | None = None,
) -> Dataset:
    """Load a registered dataset by ``name``, or the user's arrays (or folder of images) when ``data`` is given.

    :param layout: ``nchw`` / ``nhwc`` for a 4-d array whose layout is ambiguous (:func:`array_layout`).
    :param image_size: ``(H, W)``, ``"H,W"`` or ``H``: resize the images of a folder ``data``.
    """
    if data and Path(data).is_dir():
        if test_data:
            raise UserError("--test-data applies to array files; a --data folder is split into train and test")
        return load_image_dir(data, image_size)
    if image_size is not None:
        raise UserError("--image-size applies to a folder of images given as --data DIR")
    if data:
        return load_arrays(data, test_data, layout)
    if test_data:
        raise UserError("--test-data needs --data")
    return DATASETS.get(name)().load(data_dir)
