r"""Convolutional encoder bodies and decoders for images of shape ``(C, H, W)``, any ``H x W``.

Two families, each an encoder *body* (image -> a feature vector of :attr:`out_dim` numbers, to
which a guide attaches its own heads) and a decoder (``z`` -> ``out_channels`` maps of ``H x W``,
the likelihood's raw parameters):

:class:`ConvEncoder` / :class:`ConvDecoder`
    The common stride-2 convolutional encoder and transposed-convolution decoder (DCGAN, Radford
    et al. 2016; the VAE of Burgess et al. 2018, "Understanding disentangling in beta-VAE"):
    4x4 kernels, stride 2, padding 1, so each stage halves (doubles) the height and width exactly.

:class:`ResNetEncoder` / :class:`ResNetDecoder`
    The same scales with residual blocks (He et al. 2016, pre-activation form), as in the ResNet
    VAE of Kingma et al. (2016, "Improved variational inference with inverse autoregressive flow",
    Appendix C): at each scale one block that changes the resolution (a strided 3x3 convolution, or
    a 4x4 transposed one, with a 1x1 projection on the skip path) and ``blocks - 1`` blocks at that
    resolution. No batch normalization, so that a net gives the same output for an item whatever
    else is in the batch (particles, importance samples).

**Any H x W.** With ``d`` stride-2 stages the image is zero-padded (evenly on both sides, the extra
pixel at the bottom/right) to :math:`H_p \times W_p`, the smallest multiples of :math:`2^d`, inside
the encoder; the decoder produces :math:`H_p \times W_p` maps and crops the same region back out.

**Depth.** :func:`num_stages`: ``d = len(channels)`` capped so that the smallest feature map keeps at
least 2 pixels on its short side: the largest ``d`` with :math:`2^d < \min(H, W)`. So 64x64 and
32x32 get 4 stages (4x4 and 2x2 feature maps), 28x28 gets 4 (padded to 32x32, 2x2), Frey Face's
28x20 gets 4 (padded to 32x32), 8x8 gets 2 (2x2), 79x79 gets 4 (padded to 80x80, 5x5). The encoder
uses the first ``d`` widths of ``channels`` (from the image inwards), the decoder the last ``d`` of
its ``channels`` (from the code outwards), so the default widths mirror each other.

**Shapes.** Encoders take ``(..., C, H, W)`` (any leading dims, e.g. ``(S, B, C, H, W)`` for
particles) or, during the transition from flat data, ``(..., C*H*W)``, and return ``(..., out_dim)``.
Decoders take ``(..., z_dim)`` and return ``(..., out_channels, H, W)``. For a likelihood with ``P``
parameters per dimension on ``C``-channel images use ``out_channels = P * C``: flattening the
output row-major gives ``(..., P * C*H*W)``, block ``p`` holding channel ``p*C + c``, which is the
layout :meth:`pyro_vae.vae.likelihoods.Likelihood.split` cuts.

Errors: an unknown activation, a non-positive width, or an input whose trailing shape is not
``x_shape`` raise :class:`~pyro_vae.errors.UserError` (at construction and in ``forward``).
"""

import math

import torch.nn as nn
import torch.nn.functional as F

from ..config import parse_widths
from ..errors import UserError

#: The nonlinearities selectable by name (the same names as ``pyro_vae.vae.nets.ACTIVATIONS``).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}

#: Default widths, from the image inwards (encoder) and from the code outwards (decoder).
ENCODER_CHANNELS = (32, 64, 128, 256)
DECODER_CHANNELS = (256, 128, 64, 32)


def _activation(name):
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _image_shape(x_shape):
    try:
        c, h, w = (int(s) for s in x_shape)
    except (TypeError, ValueError):
        raise UserError(f"an image net needs the image shape as (C, H, W), got {x_shape!r}") from None
    if min(c, h, w) < 1:
        raise UserError(f"an image shape needs positive sizes, got {tuple(x_shape)!r}")
    return c, h, w


def _widths(channels, what):
    return parse_widths(channels, what, unit="channel width")


def num_stages(height, width, max_stages):
    """Stride-2 stages for an ``height x width`` image: at most ``max_stages``, and the largest ``d``
    with ``2**d < min(height, width)`` (the smallest feature map keeps at least 2 pixels)."""
    d = 0
    while d < max_stages and 2 ** (d + 1) < min(height, width):
        d += 1
    return d


def padding_for(size, stages):
    """``(before, after)`` zero padding that brings ``size`` to the next multiple of ``2**stages``."""
    total = math.ceil(size / 2**stages) * 2**stages - size
    return total // 2, total - total // 2


