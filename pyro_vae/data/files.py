"""A user's own data: arrays in files (``--data`` / ``--test-data``, :func:`load_arrays`) and folders of
images (:func:`load_image_dir`).

A user's own data (``--data`` / ``--test-data``, :func:`load_arrays`) is read by these rules, the
same as in the README's Data section:

**Files.**

- ``.npy``: one array of shape (N, ...), the items.
- ``.npz``, and a ``.pt`` file holding a dict: a pair ``x_train``/``x_test`` (or ``X_train``/``X_test``, or
  ``train``/``test``) gives the training and the test set (``--test-data`` is then refused); otherwise one
  array named ``x_train``, ``X_train``, ``train``, ``x``, ``X`` or ``data``, or the file's only array, is the
  training data. Anything else is refused with the list of the file's keys. In a ``--test-data`` file the
  array is ``x_test``, ``X_test``, ``test``, ``x``, ``X``, ``data`` or the only one. Numeric labels stored
  beside the data (``y_train``/``y_test``; ``train_labels``/``test_labels`` beside ``train``/``test``; ``y``
  beside ``x``; ``labels`` beside ``data``) are kept as ``Dataset.labels``/``test_labels``: one per item, shape
  ``(N,)`` or a column ``(N, 1)`` (read as ``(N,)``); other shapes are refused.
- ``.pt``: read with ``torch.load(..., weights_only=True)``, never unsafely: a tensor; a dict (the ``.npz``
  names); a tuple or list ``(data,)`` or ``(data, labels)``; a ``TensorDataset`` of those. Any other object is
  refused. Labels in a tuple or ``TensorDataset`` are ``(N,)`` or ``(N, 1)``, as in a dict.
- Without a test set from the file or ``--test-data``, a fixed seeded 10% of the items is the test set.

**Values.** Each array, the training and the test array separately, is read from its own dtype and values:

- ``bool`` arrays, and integer arrays (uint8 or any other integer dtype) whose values are all 0 or 1: binary
  data, values 0 and 1, 2 levels (not k/255).
- other integer arrays with values in 0..255: 8-bit levels k, used as k/255, 256 levels.
- integer arrays with values outside 0..255: refused (save them as float32, scaled as you mean them).
- float arrays (float16, float32, float64; bfloat16 in ``.pt``): taken as given, never rescaled. Their levels
  are detected: 2 when every value is 0 or 1, 256 when every value is on the grid k/255, otherwise none
  (continuous).
- complex, object, string, datetime and other dtypes: refused.

**Train and test read differently.** Two integer arrays of different levels (binary and 8-bit) are refused. A
float array whose values lie on the grid of an integer array takes its levels; two float arrays take the
finest grid both lie on, or none (continuous); each of these prints one line, a ``DataWarning``. A float array
off the grid of an integer array is refused.

**Shapes.** ``(N, D)``: vectors (pictures guess a square, else one row). ``(N, H, W)``: grayscale
images, ``(N, 1, H, W)``. ``(N, A, B, C)``: images, channels first (NCHW) when ``A`` is 1, 3 or 4
and ``C`` is not, channels last (NHWC, transposed to NCHW) when ``C`` is and ``A`` is not; a shape
where both or neither are (e.g. ``(N, 3, 8, 3)``, ``(N, 2, 8, 8)``) is refused unless ``--layout
nchw|nhwc`` (``layout=``) says which. More dimensions: flattened to vectors.

**Sizes.** An empty array, items without values (shape (N, 0)), an array of fewer than 2 dimensions, and a
single item without a test set (a split needs 2) are refused. A ``--batch-size`` larger than the training set
is not clamped or refused: an epoch's last batch holds the items left over, so the epoch is one batch of all N
items.

**Fingerprint.** ``Dataset.fingerprint()`` is a sha256 of the values as trained on (shape, dtype and bytes of
the training then the test set): the same for the same values however they were stored, different when one
changes.
"""

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import torch_load
from ..errors import UserError
from .dataset import SPLIT_SEED, TEST_FRACTION, Dataset, images_to_float, seeded_split


