"""pyro_vae.vae.image_nets: shapes for odd image sizes, depth caps, padding/cropping, gradients, parameter counts."""

import pytest
import torch
import torch.nn as nn

from pyro_vae.errors import UserError
from pyro_vae.vae.image_nets import ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder, num_stages, padding_for

SIZES = [(28, 28), (28, 20), (32, 32), (79, 79), (8, 8), (64, 64)]
#: (stages, bottom feature map) expected for each size with 4 requested stages, worked out by hand
GEOMETRY = {(28, 28): (4, (2, 2)), (28, 20): (4, (2, 2)), (32, 32): (4, (2, 2)), (79, 79): (4, (5, 5)),
            (8, 8): (2, (2, 2)), (64, 64): (4, (4, 4))}  # fmt: skip
SMALL_ENC, SMALL_DEC = (4, 6, 8, 8), (8, 8, 6, 4)  # narrow widths keep the tests fast
Z = 3


def make(kind, c, hw, out_channels, **kw):
    x_shape = (c, *hw)
    if kind == "conv":
        return ConvEncoder(x_shape, SMALL_ENC, **kw), ConvDecoder(Z, x_shape, out_channels, SMALL_DEC, **kw)
    return ResNetEncoder(x_shape, SMALL_ENC, **kw), ResNetDecoder(Z, x_shape, out_channels, SMALL_DEC, **kw)


@pytest.mark.parametrize("kind", ["conv", "resnet"])
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("c", [1, 3])
def test_shapes_for_every_size_and_channel_count(kind, hw, c):
    enc, dec = make(kind, c, hw, out_channels=2 * c)
    stages, bottom = GEOMETRY[hw]
    assert enc.stages == dec.stages == stages and enc.bottom == dec.bottom == bottom
    assert enc.out_dim == SMALL_ENC[stages - 1] * bottom[0] * bottom[1]
    x = torch.rand(2, c, *hw)
    assert enc(x).shape == (2, enc.out_dim)
    assert enc(x.flatten(1)).shape == (2, enc.out_dim)  # flat data, as today's datasets hold it
    assert dec(torch.randn(2, Z)).shape == (2, 2 * c, *hw)


@pytest.mark.parametrize("kind", ["conv", "resnet"])
def test_leading_dims_are_batched_and_items_are_independent(kind):
    enc, dec = make(kind, 3, (28, 20), out_channels=6)
    x = torch.rand(4, 2, 3, 28, 20)  # particles x batch
    f = enc(x)
    assert f.shape == (4, 2, enc.out_dim)
    torch.testing.assert_close(f[1, 0], enc(x[1, 0].unsqueeze(0))[0], atol=1e-5, rtol=1e-5)
    z = torch.randn(4, 2, Z)
    y = dec(z)
    assert y.shape == (4, 2, 6, 28, 20)
    torch.testing.assert_close(y[2, 1], dec(z[2, 1]), atol=1e-5, rtol=1e-5)
    assert dec(torch.randn(Z)).shape == (6, 28, 20)  # no batch dim at all