class _ImageNet(nn.Module):
    """Shared geometry: stages, padding, the feature map size at the bottom of the net."""

    def _set_geometry(self, x_shape, max_stages):
        self.x_shape = _image_shape(x_shape)
        _, h, w = self.x_shape
        self.stages = num_stages(h, w, max_stages)
        self.pad_h, self.pad_w = padding_for(h, self.stages), padding_for(w, self.stages)
        #: (height, width) of the smallest feature map
        self.bottom = ((h + sum(self.pad_h)) // 2**self.stages, (w + sum(self.pad_w)) // 2**self.stages)

    def _pad(self, x):
        return F.pad(x, (*self.pad_w, *self.pad_h))

    def _crop(self, y):
        _, h, w = self.x_shape
        return y[..., self.pad_h[0] : self.pad_h[0] + h, self.pad_w[0] : self.pad_w[0] + w]


class _Encoder(_ImageNet):
    def _images(self, x):
        """``(..., C, H, W)`` or ``(..., C*H*W)`` -> ``(N, C, H, W)`` and the leading shape."""
        c, h, w = self.x_shape
        if x.dim() >= 3 and tuple(x.shape[-3:]) == self.x_shape:
            lead = x.shape[:-3]
        elif x.dim() >= 1 and x.shape[-1] == c * h * w:
            lead = x.shape[:-1]
        else:
            raise UserError(
                f"{type(self).__name__} takes images of shape (..., {c}, {h}, {w}) or (..., {c * h * w}), "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(-1, c, h, w), lead

    def forward(self, x):
        """``(..., C, H, W)`` (or ``(..., C*H*W)``) -> ``(..., out_dim)`` features."""
        images, lead = self._images(x)
        features = self.body(self._pad(images))
        return features.reshape(*lead, self.out_dim)


class _Decoder(_ImageNet):
    def _setup_input(self, z_dim, out_channels, width, activation):
        self.z_dim, self.out_channels = int(z_dim), int(out_channels)
        if self.z_dim < 1 or self.out_channels < 1:
            raise UserError(f"a decoder needs z_dim >= 1 and out_channels >= 1, got {z_dim} and {out_channels}")
        self.start = (width, *self.bottom)
        self.input = nn.Linear(self.z_dim, width * self.bottom[0] * self.bottom[1])
        self.input_activation = activation()

    def forward(self, z):
        """``(..., z_dim)`` -> ``(..., out_channels, H, W)`` raw parameter maps."""
        if z.shape[-1:] != (self.z_dim,):
            raise UserError(f"{type(self).__name__} takes codes of shape (..., {self.z_dim}), got {tuple(z.shape)}")
        lead = z.shape[:-1]
        y = self.input_activation(self.input(z.reshape(-1, self.z_dim))).reshape(-1, *self.start)
        y = self._crop(self.body(y))
        return y.reshape(*lead, *y.shape[1:])


# Plain convolutional nets -----------------------------------------------------------------------


class ConvEncoder(_Encoder):
    """Stride-2 4x4 convolutions (``activation`` after each), then flatten (Burgess et al. 2018; DCGAN).

    :param x_shape: the image shape ``(C, H, W)``.
    :param channels: the widths of the stages, from the image inwards; only the first
        :func:`num_stages` are used.
    :param activation: ``relu``, ``tanh``, ``softplus`` or ``elu``.

    :attr:`out_dim` = ``width * h * w`` of the last feature map (e.g. 256 * 2 * 2 for 32x32 images).
    :raises UserError: for a bad shape, width or activation.
    """

    def __init__(self, x_shape, channels=ENCODER_CHANNELS, activation="relu"):
        super().__init__()
        act = _activation(activation)
        widths = _widths(channels, "ConvEncoder")
        self._set_geometry(x_shape, len(widths))
        layers, previous = [], self.x_shape[0]
        for width in widths[: self.stages]:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), act()]
            previous = width
        self.body = nn.Sequential(*layers, nn.Flatten())
        #: the number of features per image
        self.out_dim = previous * self.bottom[0] * self.bottom[1]


class ConvDecoder(_Decoder):
    """A linear layer to a ``width x h x w`` feature map, then stride-2 4x4 transposed convolutions
    up to the padded image size (``activation`` between them, none after the last), then a crop to
    ``H x W``.

    :param z_dim: the size of the code.
    :param x_shape: the image shape ``(C, H, W)`` (only ``H, W`` matter here).
    :param out_channels: output maps, ``params_per_dim * C`` for a likelihood.
    :param channels: widths from the code outwards; only the last :func:`num_stages` are used.
    :param activation: as for :class:`ConvEncoder`.
    :raises UserError: for a bad shape, width or activation.
    """

    def __init__(self, z_dim, x_shape, out_channels, channels=DECODER_CHANNELS, activation="relu"):
        super().__init__()
        act = _activation(activation)
        widths = _widths(channels, "ConvDecoder")
        self._set_geometry(x_shape, len(widths))
        used = widths[len(widths) - self.stages :]
        if not used:  # an image too small for any stage: the linear layer writes the pixels
            self._setup_input(z_dim, out_channels, int(out_channels), nn.Identity)
            self.body = nn.Identity()
            return
        self._setup_input(z_dim, out_channels, used[0], act)
        layers = []
        for i, width in enumerate(used):
            last = i == len(used) - 1
            layers.append(nn.ConvTranspose2d(width, int(out_channels) if last else used[i + 1], 4, stride=2, padding=1))
            if not last:
                layers.append(act())
        self.body = nn.Sequential(*layers)


