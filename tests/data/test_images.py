"""pyro_vae.data.images on small files written here in each data set's own on-disk format."""

import codecs
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pyro_vae.data.images import (
    ImageData,
    RestrictedUnpickler,
    image_patches,
    load_celeba,
    load_cifar10,
    load_image_folder,
    load_sample_patches,
    load_svhn,
    restricted_load,
    sample_photos,
)
from pyro_vae.errors import UserError

# CIFAR-10 ---------------------------------------------------------------------------------------


def write_cifar(root, n=3, protocol=pickle.DEFAULT_PROTOCOL, str_keys=False, seed=0):
    """A tiny cifar-10-batches-py: 5 train batches of n and a test batch of n - 1, as the real one
    (dicts of b'data' uint8 (n, 3072) and b'labels' lists), plus batches.meta. Returns the rows."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    key = (lambda s: s) if str_keys else (lambda s: s.encode())
    rows, labels = {}, {}
    for name, m in [(f"data_batch_{i}", n) for i in range(1, 6)] + [("test_batch", n - 1)]:
        rows[name] = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels[name] = [int(v) for v in rng.integers(0, 10, m)]
        batch = {key("batch_label"): key(name), key("data"): rows[name], key("labels"): labels[name],
                 key("filenames"): [key(f"img{i}.png") for i in range(m)]}  # fmt: skip
        with open(folder / name, "wb") as f:
            if protocol == "py2":
                f.write(python2_pickle(rows[name], labels[name]))
            else:
                pickle.dump(batch, f, protocol=protocol)
    if protocol == "py2":
        protocol, key = 2, lambda s: s
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): names, key("num_vis"): 3072}, f, protocol=protocol)
    return rows, labels


def python2_pickle(data, labels):
    """The bytes Python 2's cPickle.dump(..., 2) writes for {'data': uint8 (n, m) array, 'labels': [...]},
    as in the real CIFAR-10 files: str as SHORT_BINSTRING/BINSTRING, the array through
    numpy.core.multiarray._reconstruct and ndarray.__setstate__ (opcodes written by hand)."""

    def s(b):
        return b"U" + bytes([len(b)]) + b

    n, m = data.shape
    out = b"\x80\x02}(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
    out += b"(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", m) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb"
    out += s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


@pytest.mark.parametrize("protocol,str_keys", [("py2", False), (0, False), (2, False), (4, False), (5, False), (2, True)])
def test_cifar10_from_its_pickled_batches(tmp_path, protocol, str_keys):
    rows, labels = write_cifar(tmp_path, protocol=protocol, str_keys=str_keys)
    data = load_cifar10(tmp_path)
    assert isinstance(data, ImageData) and data.name == "cifar10"
    assert data.train.images.shape == (15, 3, 32, 32) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (2, 3, 32, 32)
    assert data.train.labels.dtype == np.int64 and data.train.labels.tolist() == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert data.test.labels.tolist() == labels["test_batch"]
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    # the row layout: 1024 red, 1024 green, 1024 blue values, each image row-major
    row = rows["data_batch_2"][1]
    img = data.train.images[3 + 1]
    for c, r, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 3)]:
        assert img[c, r, col] == row[c * 1024 + r * 32 + col]
    # the folder itself works as root too
    assert load_cifar10(tmp_path / "cifar-10-batches-py").test.images.shape == (2, 3, 32, 32)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


class Rot13:
    def __reduce__(self):
        return (codecs.encode, ("text", "rot13"))


@pytest.mark.parametrize("evil_class", [Evil, EvalEvil])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, evil_class):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = evil_class()
    evil.marker = marker
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": evil, b"labels": [0]}, f)
    with pytest.raises(UserError, match=r"data_batch_3 refers to (posix|os|nt|builtins)\.(system|eval).*must not run code"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_restricted_unpickler_allows_arrays_and_plain_data_only(tmp_path):
    value = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [1.5, "x", b"y", (None, True)]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(value))
    back = restricted_load(path)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.int16
    assert back["b"] == value["b"]
    path.write_bytes(pickle.dumps({"when": np.datetime64("2020-01-01")}))  # a numpy scalar: not an array
    with pytest.raises(UserError, match="not numpy array data"):
        restricted_load(path)
    path.write_bytes(pickle.dumps(Rot13(), protocol=2))
    with pytest.raises(UserError, match="only latin-1 byte strings"):
        restricted_load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable pickle"):
        restricted_load(path)
    assert RestrictedUnpickler.ALLOWED[("numpy", "ndarray")] is np.ndarray


def test_cifar10_missing_files_are_named(tmp_path):
    with pytest.raises(UserError, match=f"cifar-10-batches-py not found: looked for {tmp_path / 'cifar-10-batches-py'}"):
        load_cifar10(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match="CIFAR-10 file test_batch not found: looked for .*cifar-10-batches-py/test_batch"):
        load_cifar10(tmp_path)


# SVHN -------------------------------------------------------------------------------------------


def write_svhn(root, n_train=4, n_test=3):
    rng = np.random.default_rng(1)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        scipy.io.savemat(root / f"{part}_32x32.mat", {"X": x, "y": y})
        out[part] = (x, y)
    return out


def test_svhn_from_its_mat_files(tmp_path):
    written = write_svhn(tmp_path)
    data = load_svhn(tmp_path)
    for part, split in (("train", data.train), ("test", data.test)):
        x, y = written[part]
        assert split.images.shape == (x.shape[3], 3, 32, 32) and split.images.dtype == np.uint8
        for i, c, h, w in [(0, 0, 0, 0), (1, 2, 5, 30), (2, 1, 31, 0)]:
            assert split.images[i, c, h, w] == x[h, w, c, i]
        assert split.labels.dtype == np.int64
        assert split.labels.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
    assert data.train.labels[0] == 0


def test_svhn_missing_file_and_missing_scipy(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=f"SVHN file train_32x32.mat not found: looked for {tmp_path / 'train_32x32.mat'}"):
        load_svhn(tmp_path)
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(UserError, match="test_32x32.mat not found"):
        load_svhn(tmp_path)
    write_svhn(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)
    with pytest.raises(UserError, match="needs scipy"):
        load_svhn(tmp_path)


# CelebA -----------------------------------------------------------------------------------------


def write_celeba(root, parts=(0, 0, 1, 2, 0)):
    """Aligned CelebA JPEGs (178 wide, 218 high): red outside the 140x140 centre (rows 39..178,
    columns 19..158), four coloured quadrants inside, each image a little different."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    colours = np.array([[0, 0, 255], [0, 255, 0], [255, 255, 255], [40, 40, 40]], dtype=np.uint8)
    lines = []
    for i, part in enumerate(parts):
        a = np.zeros((218, 178, 3), dtype=np.uint8)
        a[...] = (255, 0, 0)
        inner = a[39:179, 19:159]
        inner[:70, :70], inner[:70, 70:], inner[70:, :70], inner[70:, 70:] = np.roll(colours, i, axis=0)
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(a).save(folder / name, quality=100, subsampling=0)
        lines.append(f"{name} {part}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder, colours


def test_celeba_split_and_exact_centre_crop(tmp_path):
    folder, _ = write_celeba(tmp_path)
    data = load_celeba(tmp_path, size=140)  # no resize: the crop itself
    assert len(data.train) == 3 and len(data.valid) == 1 and len(data.test) == 1
    assert data.train.labels is None and data.train.images.shape == (3, 3, 140, 140)
    for images, name in [(data.train.images[1], "000002.jpg"), (data.valid.images[0], "000003.jpg"), (data.test.images[0], "000004.jpg")]:
        decoded = np.asarray(Image.open(folder / name))  # the JPEG as written and decoded
        np.testing.assert_array_equal(images, decoded[39:179, 19:159].transpose(2, 0, 1))


def test_celeba_64x64_keeps_the_quadrants_and_none_of_the_border(tmp_path):
    _, colours = write_celeba(tmp_path)
    data = load_celeba(tmp_path)
    img = data.train.images[0].astype(int)  # (3, 64, 64)
    assert img.shape == (3, 64, 64)
    quadrants = [img[:, :32, :32], img[:, :32, 32:], img[:, 32:, :32], img[:, 32:, 32:]]
    for q, colour in zip(quadrants, colours):
        core = q[:, 4:-4, 4:-4]
        assert np.abs(core - colour.astype(int)[:, None, None]).max() <= 3
    # the red border outside the crop does not leak into the edge rows and columns
    edges = np.concatenate([img[:, 0].T, img[:, -1].T, img[:, :, 0].T, img[:, :, -1].T])
    assert not ((edges[:, 0] > 200) & (edges[:, 1] < 60) & (edges[:, 2] < 60)).any()


def test_celeba_missing_files_are_named(tmp_path):
    with pytest.raises(UserError, match=f"img_align_celeba not found: looked for {tmp_path / 'celeba' / 'img_align_celeba'}"):
        load_celeba(tmp_path)
    folder, _ = write_celeba(tmp_path)
    (folder / "000004.jpg").unlink()
    with pytest.raises(UserError, match="CelebA image 000004.jpg listed in list_eval_partition.txt not found"):
        load_celeba(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(UserError, match="list_eval_partition.txt not found: looked for"):
        load_celeba(tmp_path)


# A folder of images -----------------------------------------------------------------------------


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 100, "subsampling": 0} if path.suffix == ".jpg" else {}))