def load_image_dir(path, image_size=None):
    """A folder of PNG/JPEG images (``--data DIR``, ``--image-size H[,W]``) as a :class:`Dataset`: 256
    levels, grayscale (1 channel) or colour (3) as detected, labels when the folder has class
    subfolders, a fixed seeded 10% test split (:func:`pyro_vae.data.images.load_image_folder`)."""
    from .images import load_image_folder

    folder = load_image_folder(path, image_size)
    images = folder.images
    if len(images) < 2:
        raise UserError(f"{path} holds {len(images)} image; a train/test split needs at least 2")
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(images))
    n_test = max(1, int(round(len(images) * TEST_FRACTION)))
    train, test = perm[n_test:], perm[:n_test]
    labels = None if folder.labels is None else torch.as_tensor(folder.labels)
    return Dataset(Path(path).name, images_to_float(images[train]), images_to_float(images[test]),
                   tuple(images.shape[1:]), 256, None if labels is None else labels[train],
                   None if labels is None else labels[test])  # fmt: skip


# The user's own files (--data / --test-data) -------------------------------------------------------

#: ``.npz`` / ``.pt`` dict keys holding a training set and its test set, in this order of preference.
PAIR_KEYS = (("x_train", "x_test"), ("X_train", "X_test"), ("train", "test"))
#: keys of one array used as training data (with a seeded split), when no pair is in the file.
TRAIN_KEYS = ("x_train", "X_train", "train", "x", "X", "data")
#: keys of one array used as test data in a ``--test-data`` file.
TEST_KEYS = ("x_test", "X_test", "test", "x", "X", "data")
#: optional labels, kept in :attr:`Dataset.labels` / :attr:`Dataset.test_labels`.
LABEL_KEYS = {"x_train": "y_train", "X_train": "y_train", "train": "train_labels",
              "x_test": "y_test", "X_test": "y_test", "test": "test_labels",
              "x": "y", "X": "y", "data": "labels"}  # fmt: skip


class DataWarning(UserWarning):
    """A note about how a user's data was read (e.g. train and test stored with different dtypes)."""


def _note(message):
    """Emit ``message`` as one :class:`DataWarning` line on stderr (no source line is shown)."""
    warnings.warn_explicit(message, DataWarning, filename="pyro-vae", lineno=0)


@dataclass
class _FileContents:
    """What one user file holds: ``x`` (N, ...) and optionally its test set and labels (NumPy arrays)."""

    x: np.ndarray
    test: np.ndarray = None
    labels: np.ndarray = None
    test_labels: np.ndarray = None
    x_name: str = None  # the key or element it came from, for messages
    test_name: str = None


def _keys_listing(keys):
    return ", ".join(map(str, keys)) if keys else "none"


def _pick_keys(keys, what, path):
    """``(train_key, test_key)`` of a ``.npz`` / dict by the documented names (:data:`PAIR_KEYS`, ...).

    For ``--data`` a pair gives both; otherwise one training key (or the only array) and ``None``.
    For ``--test-data`` one test key (or the only array). Anything else is a :class:`UserError`
    that lists the keys.
    """
    keys = list(keys)
    howto = (
        "name the arrays x_train and x_test (or train/test, X_train/X_test), or hold a single array "
        "(named x, data or anything)"
    )
    pairs = [p for p in PAIR_KEYS if p[0] in keys and p[1] in keys]
    if len(pairs) > 1:
        raise UserError(f"{what} file {path} holds several train/test pairs (keys: {_keys_listing(keys)}); keep one")
    labels = set(LABEL_KEYS.values())
    if what == "--test-data":
        if pairs:
            raise UserError(
                f"{what} file {path} holds a train/test pair ({pairs[0][0]}, {pairs[0][1]}); pass it as --data alone"
            )
        found = [k for k in TEST_KEYS if k in keys]
        if len(found) == 1:
            return found[0], None
        if not found and len(keys) == 1 and keys[0] not in labels and keys[0] not in TRAIN_KEYS:
            return keys[0], None
        raise UserError(f"{what} file {path} holds arrays {_keys_listing(keys)}: cannot tell which is the test "
                        "data; name it x_test (or test, x, data), or hold a single array")  # fmt: skip
    if pairs:
        return pairs[0]
    found = [k for k in TRAIN_KEYS if k in keys]
    test_only = [k for k in keys if k in ("x_test", "X_test", "test")]
    if len(found) == 1 and not test_only:
        return found[0], None
    if not found and len(keys) == 1 and keys[0] not in labels and not test_only:
        return keys[0], None
    raise UserError(f"{what} file {path} holds arrays {_keys_listing(keys)}: cannot tell which to train on; {howto}")