def test_depth_rule_and_padding():
    assert [num_stages(s, s, 4) for s in (1, 2, 3, 4, 5, 8, 9, 16, 17, 64)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert num_stages(28, 20, 3) == 3 and num_stages(100, 6, 4) == 2  # the short side decides
    assert padding_for(79, 4) == (0, 1) and padding_for(20, 4) == (6, 6) and padding_for(28, 4) == (2, 2)
    assert padding_for(32, 4) == (0, 0) and padding_for(7, 0) == (0, 0)


def test_encoder_sees_only_the_image_and_decoder_crops_the_padding():
    """Padding is zeros around the image: the conv encoder of a 4-pixel-padded image equals a net on
    the zero-padded image; the decoder output is the centre crop of its padded maps."""
    torch.manual_seed(0)
    enc = ConvEncoder((1, 28, 20), (3, 3))  # 2 stages: 28x20 -> 28x20 (multiples of 4), no padding
    assert enc.pad_h == (0, 0) and enc.pad_w == (0, 0)
    enc = ConvEncoder((1, 26, 18), (3, 3))  # padded to 28x20: 1 row on each side, 1 column on each side
    assert enc.pad_h == (1, 1) and enc.pad_w == (1, 1)
    x = torch.rand(2, 1, 26, 18)
    torch.testing.assert_close(enc(x), enc.body(nn.functional.pad(x, (1, 1, 1, 1))))
    dec = ConvDecoder(Z, (1, 26, 18), 2, (3, 3))
    z = torch.randn(2, Z)
    full = dec.body(dec.input_activation(dec.input(z)).reshape(2, *dec.start))
    assert full.shape == (2, 2, 28, 20)
    torch.testing.assert_close(dec(z), full[..., 1:27, 1:19])


def test_an_image_too_small_for_any_stage():
    enc, dec = ConvEncoder((2, 2, 5)), ConvDecoder(Z, (2, 2, 5), 4)
    assert enc.stages == 0 and enc.out_dim == 2 * 2 * 5
    torch.testing.assert_close(enc(torch.arange(20.0).reshape(1, 2, 2, 5)), torch.arange(20.0).reshape(1, 20))
    assert dec(torch.randn(3, Z)).shape == (3, 4, 2, 5)
    renc, rdec = ResNetEncoder((1, 2, 2)), ResNetDecoder(Z, (1, 2, 2), 1)
    assert renc(torch.rand(3, 1, 2, 2)).shape == (3, renc.out_dim) and rdec(torch.randn(Z)).shape == (1, 2, 2)


@pytest.mark.parametrize("kind", ["conv", "resnet"])
def test_gradients_reach_every_parameter(kind):
    enc, dec = make(kind, 3, (28, 20), out_channels=6, activation="elu")
    head = nn.Linear(enc.out_dim, Z)
    loss = dec(head(enc(torch.rand(2, 3, 28, 20)))).square().mean()
    loss.backward()
    for net in (enc, dec):
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def test_parameter_counts_with_the_default_widths():
    """Counted by hand: 4x4 convolutions 3->32->64->128->256; linear 20 -> 256*2*2; transposed
    4x4 convolutions 256->128->64->32->(2*3)."""
    enc = ConvEncoder((3, 32, 32))
    expected = sum(conv_params(a, b, 4) for a, b in [(3, 32), (32, 64), (64, 128), (128, 256)])
    assert sum(p.numel() for p in enc.parameters()) == expected == 690_144
    assert enc.out_dim == 256 * 2 * 2
    dec = ConvDecoder(20, (3, 32, 32), 6)
    expected = 20 * 1024 + 1024 + sum(conv_params(a, b, 4) for a, b in [(256, 128), (128, 64), (64, 32), (32, 6)])
    assert sum(p.numel() for p in dec.parameters()) == expected
    # a resnet of 2 blocks per scale: per scale a strided 3x3 + 3x3 + 1x1 skip, and two 3x3
    renc = ResNetEncoder((3, 32, 32))
    widths, previous, expected = (32, 64, 128, 256), 32, conv_params(3, 32, 3)
    for w in widths:
        expected += conv_params(previous, w, 3) + conv_params(w, w, 3) + conv_params(previous, w, 1)
        expected += 2 * conv_params(w, w, 3)
        previous = w
    assert sum(p.numel() for p in renc.parameters()) == expected
    rdec = ResNetDecoder(20, (3, 32, 32), 30)
    n = sum(p.numel() for p in rdec.parameters())
    assert 1.2e6 < n < 1.6e6  # about twice the plain decoder's 0.73 M (1388254): residual blocks at every scale
    assert n > sum(p.numel() for p in ConvDecoder(20, (3, 32, 32), 30).parameters()) == 725_246


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ConvEncoder((3, 32)), r"\(C, H, W\)"),
        (lambda: ConvEncoder((3, 0, 32)), "positive sizes"),
        (lambda: ConvEncoder((3, 32, 32), (32, 0)), "positive channel width"),
        (lambda: ConvDecoder(4, (3, 32, 32), 6, activation="gelu"), "unknown activation 'gelu'"),
        (lambda: ResNetEncoder((3, 32, 32), blocks=0), "at least 1 block"),
        (lambda: ConvEncoder((3, 8, 8))(torch.rand(2, 1, 8, 8)), r"\(\.\.\., 3, 8, 8\) or \(\.\.\., 192\)"),
        (lambda: ConvDecoder(4, (3, 8, 8), 6)(torch.rand(2, 5)), r"codes of shape \(\.\.\., 4\)"),
    ],
)
def test_user_errors(build, match):
    with pytest.raises(UserError, match=match):
        build()


# Wired into fit (issue 12) -----------------------------------------------------------------------


@pytest.mark.slow
def test_conv_fit_on_patches_writes_colour_pictures_of_the_right_size(tmp_path):
    """One epoch of a tiny conv VAE on the offline colour patches, through the CLI."""
    import numpy as np
    from PIL import Image

    from pyro_vae.cli import main

    out = tmp_path / "run"
    argv = ["fit", "--dataset", "patches", "--arch", "conv", "--channels", "2,4", "--z-dim", "2", "--epochs", "1",
            "--batch-size", "512", "--likelihood", "discretized-logistic", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    # grids of 32x32 images with 1-pixel gaps, scaled by whole pixels k = ceil(600 / width) (plots.save_grid)
    expected = {"samples.png": (795, 795),  # 8 x 8 images: 8 * 33 + 1 = 265 pixels, k = 3
                "reconstructions.png": (1058, 2 * 67 + 30),  # 16 x 2: 529 x 67, k = 2, a 30-pixel title
                "manifold.png": (661, 661)}  # 20 x 20: 661, k = 1  # fmt: skip
    for name, size in expected.items():
        img = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
        assert img.shape[:2] == size[::-1], name
    test = np.asarray(Image.open(out / "reconstructions.png").convert("RGB")).astype(int)
    assert (np.abs(test[..., 0] - test[..., 2]) > 40).mean() > 0.05  # in colour: blue sky, red roofs
    meta = __import__("json").loads((out / "config.json").read_text())
    assert meta["item_shape"] == [3, 32, 32] and meta["arch"] == "conv" and meta["channels"] == [2, 4]
    from pyro_vae.runs.run import load_run

    run = load_run(out, "cpu")  # a conv run folder rebuilds its nets from the recorded item shape
    assert run.vae.x_shape == (3, 32, 32) and run.sample(2).shape == (2, 3, 32, 32)


def test_cli_refuses_an_ambiguous_layout_and_an_unknown_arch_in_one_line(tmp_path, capsys):
    import numpy as np

    from pyro_vae.cli import main

    np.save(tmp_path / "x.npy", np.zeros((10, 3, 8, 3), dtype=np.uint8))
    base = ["fit", "--data", str(tmp_path / "x.npy"), "--epochs", "0", "--device", "cpu", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data file") and "say which with --layout nchw|nhwc" in err and err.count("\n") == 1
    assert main(base + ["--layout", "nchw", "--arch", "cnn", "--out", str(tmp_path / "b")]) == 2
    assert "unknown architecture 'cnn'; choose one of: mlp, conv, resnet" in capsys.readouterr().err
    assert main(base + ["--layout", "nchw", "--arch", "conv", "--channels", "2,0", "--out", str(tmp_path / "c")]) == 2
    assert "--channels needs at least one positive size" in capsys.readouterr().err