def test_image_folder_with_classes_colour_and_alpha(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 4), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    save(tmp_path / "dog" / "b.png", rgb[0])
    save(tmp_path / "dog" / "a.PNG", rgb[1])
    save(tmp_path / "cat" / "x.png", gray)  # grayscale among colour: replicated to RGB
    save(tmp_path / "cat" / "sub" / "y.png", rgba)  # RGBA: alpha dropped
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    save(tmp_path / ".hidden" / "z.png", rgb[2])
    out = load_image_folder(tmp_path)
    assert out.classes == ["cat", "dog"]
    assert out.files == ["cat/sub/y.png", "cat/x.png", "dog/a.PNG", "dog/b.png"]
    assert out.labels.dtype == np.int64 and out.labels.tolist() == [0, 0, 1, 1]
    assert out.images.dtype == np.uint8 and out.images.shape == (4, 3, 5, 4)
    np.testing.assert_array_equal(out.images[0], rgba[..., :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(out.images[1], np.stack([gray] * 3))
    np.testing.assert_array_equal(out.images[2], rgb[1].transpose(2, 0, 1))
    np.testing.assert_array_equal(out.images[3], rgb[0].transpose(2, 0, 1))


def test_flat_grayscale_folder_and_16_bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    save(tmp_path / "1.png", gray)
    save(tmp_path / "2.jpg", np.stack([gray] * 3, -1))  # a gray JPEG saved as RGB: still gray
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "3.png")  # 16-bit grayscale
    out = load_image_folder(tmp_path)
    assert out.labels is None and out.classes is None and out.images.shape == (3, 1, 3, 4)
    np.testing.assert_array_equal(out.images[0, 0], gray)
    assert np.abs(out.images[1, 0].astype(int) - gray).max() <= 2  # JPEG
    np.testing.assert_array_equal(out.images[2, 0], np.round(deep / 65535 * 255).astype(np.uint8))


def test_image_size_resizes_and_mixed_sizes_are_refused(tmp_path):
    save(tmp_path / "a.png", np.full((10, 6, 3), (10, 200, 30), dtype=np.uint8))
    save(tmp_path / "b.png", np.full((7, 9, 3), (90, 0, 250), dtype=np.uint8))
    with pytest.raises(UserError, match=r"different sizes \(a.png is 10x6, b.png is 7x9, height x width\)"):
        load_image_folder(tmp_path)
    out = load_image_folder(tmp_path, image_size=(8, 5))
    assert out.images.shape == (2, 3, 8, 5)
    assert (out.images[0].reshape(3, -1).T == (10, 200, 30)).all() and (out.images[1].reshape(3, -1).T == (90, 0, 250)).all()
    assert load_image_folder(tmp_path, image_size=4).images.shape == (2, 3, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match=f"image folder not found: looked for {tmp_path / 'nope'}"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(UserError, match="no PNG or JPEG images"):
        load_image_folder(tmp_path)
    save(tmp_path / "cls" / "ok.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "cls" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="cannot read image cls/broken.jpg"):
        load_image_folder(tmp_path)
    (tmp_path / "cls" / "broken.jpg").unlink()
    save(tmp_path / "top.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match="both at the top"):
        load_image_folder(tmp_path)
    with pytest.raises(UserError, match="positive height and width"):
        load_image_folder(tmp_path, image_size=(0, 3))


# EXIF orientation -------------------------------------------------------------------------------

#: The pixels a camera stores for an image ``a`` (H x W as displayed) under each EXIF Orientation value,
#: from the tag's definition (EXIF 2.32, tag 0x0112: where the stored 0th row and 0th column lie in the
#: displayed image), written with numpy, independently of Pillow's ``exif_transpose``:
#: 1 top/left, 2 top/right, 3 bottom/right, 4 bottom/left, 5 left/top, 6 right/top, 7 right/bottom, 8 left/bottom.
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),  # stored[i, j] = a[j, W - 1 - i]: display turns it 90 degrees clockwise
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, -1),  # stored[i, j] = a[H - 1 - j, i]
}


def save_oriented(path, upright_pixels, orientation, **kwargs):
    """Write ``upright_pixels`` (as displayed) the way a camera does: stored turned, with the EXIF tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(STORED[orientation](upright_pixels))
    Image.fromarray(stored).save(path, exif=exif.tobytes(), **kwargs)


def test_stored_pixels_follow_the_tag_definition():
    a = np.arange(6).reshape(2, 3)  # 2 high, 3 wide; 0 1 2 / 3 4 5
    assert STORED[6](a).tolist() == [[2, 5], [1, 4], [0, 3]]  # the right column on top: turned left when stored
    assert STORED[8](a).tolist() == [[3, 0], [4, 1], [5, 2]]
    assert STORED[7](a).tolist() == [[5, 2], [4, 1], [3, 0]]
    assert STORED[5](a).tolist() == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_read_upright(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    photo = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)  # 5 high, 3 wide, no symmetry
    save_oriented(tmp_path / "photo.png", photo, orientation)  # PNG keeps EXIF in its eXIf chunk, pixels exact
    with Image.open(tmp_path / "photo.png") as stored:
        assert stored.size == ((5, 3) if orientation >= 5 else (3, 5))  # (width, height) stored
    out = load_image_folder(tmp_path)
    assert out.images.shape == (1, 3, 5, 3)
    np.testing.assert_array_equal(out.images[0], photo.transpose(2, 0, 1))


def test_a_folder_of_portrait_photos_some_stored_sideways(tmp_path):
    # the arrow of the field report: red head at the top; JPEGs as a phone writes them (orientations 1, 6, 8, 3)
    arrow = np.zeros((24, 16, 3), np.uint8)
    arrow[2:22, 7:9] = 255
    arrow[2:8, 4:12] = [255, 0, 0]
    for i, orientation in enumerate([1, 6, 8, 3, 6, 1]):
        save_oriented(tmp_path / f"photo{i}.jpg", arrow, orientation, quality=95)
    out = load_image_folder(tmp_path)  # one displayed size: no "different sizes"
    assert out.images.shape == (6, 3, 24, 16)
    for img in out.images.astype(int):
        error = np.abs(img - arrow.transpose(2, 0, 1)).mean()  # JPEG noise only: a few levels
        upside_down = np.abs(img - arrow[::-1].transpose(2, 0, 1)).mean()
        assert error < 6 and upside_down > 4 * error
        red = (img[0] > 200) & (img[1] < 80)
        assert red[:10].sum() > 0.9 * red.sum()  # the head is at the top
    # with --image-size the displayed image is resized, not the stored one
    resized = load_image_folder(tmp_path, image_size=(12, 8))
    assert resized.images.shape == (6, 3, 12, 8)
    np.testing.assert_allclose(resized.images.astype(float).std(axis=0).mean(), 0, atol=6)
    # a sideways photo among others of its stored size is now, rightly, of another size
    save(tmp_path / "landscape.jpg", np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(UserError, match="landscape.jpg is 16x24"):
        load_image_folder(tmp_path)


def test_exif_orientation_in_gray_palette_and_16_bit_images(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (4, 7), dtype=np.uint8)
    save_oriented(tmp_path / "a.png", gray, 6)
    deep = rng.integers(0, 65536, (4, 7), dtype=np.uint16)
    save_oriented(tmp_path / "b.png", deep, 8)
    palette_upright = rng.integers(0, 4, (4, 7), dtype=np.uint8)
    stored = Image.fromarray(np.ascontiguousarray(STORED[3](palette_upright)), mode="L").convert("P")
    stored.putpalette([0, 0, 0, 255, 255, 255, 10, 20, 30, 200, 100, 0] + [0] * 756)
    exif = Image.Exif()
    exif[0x0112] = 3
    stored.save(tmp_path / "c.png", exif=exif.tobytes())
    out = load_image_folder(tmp_path)
    assert out.images.shape == (3, 3, 4, 7)
    np.testing.assert_array_equal(out.images[0], np.stack([gray] * 3))
    np.testing.assert_array_equal(out.images[1, 0], np.round(deep / 65535 * 255).astype(np.uint8))
    colours = np.array([[0, 0, 0], [255, 255, 255], [10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(out.images[2], colours[palette_upright].transpose(2, 0, 1))


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_an_orientation_outside_1_to_8_leaves_the_pixels_as_stored(tmp_path, value):
    photo = np.random.default_rng(value).integers(0, 256, (5, 3, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = value
    Image.fromarray(photo).save(tmp_path / "p.png", exif=exif.tobytes())
    np.testing.assert_array_equal(load_image_folder(tmp_path).images[0], photo.transpose(2, 0, 1))


def test_celeba_images_are_read_upright(tmp_path):
    folder, _ = write_celeba(tmp_path)
    expected = load_celeba(tmp_path, size=140)
    with Image.open(folder / "000002.jpg") as img:
        upright_pixels = np.asarray(img)  # decoded once, then stored losslessly
    (folder / "000002.jpg").unlink()
    save_oriented(folder / "000002.jpg", upright_pixels, 6, format="PNG")  # PNG bytes: exact pixels
    got = load_celeba(tmp_path, size=140)
    np.testing.assert_array_equal(got.train.images, expected.train.images)


# Patches of scikit-learn's photos ---------------------------------------------------------------


def test_sample_patches_cut_and_split():
    photos = sample_photos()
    assert [p.shape for p in photos] == [(427, 640, 3), (427, 640, 3)]
    data = load_sample_patches()
    assert data.train.images.shape == (1755, 3, 32, 32) and data.test.images.shape == (195, 3, 32, 32)
    assert data.train.images.dtype == np.uint8 and data.train.labels is None
    # every patch is a 32x32 window of a photo at a multiple of 16: rebuild them all by hand
    expected = [p[r : r + 32, c : c + 32].transpose(2, 0, 1) for p in photos for r in range(0, 396, 16) for c in range(0, 609, 16)]
    assert len(expected) == 1950
    everything = np.concatenate([data.train.images, data.test.images])
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, everything)) == sorted(map(key, expected))
    # seeded: the same split again, another with another seed
    again = load_sample_patches()
    np.testing.assert_array_equal(again.test.images, data.test.images)
    assert not np.array_equal(load_sample_patches(seed=1).test.images, data.test.images)
    assert len(load_sample_patches(stride=32).train) + len(load_sample_patches(stride=32).test) == 2 * 13 * 20


def test_image_patches_grid():
    img = np.arange(5 * 7 * 2).reshape(5, 7, 2).astype(np.uint8)
    p = image_patches(img, 3, 2)
    assert p.shape == (2 * 3, 2, 3, 3)
    np.testing.assert_array_equal(p[4], img[2:5, 2:5].transpose(2, 0, 1))


def test_files_of_the_wrong_kind_are_one_line_errors(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, f)
    with pytest.raises(UserError, match=r"data_batch_4: expected uint8 data of shape \(n, 3072\) and n labels, got uint8 \(2, 100\)"):
        load_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_4", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(UserError, match="does not hold a CIFAR batch"):
        load_cifar10(tmp_path)
    write_svhn(tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 but\nnot really")
    with pytest.raises(UserError, match="train_32x32.mat is not a readable MATLAB file") as e:
        load_svhn(tmp_path)
    assert "\n" not in str(e.value)


# Malformed CIFAR entries, image formats and sizes (issue 20) -------------------------------------


def _rewrite(path, **entries):
    with open(path, "rb") as f:
        d = pickle.load(f)
    d.update({k.encode(): v for k, v in entries.items()})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize("labels,says", [
    ("abc", "got a str"), (5, "got a int"), ({b"a": 1}, "got a dict"), ([10**30] * 3, "values of type object"),
    ([[1, 2], [3]], "ragged or not numbers"), ([[1], [2], [3]], "got a list"), ([1.0, 2.0, 3.0], "values of type float64"),
    ([0, 10, 1], "values from 0 to 10"), ([-1, 0, 1], "values from -1 to 1"), (["1", "2", "3"], "values of type <U1"),
    (np.array([1, 2, 3], dtype=np.float32), "values of type float32"), ([True, False, True], "values of type bool"),
])  # fmt: skip
def test_cifar_labels_that_are_not_0_to_9_are_one_line_errors(tmp_path, labels, says):
    write_cifar(tmp_path)
    _rewrite(tmp_path / "cifar-10-batches-py" / "data_batch_2", labels=labels)
    with pytest.raises(UserError, match="data_batch_2: its labels must be a list of whole numbers 0..9") as e:
        load_cifar10(tmp_path)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_cifar_integer_label_arrays_of_any_width_are_read(tmp_path):
    _, labels = write_cifar(tmp_path)
    _rewrite(tmp_path / "cifar-10-batches-py" / "test_batch", labels=np.array(labels["test_batch"], dtype=np.uint8))
    out = load_cifar10(tmp_path)
    assert out.test.labels.dtype == np.int64 and out.test.labels.tolist() == labels["test_batch"]


@pytest.mark.parametrize("names,says", [(5, "got int"), ([b"x"] * 9, "got list of 9"), ([1] * 10, "got list of 10"),
                                        ({b"a": b"b"}, "got dict")])  # fmt: skip
def test_cifar_label_names_must_be_ten_names(tmp_path, names, says):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f, protocol=2)
    with pytest.raises(UserError, match="batches.meta: label_names must be a list of 10 names") as e:
        load_cifar10(tmp_path)
    assert says in str(e.value)


def test_cifar_data_that_numpy_cannot_hold_is_one_line(tmp_path):
    write_cifar(tmp_path)
    _rewrite(tmp_path / "cifar-10-batches-py" / "data_batch_1", data=[[1, 2], [3]])
    with pytest.raises(UserError, match="data_batch_1: its data is not an array of numbers"):
        load_cifar10(tmp_path)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


@pytest.mark.parametrize("kind", ["eps", "pdf", "gif", "bmp", "tiff", "webp"])
def test_only_png_and_jpeg_are_decoded_whatever_the_suffix(tmp_path, monkeypatch, kind):
    # a stand-in Ghostscript on PATH records any call: opening a data folder must never run it
    calls = tmp_path / "gs_calls"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gs").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (tmp_path / "bin" / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "imgs"
    save(folder / "a.png", np.zeros((8, 8), np.uint8))
    if kind == "eps":
        (folder / "evil.png").write_bytes(EPS)
    elif kind == "pdf":
        (folder / "evil.jpg").write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n")
    else:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "other.png", format=kind.upper())
    with pytest.raises(UserError, match=r"not a PNG or JPEG image \(pyro-vae reads only PNG, JPEG\)") as e:
        load_image_folder(folder)
    assert "\n" not in str(e.value) and not calls.exists()


def test_images_beyond_the_pixel_limit_are_refused_from_their_header(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    save(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    save(tmp_path / "b.png", np.zeros((20, 20), np.uint8))
    decoded = []
    monkeypatch.setattr(PILImage.Image, "load", lambda self: decoded.append(self) or None)
    # 400 pixels: above the limit, below twice it (where Pillow only warns): one line, no warning
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(UserError, match=r"image a.png has 20x20 = 400 pixels, more than the limit of 300"):
        load_image_folder(tmp_path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # where Pillow raises its own error: one line too
    with pytest.raises(UserError, match=r"a.png"):
        load_image_folder(tmp_path)
    assert decoded == []  # refused before any pixel was decoded


def test_a_set_that_would_not_fit_in_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    import pyro_vae.data.images as images

    for i in range(5):
        save(tmp_path / f"{i}.png", np.zeros((10, 12), np.uint8))
    seen = []
    monkeypatch.setattr(images, "check_memory", lambda needed, what, advice="": seen.append((needed, what)))
    assert load_image_folder(tmp_path).images.shape == (5, 1, 10, 12)
    assert load_image_folder(tmp_path, image_size=(30, 40)).images.shape == (5, 1, 30, 40)
    # the estimate: N x H x W x 18 bytes (the first image's size, or the size asked for)
    assert [n for n, _ in seen] == [5 * 10 * 12 * 18, 5 * 30 * 40 * 18]
    assert seen[1][1] == f"5 images of 30x40 pixels in {tmp_path}"
    monkeypatch.undo()
    from pyro_vae import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 5 * 10 * 12 * 18 - 1)
    with pytest.raises(UserError, match=r"5 images of 10x12 pixels in .* would need about 10.8 KB of memory, "
                                        r"more than the 10.8 KB available; use fewer images or a smaller --image-size"):
        load_image_folder(tmp_path)
    monkeypatch.setattr(resources, "available_memory", lambda: 10**9)
    with pytest.raises(UserError, match=r"5 images of 100000x100000 pixels .* about 900.0 GB"):
        load_image_folder(tmp_path, image_size=100000)