# Residual nets ----------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``x + conv3x3(act(conv3x3(act(x))))`` (He et al. 2016).

    ``resample`` ``"down"`` halves the resolution (the first convolution has stride 2), ``"up"``
    doubles it (the first is a 4x4 transposed convolution with stride 2); the skip path then is a
    strided 1x1 convolution, or nearest-neighbour upsampling and a 1x1 convolution. A change of
    width also puts a 1x1 convolution on the skip path.
    """

    def __init__(self, in_channels, out_channels, activation, resample=None):
        super().__init__()
        self.act1, self.act2 = activation(), activation()
        if resample == "down":
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2)
        elif resample == "up":
            self.conv1 = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
            self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 1))
        elif resample is None:
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        else:
            raise ValueError(f"resample must be 'down', 'up' or None, got {resample!r}")
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.skip(x) + self.conv2(self.act2(self.conv1(self.act1(x))))


class ResNetEncoder(_Encoder):
    """A 3x3 stem convolution, then per stage one downsampling residual block and ``blocks - 1``
    residual blocks (Kingma et al. 2016's ResNet VAE, Appendix C, without its stochastic layers),
    then the activation and flatten.

    :param x_shape: the image shape ``(C, H, W)``.
    :param channels: widths of the stages, from the image inwards (first :func:`num_stages` used).
    :param activation: as for :class:`ConvEncoder`.
    :param blocks: residual blocks per scale (default 2).

    :attr:`out_dim` = ``width * h * w`` of the last feature map.
    :raises UserError: for a bad shape, width, block count or activation.
    """

    def __init__(self, x_shape, channels=ENCODER_CHANNELS, activation="relu", blocks=2):
        super().__init__()
        act = _activation(activation)
        widths = _widths(channels, "ResNetEncoder")
        blocks = _block_count(blocks)
        self._set_geometry(x_shape, len(widths))
        used = widths[: self.stages] or widths[:1]
        layers = [nn.Conv2d(self.x_shape[0], used[0], 3, padding=1)]
        previous = used[0]
        for width in widths[: self.stages]:
            layers.append(ResidualBlock(previous, width, act, resample="down"))
            layers += [ResidualBlock(width, width, act) for _ in range(blocks - 1)]
            previous = width
        self.body = nn.Sequential(*layers, act(), nn.Flatten())
        self.out_dim = previous * self.bottom[0] * self.bottom[1]


class ResNetDecoder(_Decoder):
    """A linear layer to a ``width x h x w`` feature map, then per stage one upsampling residual
    block and ``blocks - 1`` residual blocks, then the activation, a 3x3 convolution to
    ``out_channels`` and a crop to ``H x W``.

    Stage ``i`` goes from width ``channels[i]`` to ``channels[i + 1]`` (the last stage keeps its
    width), over the last :func:`num_stages` entries of ``channels``.

    :param z_dim: the size of the code.
    :param x_shape: the image shape ``(C, H, W)``.
    :param out_channels: output maps, ``params_per_dim * C`` for a likelihood.
    :param channels: widths from the code outwards.
    :param activation: as for :class:`ConvEncoder`.
    :param blocks: residual blocks per scale (default 2).
    :raises UserError: for a bad shape, width, block count or activation.
    """

    def __init__(self, z_dim, x_shape, out_channels, channels=DECODER_CHANNELS, activation="relu", blocks=2):
        super().__init__()
        act = _activation(activation)
        widths = _widths(channels, "ResNetDecoder")
        blocks = _block_count(blocks)
        self._set_geometry(x_shape, len(widths))
        used = widths[len(widths) - self.stages :] or widths[-1:]
        self._setup_input(z_dim, out_channels, used[0], act)
        layers = []
        for i in range(self.stages):
            width_in, width_out = used[i], used[min(i + 1, len(used) - 1)]
            layers.append(ResidualBlock(width_in, width_out, act, resample="up"))
            layers += [ResidualBlock(width_out, width_out, act) for _ in range(blocks - 1)]
        layers += [act(), nn.Conv2d(used[-1], int(out_channels), 3, padding=1)]
        self.body = nn.Sequential(*layers)


def _block_count(blocks):
    if isinstance(blocks, bool) or int(blocks) != blocks or blocks < 1:
        raise UserError(f"a residual net needs at least 1 block per scale, got {blocks!r}")
    return int(blocks)