def _contents_from_mapping(mapping, what, path):
    """:class:`_FileContents` of a ``.npz`` archive or a ``.pt`` dict (values: arrays or tensors)."""
    keys = [k for k in mapping.keys()]
    if not keys:
        raise UserError(f"{what} file {path} holds no arrays")
    if not all(isinstance(k, str) for k in keys):
        raise UserError(f"{what} file {path} is a dict with keys {_keys_listing(keys)}; its keys must be names "
                        "such as x_train and x_test")  # fmt: skip
    x_key, test_key = _pick_keys(keys, what, path)

    def get(key):
        return None if key is None or key not in mapping else _to_numpy(mapping[key], what, path, key)

    label = lambda k: LABEL_KEYS.get(k) if k is not None else None  # noqa: E731
    return _FileContents(get(x_key), get(test_key), get(label(x_key)), get(label(test_key)), x_key, test_key)


def _to_numpy(value, what, path, name="the array"):
    """A tensor or array as a NumPy array (bfloat16 as float32); anything else is a :class:`UserError`."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(value, np.ndarray):
        return value
    raise UserError(f"{what} file {path}: {name} is a {type(value).__name__}, not a tensor or array")


def _contents_from_sequence(items, what, path, kind):
    """``(data,)`` or ``(data, labels)`` from a tuple/list of tensors or a ``TensorDataset``."""
    items = list(items)
    if not items or len(items) > 2:
        raise UserError(f"{what} file {path} holds a {kind} of {len(items)} items; pyro-vae reads (data,) or "
                        "(data, labels); for a train/test pair save a dict {'x_train': ..., 'x_test': ...}")
    x = _to_numpy(items[0], what, path, f"item 0 of the {kind}")
    labels = _to_numpy(items[1], what, path, f"item 1 of the {kind}") if len(items) == 2 else None
    if labels is not None:
        if labels.shape not in ((len(x),), (len(x), 1)):
            raise UserError(f"{what} file {path} holds a {kind} whose second item (shape {labels.shape}) is not labels "
                            f"of shape ({len(x)},) or ({len(x)}, 1); for a train/test pair save a dict "
                            "{'x_train': ..., 'x_test': ...}")  # fmt: skip
        labels = labels.reshape(len(x))
    return _FileContents(x, labels=labels, x_name=f"item 0 of the {kind}")


def _load_pt(path, what):
    """A ``.pt`` file, loaded with ``weights_only=True`` (``TensorDataset`` allowed as a safe global)."""
    from torch.utils.data import TensorDataset

    try:
        with torch.serialization.safe_globals([TensorDataset]):
            obj = torch_load(path)  # torch.load(weights_only=True), without its pickle-protocol warning
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not found:
            raise UserError(f"cannot read {what} file {path}: it is not a torch file or it is damaged") from None
        holds = f" (it holds a {found.group(1)})"
        raise UserError(
            f"{what} file {path} holds objects other than tensors, dicts, lists or a TensorDataset{holds}, so it is "
            "not read; save the data itself: torch.save(tensor, path) or "
            "torch.save({'x_train': ..., 'x_test': ...}, path)"
        ) from None
    if isinstance(obj, torch.Tensor):
        return _FileContents(_to_numpy(obj, what, path))
    if isinstance(obj, dict):
        return _contents_from_mapping(obj, what, path)
    if isinstance(obj, (tuple, list)):
        return _contents_from_sequence(obj, what, path, type(obj).__name__)
    if type(obj) is TensorDataset and isinstance(getattr(obj, "tensors", None), tuple):
        return _contents_from_sequence(obj.tensors, what, path, "TensorDataset")
    raise UserError(f"{what} file {path} holds a {type(obj).__name__}; pyro-vae reads a tensor, a dict of tensors "
                    "(x_train/x_test, ...), a tuple (data, labels) or a TensorDataset")  # fmt: skip


def _read_file(path, what):
    """Read a user's ``.npy`` / ``.npz`` / ``.pt`` file (the rules: the module docstring) as :class:`_FileContents`.

    Raises :class:`UserError` for a missing, unreadable or unsafe file, an unknown layout or suffix.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    if path.suffix not in (".npy", ".npz", ".pt"):
        raise UserError(f"{what} file {path} must be .npy, .npz or .pt")
    try:
        if path.suffix == ".npy":
            return _FileContents(np.load(path, allow_pickle=False))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return _contents_from_mapping(archive, what, path)
        return _load_pt(path, what)
    except UserError:
        raise
    except ValueError as e:
        if "pickled data" in str(e):
            raise UserError(f"cannot read {what} file {path}: it is not a {path.suffix} array (pickled data, or "
                            "damaged), and pickles are not loaded: they could run code") from None  # fmt: skip
        if "Object arrays" in str(e):
            raise UserError(f"{what} file {path} holds an object array, which cannot be data (and is not loaded: it "
                            "could run code); save a numeric array") from None  # fmt: skip
        raise UserError(f"cannot read {what} file {path}: {_first_line(e)}") from None
    except Exception as e:  # numpy/torch raise many types for a damaged file
        raise UserError(f"cannot read {what} file {path}: {_first_line(e)}") from None


