r"""Loaders for colour image data sets, read from their own on-disk formats, without running code.

Every loader returns 8-bit images as ``uint8`` numpy arrays of shape ``(N, C, H, W)`` (values
0..255, channels first) and labels as ``int64`` arrays of shape ``(N,)``, or ``None`` when the data
has none. Nothing is downloaded here and nothing is written; a missing file raises one
:class:`~pyro_vae.errors.UserError` line naming what was looked for and where.

- :func:`load_cifar10`: ``cifar-10-batches-py/`` (Krizhevsky 2009), as torchvision lays it out.
  Its batches are Python pickles; they are read with :class:`RestrictedUnpickler`, which rebuilds
  numpy arrays and refuses every other global, so a data folder can never run code.
- :func:`load_svhn`: ``train_32x32.mat`` / ``test_32x32.mat`` (Netzer et al. 2011), the cropped digits.
- :func:`load_celeba`: ``celeba/img_align_celeba/*.jpg`` and ``celeba/list_eval_partition.txt``
  (Liu et al. 2015), centre-cropped to 140x140 and resized.
- :func:`load_image_folder`: a folder of PNG/JPEG images, flat or one subfolder per class.

Image files (CelebA's, a folder's) are read upright: the EXIF Orientation tag is applied (:func:`upright`).
- :func:`load_sample_patches`: patches of the two colour photos bundled with scikit-learn (offline).
"""

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from ..resources import check_memory

#: Seed and fraction of the fixed test split of data sets that come without one (as pyro_vae.data.dataset).
SPLIT_SEED = 0
TEST_FRACTION = 0.1
#: File name endings read by :func:`load_image_folder` (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The only formats an image file is decoded as (Pillow's names, passed to ``Image.open(formats=...)``),
#: whatever its content says: PostScript/EPS, PDF and the other formats Pillow knows are refused, so
#: opening a data folder never hands a file to another program (Ghostscript for EPS).
IMAGE_FORMATS = ("PNG", "JPEG")
#: Estimated peak bytes per pixel of loading an image folder as a data set: the RGB uint8 images
#: while they are stacked (3 + 3), then the uint8 set and its float32 tensors for C <= 3 channels
#: (3 + 4 x 3) alive together; see :func:`load_image_folder`.
BYTES_PER_PIXEL = 18


def max_image_pixels():
    """The most pixels one image may have, checked from its header before it is decoded: Pillow's
    decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` (89 478 485 by default; Pillow itself only
    warns up to twice that), or None when a user disabled it. A small file that decodes to a huge
    image is refused with one line."""
    return Image.MAX_IMAGE_PIXELS


@dataclass
class Split:
    """One part of a data set: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)`` or ``None``."""

    images: np.ndarray
    labels: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.images)


@dataclass
class ImageData:
    """A data set's parts. ``valid`` is ``None`` unless the data set defines one (CelebA);
    ``classes[i]`` names label ``i`` (``None`` without labels or names)."""

    name: str
    train: Split
    test: Split
    valid: Optional[Split] = None
    classes: Optional[List[str]] = None


@dataclass
class FolderImages:
    """The images of a folder (:func:`load_image_folder`), in sorted file order.

    ``labels`` is ``None`` for a flat folder; ``classes`` are the subfolder names, ``classes[i]``
    for label ``i``; ``files`` the paths of the images, relative to the folder.
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    classes: Optional[List[str]]
    files: List[str] = field(default_factory=list)


def seeded_split(n, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """Indices ``(train, test)`` of a fixed random split of ``n`` items, ``round(n * test_fraction)`` to test."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _one_line(error):
    """An exception's message on one line (a UserError is printed as one line)."""
    return " ".join(str(error).split()) or type(error).__name__


def _need(path, what):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: looked for {path}")
    return path


# CIFAR-10 ---------------------------------------------------------------------------------------


def _numpy_globals():
    """The few callables a pickled ndarray needs, keyed by every module path numpy has used for them."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.(_)core.multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)
    allowed = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_encode  # how Python 3 writes bytes in protocols 0-2
    return allowed


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` restricted to latin-1 text -> bytes, the only use pickle makes of it."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UserError(f"a pickle asks to encode with {encoding!r}; only latin-1 byte strings are allowed")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain data (dicts, lists, strings, numbers) and numpy arrays, and
    nothing else: any other global (``os.system``, ``builtins.eval``, a class) raises
    :class:`UserError` before it is looked up, so unpickling cannot run code.

    Allowed globals: ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
    ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``, ``numpy.ndarray``,
    ``numpy.dtype``: what :func:`pickle.dump` of an array writes (protocols 0 to 5, Python 2 and 3),
    and ``_codecs.encode`` limited to latin-1 (Python 3's way of writing bytes in protocols 0 to 2).
    """

    ALLOWED = _numpy_globals()

    def __init__(self, file, source="a pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"{self.source} refers to {module}.{name}, which is not numpy array data; refusing to load it "
                "(a data file must not run code)"
            ) from None


def restricted_load(path):
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="latin1"``, as Python 2 pickles
    of arrays need). Raises :class:`UserError` for a refused global or a file that is not a pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path), encoding="latin1").load()
    except UserError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise UserError(f"{path} is not a readable pickle: {type(e).__name__}: {_one_line(e)}") from None


def _key(d, name, path):
    """A key of a CIFAR batch dict: ``b'data'`` (a Python 3 pickle) or ``'data'`` (Python 2, latin1)."""
    if not isinstance(d, dict):
        raise UserError(f"{path} does not hold a CIFAR batch (a dict), but a {type(d).__name__}")
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise UserError(f"{path} has no {name!r} entry; it is not a CIFAR-10 batch")


#: CIFAR-10's classes: labels are 0..9
CIFAR_CLASSES = 10


def _cifar_labels(raw, path):
    """A batch's ``labels`` entry as int64 ``(n,)``: a list (or 1-d integer array) of whole numbers 0..9."""
    problem = None
    try:
        labels = np.asarray(raw)
    except (ValueError, TypeError, OverflowError):  # ragged lists, objects numpy cannot hold
        labels, problem = None, "ragged or not numbers"
    if problem is None and (labels.ndim != 1 or labels.dtype.kind not in "iu"):
        problem = f"a {type(raw).__name__}" if labels.ndim != 1 else f"values of type {labels.dtype}"
    elif problem is None and len(labels) and (labels.min() < 0 or labels.max() >= CIFAR_CLASSES):
        problem = f"values from {labels.min()} to {labels.max()}"
    if problem is not None:
        raise UserError(f"{path}: its labels must be a list of whole numbers 0..{CIFAR_CLASSES - 1}, got {problem}; "
                        "it is not a CIFAR-10 batch")  # fmt: skip
    return labels.astype(np.int64)