def _first_line(e):
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return "the file is damaged or not in this format" if "weights_only" in line else line


def _read_array(path, what):
    """The data array of a user's file (``--data``: the training array), shape ``(N, ...)``, unconverted."""
    contents = _read_file(path, what)
    _check_shape(contents.x, what, path)
    return contents.x


def _check_shape(array, what, path, name=None):
    """Refuse arrays that cannot be N items: fewer than 2 dimensions, no items, or items without values."""
    where = f"{what} file {path}" + (f" ({name})" if name else "")
    if array.ndim < 2:
        raise UserError(f"{where} must hold a numeric array of shape (N, ...), got shape {array.shape}")
    if len(array) == 0:
        raise UserError(f"{where} holds no items (shape {array.shape})")
    if array[0].size == 0:
        raise UserError(f"{where} holds items with no values (shape {array.shape})")


#: what an interpretation is called in messages
_KIND = {2: "binary 0/1 (2 levels)", 256: "8-bit levels k/255 (256 levels)", None: "continuous values"}


def interpret_array(array, what="data", path=""):
    """Read one array by its own dtype and values (the rules of the module docstring).

    :param array: a NumPy array of shape ``(N, ...)``.
    :returns: ``(x, levels, fixed)``: ``x`` a float32 tensor of shape ``(N, D)`` (items flattened
        row-major), ``levels`` 2, 256 or ``None`` (continuous), and ``fixed`` ``True`` when the levels
        come from an integer or bool dtype (so they are a declaration, not a guess from float values).
    :raises UserError: for a dtype that cannot be data (complex, object, string, datetime, ...) or
        integers outside [0, 255].
    """
    _check_shape(array, what, path)
    dtype = array.dtype
    if dtype.kind == "b":
        return torch.from_numpy(array.reshape(len(array), -1).astype(np.float32)), 2, True
    if dtype.kind in "iu":  # not np.issubdtype(.., np.integer): timedelta64 is one
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise UserError(
                f"{what} file {path} holds {dtype} values from {lo} to {hi}; integer arrays are read as binary 0/1 "
                "or as 8-bit levels 0..255, so save other data as float32, scaled as you mean it"
            )
        levels = 2 if hi <= 1 else 256
        x = array.reshape(len(array), -1).astype(np.float32)
        return torch.from_numpy(x if levels == 2 else x / np.float32(255)), levels, True
    if dtype.kind == "f":
        x = torch.from_numpy(np.ascontiguousarray(array.reshape(len(array), -1), dtype=np.float32))
        return x, detect_levels(x), False
    raise UserError(
        f"{what} file {path} holds {dtype} values, which cannot be data; save a bool, integer or float array"
    )


def detect_levels(*arrays, candidates=(2, 256)):
    """The quantization of float data in [0, 1]: the first ``L`` in ``candidates`` such that every
    value of every array is within 1e-6 of a level ``k/(L-1)`` (binary data: 2; 8-bit data stored
    as floats: 256), else ``None`` (continuous data, values outside [0, 1], or NaN/inf)."""
    for levels in candidates:
        ok = True
        for x in arrays:
            if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
                return None
            scaled = x * (levels - 1)  # float32 error here is < 1e-7 * (levels - 1)
            if x.numel() and (scaled - scaled.round()).abs().max() > 1e-6 * (levels - 1):
                ok = False
                break
        if ok:
            return levels
    return None


def reconcile_levels(train, test, train_what="--data", test_what="--test-data"):
    """The levels of a train/test pair read by :func:`interpret_array` (``(x, levels, fixed)`` each).

    Equal levels are kept. A float array on the grid of an integer one takes the integer one's levels;
    two float arrays take the finest grid both sit on (or none: continuous); either of these prints
    one :class:`DataWarning` line. Two integer arrays of different levels (binary and 8-bit), or a
    float array off an integer array's grid, raise :class:`UserError` saying how to fix the files.
    """
    (x_a, l_a, fixed_a), (x_b, l_b, fixed_b) = train, test
    if l_a == l_b:
        return l_a
    said = f"{train_what} reads as {_KIND[l_a]} but {test_what} as {_KIND[l_b]}"
    if fixed_a and fixed_b:
        raise UserError(f"{said} (both integer arrays): store both the same way, e.g. binarize both or keep both as "
                        "8-bit 0..255")  # fmt: skip
    if fixed_a or fixed_b:
        levels, x_float, float_what = (l_a, x_b, test_what) if fixed_a else (l_b, x_a, train_what)
        if detect_levels(x_float, candidates=(levels,)) != levels:
            raise UserError(f"{said}, and the float values of {float_what} are not on the {levels}-level grid: save "
                            "both with the same dtype (e.g. both float32 scaled to [0, 1])")  # fmt: skip
        _note(f"{said}; the float values sit on the {levels}-level grid, so both are used as {_KIND[levels]}")
        return levels
    levels = detect_levels(x_a, x_b)
    _note(f"{said} (both float); both are used as {_KIND[levels]}")
    return levels


def _image_shape(shape):
    """The ``(C, H, W)`` pictures show items of ``shape`` as (a vector: a square if it is one, else a row)."""
    if len(shape) == 3:
        return tuple(shape)
    if len(shape) == 2:
        return (1,) + tuple(shape)
    d = int(np.prod(shape))
    side = int(round(d**0.5))
    return (1, side, side) if side * side == d else (1, 1, d)


#: ``--layout``: how a 4-d array ``(N, A, B, C)`` holds its images
LAYOUTS = ("nchw", "nhwc")
#: channel counts recognized without ``--layout``: gray, RGB, RGBA
CHANNELS = (1, 3, 4)


def array_layout(shape, layout=None, what="--data", path=""):
    """How an array of ``shape`` ``(N, ...)`` holds its items, by the rules of the module docstring.

    :returns: ``(kind, item_shape)``: ``kind`` one of ``"vectors"`` (items flattened), ``"gray"``
        (``(N, H, W)`` -> ``(N, 1, H, W)``), ``"nchw"``, ``"nhwc"`` (transposed to NCHW), and the
        item shape as trained on.
    :raises UserError: an unknown layout, a layout for an array that is not 4-d, or an ambiguous
        4-d shape without a layout (the message names ``--layout nchw|nhwc``).
    """
    shape = tuple(shape)
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"--layout must be one of: {', '.join(LAYOUTS)}, got {layout!r}")
    if len(shape) == 4:
        a, c = shape[1] in CHANNELS, shape[3] in CHANNELS
        if layout is None:
            if a and not c:
                layout = "nchw"
            elif c and not a:
                layout = "nhwc"
            else:
                why = "could be either" if a else f"has no axis of {', '.join(map(str, CHANNELS))} channels to be either"
                raise UserError(
                    f"{what} file {path} holds images of shape {shape}, which {why} channels-first (N, C, H, W) or "
                    "channels-last (N, H, W, C); say which with --layout nchw|nhwc"
                )
        n, a_, b_, c_ = shape
        return layout, ((a_, b_, c_) if layout == "nchw" else (c_, a_, b_))
    if layout is not None:
        raise UserError(f"--layout applies to 4-d image arrays (N, C, H, W) or (N, H, W, C); {what} file {path} "
                        f"has shape {shape}")  # fmt: skip
    if len(shape) == 3:
        return "gray", (1,) + shape[1:]
    return "vectors", (int(np.prod(shape[1:])),)


def _arrange(array, kind):
    """``array`` with its items in the layout ``kind`` (:func:`array_layout`) trains on, before flattening."""
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if kind == "nhwc" else array