def _cifar_batch(path):
    d = restricted_load(path)
    try:
        data = np.asarray(_key(d, "data", path))
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{path}: its data is not an array of numbers; it is not a CIFAR-10 batch") from None
    labels = _cifar_labels(_key(d, "labels", path), path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(
            f"{path}: expected uint8 data of shape (n, 3072) and n labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    # each row: 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root):
    """CIFAR-10 (Krizhevsky 2009) from ``root/cifar-10-batches-py/`` (the folder torchvision's
    ``CIFAR10`` unpacks; ``root`` may also be that folder itself).

    Reads ``data_batch_1`` .. ``data_batch_5`` (train, 50000 images) and ``test_batch`` (10000),
    and the class names from ``batches.meta`` when present, all through :class:`RestrictedUnpickler`.

    :returns: :class:`ImageData` with uint8 ``(N, 3, 32, 32)`` images and int64 labels 0..9.
    :raises UserError: a missing file (named, with the folder), a file that is not a CIFAR batch,
        or a pickle that refers to anything but numpy array data.
    """
    root = Path(root)
    folder = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
    _need(folder, "the CIFAR-10 folder cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name in names + ["test_batch"]:
        _need(folder / name, f"the CIFAR-10 file {name}")
    train = [_cifar_batch(folder / n) for n in names]
    test_x, test_y = _cifar_batch(folder / "test_batch")
    classes = None
    if (folder / "batches.meta").exists():
        meta = restricted_load(folder / "batches.meta")
        names = _key(meta, "label_names", folder / "batches.meta")
        if not isinstance(names, (list, tuple)) or len(names) != CIFAR_CLASSES \
                or not all(isinstance(c, (bytes, str)) for c in names):  # fmt: skip
            raise UserError(f"{folder / 'batches.meta'}: label_names must be a list of {CIFAR_CLASSES} names, got "
                            f"{type(names).__name__}{f' of {len(names)}' if isinstance(names, (list, tuple)) else ''}")
        classes = [c.decode("latin1") if isinstance(c, bytes) else c for c in names]
    return ImageData(
        "cifar10",
        Split(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        Split(test_x, test_y),
        classes=classes,
    )


# SVHN -------------------------------------------------------------------------------------------


def _svhn_part(path):
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading SVHN's .mat files needs scipy; install it with: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a readable MATLAB file: {type(e).__name__}: {_one_line(e)}") from None
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path} has no 'X' and 'y' arrays; it is not an SVHN file")
    x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise UserError(f"{path}: expected X of shape (32, 32, 3, N) and N labels, got {x.shape} and {len(y)}")
    y[y == 10] = 0  # SVHN writes the digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y  # (H, W, C, N) -> (N, C, H, W)


def load_svhn(root):
    """SVHN cropped digits (Netzer et al. 2011) from ``root/train_32x32.mat`` and ``root/test_32x32.mat``
    (the files torchvision's ``SVHN`` downloads; ``extra_32x32.mat`` is not used). Needs scipy.

    :returns: :class:`ImageData`: uint8 ``(N, 3, 32, 32)`` images, int64 labels 0..9 (SVHN's label 10 is the digit 0).
    :raises UserError: a missing file (named, with the folder), scipy missing, or a file of another shape.
    """
    root = Path(root)
    parts = [_need(root / f"{p}_32x32.mat", f"the SVHN file {p}_32x32.mat") for p in ("train", "test")]
    (train_x, train_y), (test_x, test_y) = (_svhn_part(p) for p in parts)
    return ImageData("svhn", Split(train_x, train_y), Split(test_x, test_y), classes=[str(i) for i in range(10)])


# CelebA -----------------------------------------------------------------------------------------

#: side of the centre crop of CelebA's aligned 178x218 faces before resizing
CELEBA_CROP = 140


def _open_image(path, shown=None):
    """The PIL image of ``path``, opened lazily (its header only) as one of :data:`IMAGE_FORMATS`,
    with at most :func:`max_image_pixels` pixels; :class:`UserError` naming the file otherwise."""
    shown = shown or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as one line
            img = Image.open(path, formats=list(IMAGE_FORMATS))
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {shown}: not a {' or '.join(IMAGE_FORMATS)} image "
                        f"(pyro-vae reads only {', '.join(IMAGE_FORMATS)})") from None  # fmt: skip
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {shown}: {_one_line(e)}") from None
    w, h = img.size
    limit = max_image_pixels()
    if limit is not None and w * h > limit:
        img.close()
        raise UserError(f"image {shown} has {w}x{h} = {w * h} pixels, more than the limit of {limit} "
                        "(PIL.Image.MAX_IMAGE_PIXELS, Pillow's decompression-bomb guard); shrink it first")  # fmt: skip
    return img


def _read_image(path, shown=None):
    """PIL image of ``path``, fully decoded (:func:`_open_image`) and upright: turned and mirrored as its EXIF
    Orientation tag says (:func:`upright`), so the pixels are those every image viewer shows.

    :raises UserError: naming the file, if it is unreadable, of another format, larger than
        :func:`max_image_pixels`, or its EXIF data cannot be read.
    """
    img = _open_image(path, shown)
    try:
        with img, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above, as one line
            img.load()
            img = upright(img, shown or path)
            return img if img.mode != "P" else img.convert("RGBA")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {shown or path}: {_one_line(e)}") from None


#: EXIF tag 0x0112, Orientation: how the stored pixels are turned for display (values 1 to 8)
EXIF_ORIENTATION = 0x0112


def upright(img, shown="the image"):
    """A copy of the PIL image ``img`` as it is displayed: the transposition its EXIF Orientation tag
    (0x0112) names applied, with Pillow's :func:`PIL.ImageOps.exif_transpose`, and the tag dropped.

    Cameras and phones store a portrait photo as landscape pixels with Orientation 6 ("rotate 90
    degrees clockwise to display") or 8; 3 is upside down; 2, 4, 5, 7 are the mirrored versions
    (EXIF 2.32, CIPA DC-008, tag 0x0112). Without the tag, or with a value outside 1..8 (0 is often
    written for "unknown"), the pixels are taken as stored. JPEG, PNG (eXIf chunk) and every other
    format Pillow reads EXIF from are handled alike.

    :raises UserError: naming ``shown`` when the EXIF data is present but cannot be parsed.
    """
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise
    except Exception as e:  # Pillow's EXIF parser raises many kinds on damaged data (SyntaxError, KeyError, ...)
        raise UserError(f"cannot read the EXIF orientation of image {shown}: {type(e).__name__}: {_one_line(e)}") from None


def centre_crop(img, size):
    """The ``size x size`` centre of a PIL image (offsets rounded as torchvision's ``CenterCrop``)."""
    w, h = img.size
    if w < size or h < size:
        raise UserError(f"an image of {w}x{h} pixels is smaller than the {size}x{size} centre crop")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def load_celeba(root, size=64):
    """CelebA (Liu et al. 2015), aligned and cropped faces, from ``root/celeba/img_align_celeba/*.jpg``
    and the official split ``root/celeba/list_eval_partition.txt`` (lines ``000001.jpg 0``: 0 train,
    1 valid, 2 test; 162770 / 19867 / 19962 images), the layout torchvision's ``CelebA`` uses.

    Preprocessing, the usual protocol of VAE and WAE papers on 64x64 CelebA: the centre 140x140 of
    each 178x218 image, resized to ``size x size`` with PIL's bilinear filter (antialiased when
    shrinking). Source: Tolstikhin et al. (2018), "Wasserstein Auto-Encoders", Section 4 (CelebA
    pre-processed by 140x140 centre crops resized to 64x64), a protocol later VAE papers reuse.

    All ~200k images are decoded into memory: about 2.5 GB at 64x64.

    :returns: :class:`ImageData` with ``train``, ``valid`` and ``test``: uint8 ``(N, 3, size, size)``, no labels.
    :raises UserError: a missing folder, partition file or listed image (named), a malformed partition
        line (its number), an unreadable image (named).
    """
    root = Path(root)
    base = root if root.name == "celeba" else root / "celeba"
    folder = _need(base / "img_align_celeba", "the CelebA image folder img_align_celeba")
    partition = _need(base / "list_eval_partition.txt", "the CelebA split file list_eval_partition.txt")
    parts = {0: [], 1: [], 2: []}
    for number, line in enumerate(partition.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{partition}, line {number}: expected '<file>.jpg 0|1|2', got {line.strip()!r}")
        parts[int(fields[1])].append(fields[0])

    def read(names):
        images = np.empty((len(names), 3, size, size), dtype=np.uint8)
        for i, name in enumerate(names):
            path = folder / name
            if not path.exists():
                raise UserError(f"the CelebA image {name} listed in {partition.name} not found: looked for {path}")
            img = centre_crop(_read_image(path).convert("RGB"), CELEBA_CROP).resize((size, size), Image.BILINEAR)
            images[i] = np.asarray(img).transpose(2, 0, 1)
        return Split(images)

    return ImageData("celeba", read(parts[0]), read(parts[2]), valid=read(parts[1]))


# A folder of images -----------------------------------------------------------------------------


def _pixels(img):
    """A PIL image as uint8 ``(H, W, 3)`` RGB. Alpha is dropped (the stored colours kept, as
    ``Image.convert("RGB")`` and torchvision's ``ImageFolder`` loader do); 16-bit grayscale is
    rescaled to 8 bits; palette, CMYK and 1-bit images are converted."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(1.0, float(a.max()))
        a = np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))


def load_image_folder(path, image_size=None):
    """The PNG/JPEG images (``.png``, ``.jpg``, ``.jpeg``, any case) of a folder.

    Layout: either flat (images in ``path``; no labels) or one subfolder per class (images in
    ``path/<class>/``, searched recursively, as torchvision's ``ImageFolder``; label ``i`` is the
    ``i``-th class name in sorted order). Other files and names starting with ``.`` are skipped.

    Channels: every image is read as RGB (alpha dropped, see :func:`_pixels`); if all images are
    gray (R = G = B at every pixel, e.g. grayscale PNGs or gray JPEGs) the data set has ``C = 1``,
    otherwise ``C = 3``. RGBA's alpha is dropped rather than kept as a fourth channel: most
    transparency in image folders is a cut-out background, not something to model.

    Orientation: every image is first turned upright by its EXIF Orientation tag (:func:`upright`;
    photos from phones and cameras are often stored sideways with such a tag), so sizes are
    compared, and images resized, as every viewer shows them (height x width as displayed).

    Sizes: ``image_size`` (``(H, W)`` or one int for a square) resizes every image to exactly that
    (bilinear, no crop, as ``torchvision.transforms.Resize((H, W))``); without it all images must
    have one size.

    Formats: only :data:`IMAGE_FORMATS` (PNG and JPEG) are decoded, whatever a file's content says (an
    EPS file named ``.png`` is refused, never handed to Ghostscript); an image of more than
    :func:`max_image_pixels` pixels is refused from its header. Memory: before decoding, the set's
    peak memory is estimated as N x H x W x :data:`BYTES_PER_PIXEL` bytes and refused when it exceeds
    the memory available (:func:`pyro_vae.resources.check_memory`).

    :returns: :class:`FolderImages`: uint8 ``(N, C, H, W)``, labels int64 ``(N,)`` or ``None``,
        class names, file paths relative to ``path``.
    :raises UserError: a missing folder; no images; images both at the top and in class folders;
        an unreadable or corrupt image, one of another format or too many pixels (named); images of
        different sizes without ``image_size`` (two of them named with their sizes); a bad
        ``image_size``; a set that would not fit in memory.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"image folder not found: looked for {root}" if not root.exists() else f"{root} is not a folder")
    size = _image_size(image_size)

    def images_in(folder, recursive):
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(
            p for p in found
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )  # fmt: skip

    top = images_in(root, recursive=False)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, images_in(d, recursive=True)) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    if top and per_class:
        raise UserError(
            f"{root} has images both at the top (e.g. {top[0].name}) and in class subfolders "
            f"(e.g. {per_class[0][0]}/); put all of them in class subfolders, or all at the top"
        )
    if per_class:
        classes = [name for name, _ in per_class]
        files = [f for _, fs in per_class for f in fs]
        labels = np.concatenate([np.full(len(fs), i, dtype=np.int64) for i, (_, fs) in enumerate(per_class)])
    else:
        classes, files, labels = None, top, None
    if not files:
        raise UserError(f"no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")

    if size is None:  # all images must have the first one's size (checked below)
        with _open_image(files[0], files[0].relative_to(root).as_posix()) as img:
            size = img.size[::-1]
        resize = False
    else:
        resize = True
    h, w = size
    check_memory(len(files) * h * w * BYTES_PER_PIXEL, f"{len(files)} images of {h}x{w} pixels in {root}",
                 "use fewer images or a smaller --image-size")  # fmt: skip
    arrays, first = [], None
    for f in files:
        shown = f.relative_to(root).as_posix()
        img = _read_image(f, shown)
        if resize:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        a = _pixels(img)
        if first is None:
            first = (shown, a.shape[:2])
        elif a.shape[:2] != first[1]:
            (h0, w0), (h1, w1) = first[1], a.shape[:2]
            raise UserError(
                f"the images in {root} have different sizes ({first[0]} is {h0}x{w0}, {shown} is {h1}x{w1}, "
                "height x width); give an image size (--image-size H,W) to resize them all"
            )
        arrays.append(a)
    images = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    if (images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all():
        images = images[:, :1]
    return FolderImages(np.ascontiguousarray(images), labels, classes, [f.relative_to(root).as_posix() for f in files])


def _image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise UserError(f"an image size is H,W or one number, got {image_size!r}") from None
    if h < 1 or w < 1:
        raise UserError(f"an image size needs positive height and width, got {h}x{w}")
    return h, w


# Patches of scikit-learn's sample photos -------------------------------------------------------


def sample_photos():
    """The two colour photos bundled with scikit-learn (``china.jpg``, ``flower.jpg``; 427x640 RGB),
    as uint8 ``(H, W, 3)`` arrays. Needs scikit-learn (no download)."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise UserError("the sample-patches data set needs scikit-learn; install it with: pip install scikit-learn") from None
    return [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]


def image_patches(image, size, stride):
    """All ``size x size`` patches of an ``(H, W, C)`` image whose top-left corners lie on a grid of
    step ``stride`` starting at (0, 0), row by row: uint8 ``(N, C, size, size)``."""
    h, w = image.shape[:2]
    rows, cols = range(0, h - size + 1, stride), range(0, w - size + 1, stride)
    patches = [image[r : r + size, c : c + size] for r in rows for c in cols]
    return np.stack(patches).transpose(0, 3, 1, 2) if patches else np.empty((0, image.shape[2], size, size), np.uint8)


def load_sample_patches(size=32, stride=16, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """An offline colour data set: ``size x size`` patches of scikit-learn's two sample photos
    (:func:`sample_photos`), cut on a grid of step ``stride`` (:func:`image_patches`), split at
    random (:func:`seeded_split` with ``seed``) into train and test.

    With the defaults (32x32, stride 16): 25 x 39 = 975 patches per photo, 1950 in all; 1755 train
    and 195 test. With ``stride < size`` neighbouring patches overlap, so a test patch shares pixels
    with training patches and test scores are somewhat optimistic; ``stride=size`` gives disjoint
    patches (520 at 32x32) and an honest split.

    :returns: :class:`ImageData`: uint8 ``(N, 3, size, size)``, no labels.
    :raises UserError: scikit-learn missing, or a size/stride that gives no patch.
    """
    if int(size) < 1 or int(stride) < 1:
        raise UserError(f"patch size and stride must be positive, got {size} and {stride}")
    patches = np.concatenate([image_patches(photo, int(size), int(stride)) for photo in sample_photos()])
    if len(patches) < 2:
        raise UserError(f"{size}x{size} patches with stride {stride} give fewer than 2 patches of the sample photos")
    train, test = seeded_split(len(patches), test_fraction, seed)
    return ImageData("sample-patches", Split(np.ascontiguousarray(patches[train])), Split(np.ascontiguousarray(patches[test])))