def label_column(labels, n, where):
    """``labels`` as one label per item, shape ``(n,)``: an ``(n,)`` array as it is, an ``(n, 1)`` column
    (as ``y.reshape(-1, 1)``, scikit-learn's and Keras's habit, or a ``TensorDataset`` of ``y[:, None]``)
    flattened to ``(n,)``.

    :param where: what holds them, for the message (e.g. ``"--data file d.npz (y_train)"``).
    :raises UserError: one line naming the shape, for any other shape (several columns, e.g. one-hot or
        multi-label ``(n, k)``; a row ``(1, n)``; another number of items).
    """
    labels = np.asarray(labels)
    if labels.shape == (n, 1):
        labels = labels.reshape(n)
    if labels.shape != (n,):
        raise UserError(f"{where} holds labels of shape {labels.shape} for {n} items; labels must be one per item, "
                        f"shape ({n},) or ({n}, 1)")  # fmt: skip
    return labels


def _labels(labels, n, what, path):
    if labels is None or labels.dtype.kind not in "biuf":
        return None  # labels that are not numbers (e.g. class names) are not kept
    return torch.as_tensor(label_column(labels, n, f"{what} file {path}"))


def load_arrays(data, test_data=None, layout=None):
    """A user's own data (``--data`` / ``--test-data``) as a :class:`Dataset`, read by the rules of
    the module docstring.

    :param data: path of a ``.npy``, ``.npz`` or ``.pt`` file of shape ``(N, ...)``, or holding a
        train/test pair.
    :param test_data: path of the test file, or ``None``: the test set is then the file's own
        (``x_test``, ...) or a fixed seeded 10% split of ``data`` (which needs at least 2 items).
    :param layout: ``"nchw"``, ``"nhwc"`` or ``None`` (recognized, see :func:`array_layout`).
    :returns: a :class:`Dataset` of float32 ``(N, *item_shape)`` tensors, ``levels`` 2, 256 or ``None``, and
        ``labels`` / ``test_labels`` when the file holds them.
    :raises UserError: for every file or content the rules refuse.
    """
    contents = _read_file(data, "--data")
    _check_shape(contents.x, "--data", data, contents.x_name)
    if contents.test is not None and test_data:
        raise UserError(f"--data file {data} holds its own test set ({contents.test_name}), and --test-data "
                        f"{test_data} was given too; drop --test-data or save the training array alone")  # fmt: skip
    test_what, test_path = "--data", data
    labels = _labels(contents.labels, len(contents.x), "--data", data)
    if test_data:
        test_contents = _read_file(test_data, "--test-data")
        test_array, test_labels, test_what, test_path = test_contents.x, test_contents.labels, "--test-data", test_data
    else:
        test_array, test_labels = contents.test, contents.test_labels
    kind, item = array_layout(contents.x.shape, layout, "--data", data)
    train = interpret_array(_arrange(contents.x, kind), "--data", data)
    if test_array is None:
        n = len(contents.x)
        if n < 2:
            raise UserError(f"--data file {data} holds {n} item; a train/test split needs at least 2: add items, "
                            "or pass --test-data (it may be the same file, to fit one example)")  # fmt: skip
        x_train, x_test = seeded_split(train[0].numpy())
        levels = train[1]
        if labels is not None:
            labels, test_labels = seeded_split(labels)
        train_x, test_x = torch.from_numpy(x_train), torch.from_numpy(x_test)
    else:
        _check_shape(test_array, test_what, test_path, contents.test_name if not test_data else test_contents.x_name)
        if contents.x.shape[1:] != test_array.shape[1:]:
            raise UserError(f"--data items have shape {contents.x.shape[1:]} but test items {test_array.shape[1:]}")
        test = interpret_array(_arrange(test_array, kind), test_what, test_path)
        names = ("--data", "--test-data") if test_data else (f"{contents.x_name}", f"{contents.test_name}")
        levels = reconcile_levels(train, test, *names)
        train_x, test_x = train[0], test[0]
        test_labels = _labels(test_labels, len(test_array), test_what, test_path)
    train_x, test_x = train_x.reshape(len(train_x), *item), test_x.reshape(len(test_x), *item)
    return Dataset(Path(data).stem, train_x, test_x, _image_shape(item), levels, labels, test_labels)


