"""The networks of the encoder and decoder (Kingma & Welling 2013, Appendix C), one registry entry per architecture.

An architecture (``--arch``) is a class in :data:`ARCHITECTURES` that builds the decoder
:math:`f_\\theta: z \\mapsto` the likelihood's parameters, and the encoder *body* that a guide
puts its heads on. Adding one is one class::

    @ARCHITECTURES.register("my-arch")
    class MyArch(Architecture):
        def decoder(self, z_dim, x_shape, params_per_dim): ...  # (..., z_dim) -> (..., params_per_dim * D)
        def encoder(self, x_shape): ...                         # (B, *x_shape) -> (B, out_dim); .out_dim

**The architecture contract** (also for a user's class given as ``--arch file.py:Name``, checked on a
tiny batch by :func:`check_architecture` before training):

- ``Arch(hidden, activation, channels)``: hidden layer sizes (tuple), activation name, convolution
  widths (tuple; image nets only).
- ``decoder(z_dim, x_shape, params_per_dim)``: a module mapping ``(..., z_dim)`` to
  ``(..., params_per_dim * D)``, ``D = prod(x_shape)``: the likelihood scores *flattened* values;
  parameter block ``p`` holds dimension ``d`` at ``p * D + d`` (row-major over ``x_shape``, so an image
  decoder returning ``(..., P * C, H, W)`` maps flattened with ``.flatten(-3)`` is right).
- ``encoder(x_shape)``: ``None`` (the guides build their own MLPs on flattened ``x``, as ``mlp`` does),
  or a module mapping a batch of items ``(B, *x_shape)`` to features ``(B, out_dim)``, with an
  integer attribute ``out_dim``; the built-in guides put their heads on it (see ``docs/guides.md``).

Built in: ``mlp`` (the paper's), ``conv`` and ``resnet`` (:mod:`pyro_vae.vae.image_nets`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import parse_hidden, parse_widths
from ..errors import UserError
from ..registry import Registry
from ..user_code import resolve_class
from .image_nets import ENCODER_CHANNELS, ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "Architecture", "ConvArchitecture", "MLP", "MLPArchitecture",
    "ResNetArchitecture", "architecture_class", "build_architecture", "check_architecture", "parse_channels",
    "parse_hidden",
]  # fmt: skip

#: Hidden-layer nonlinearities selectable with ``--activation``.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}

#: The registry of network architectures (``--arch``).
ARCHITECTURES = Registry("architecture")


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with ``activation`` between layers.

    The output layer is linear: each consumer (a likelihood family, a guide) maps raw outputs to
    its own constrained parameters. Works on any number of leading batch dimensions.

    :raises UserError: for an unknown activation.
    """

    def __init__(self, in_dim, hidden, out_dim, activation="tanh"):
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        layers = []
        sizes = (in_dim,) + tuple(hidden)
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], out_dim))
        super().__init__(*layers)


def parse_channels(spec):
    """``"32,64,128,256"`` -> ``(32, 64, 128, 256)`` (``--channels``); also an int or a sequence.

    :raises UserError: for anything but one or more positive integers.
    """
    return parse_widths(spec, "--channels", "32,64,128,256")


def item_shape(x_shape):
    """``x_shape`` as a tuple: an int ``D`` is ``(D,)``."""
    return (int(x_shape),) if isinstance(x_shape, int) else tuple(int(s) for s in x_shape)


class Architecture:
    """Base class of an architecture: builds the nets of a VAE from its sizes (see the module's contract).

    :param hidden: hidden layer sizes, e.g. ``(400,)`` or ``"200,200"``.
    :param str activation: hidden nonlinearity, a key of :data:`ACTIVATIONS`.
    :param channels: convolution widths from the image inwards (``--channels``); the decoders use
        them reversed. Ignored by ``mlp``.
    """

    def __init__(self, hidden=(400,), activation="relu", channels=ENCODER_CHANNELS):
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.hidden, self.activation = parse_hidden(hidden), activation
        self.channels = parse_channels(channels)

    def decoder(self, z_dim, x_shape, params_per_dim):
        """:math:`f_\\theta`: a module mapping ``(..., z_dim)`` to ``(..., params_per_dim * D)``."""
        raise NotImplementedError

    def encoder(self, x_shape):
        """The encoder body for items of shape ``x_shape``: ``None`` (guides build MLPs on flat ``x``)
        or a module ``(B, *x_shape) -> (B, out_dim)`` with an ``out_dim`` attribute."""
        return None


@ARCHITECTURES.register("mlp")
class MLPArchitecture(Architecture):
    """Multilayer perceptrons, the paper's "Gaussian MLP" and "Bernoulli MLP" (Appendix C):
    the decoder is ``z_dim -> hidden -> params_per_dim * x_dim``; the guides build their encoder
    MLPs ``x_dim -> hidden -> ...`` with the same ``hidden`` and ``activation``."""

    def decoder(self, z_dim, x_shape, params_per_dim):
        return MLP(z_dim, self.hidden, params_per_dim * math.prod(item_shape(x_shape)), self.activation)


def _chw(x_shape, name):
    shape = item_shape(x_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise UserError(
            f"--arch {name} needs image data of shape (C, H, W); these items have shape {shape} "
            "(use --arch mlp for vectors)"
        )
    return shape


class FlatDecoder(nn.Module):
    """An image decoder ``(..., z_dim) -> (..., P*C, H, W)`` with its output flattened to ``(..., P*C*H*W)``
    (the layout :meth:`pyro_vae.vae.likelihoods.Likelihood.split` cuts: block ``p`` is channels ``p*C ... p*C+C-1``)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net(z).flatten(-3)


class _ImageArchitecture(Architecture):
    #: the nets' classes (set by each image architecture)
    encoder_class: type[nn.Module] | None = None
    decoder_class: type[nn.Module] | None = None

    def decoder(self, z_dim, x_shape, params_per_dim):
        shape = _chw(x_shape, self.name)
        return FlatDecoder(self.decoder_class(z_dim, shape, params_per_dim * shape[0], self.channels[::-1],
                                              self.activation))  # fmt: skip

    def encoder(self, x_shape):
        return self.encoder_class(_chw(x_shape, self.name), self.channels, self.activation)


@ARCHITECTURES.register("conv")
class ConvArchitecture(_ImageArchitecture):
    """The common stride-2 convolutional encoder and transposed-convolution decoder (DCGAN, Radford et
    al. 2016; Burgess et al. 2018): :class:`~pyro_vae.vae.image_nets.ConvEncoder` /
    :class:`~pyro_vae.vae.image_nets.ConvDecoder` with widths ``channels`` (``--channels``), any H x W."""

    encoder_class, decoder_class = ConvEncoder, ConvDecoder


@ARCHITECTURES.register("resnet")
class ResNetArchitecture(_ImageArchitecture):
    """Residual nets (Kingma et al. 2016's ResNet VAE, without its stochastic layers):
    :class:`~pyro_vae.vae.image_nets.ResNetEncoder` / :class:`~pyro_vae.vae.image_nets.ResNetDecoder`, 2 blocks per scale."""

    encoder_class, decoder_class = ResNetEncoder, ResNetDecoder


# A user's own architecture ----------------------------------------------------------------------


def architecture_class(spec):
    """The architecture class a registered name or an import spec (``file.py:Name``, ``module:Name``) names.

    :raises UserError: an unknown name, a file that fails, or an object that is not an
        :class:`Architecture`-like class (one with a ``decoder`` method).
    """
    return resolve_class(spec, ARCHITECTURES, "architecture",
                         lambda obj: isinstance(obj, type) and callable(getattr(obj, "decoder", None)),
                         "a class with a decoder method", "a subclass of pyro_vae.vae.nets.Architecture (see docs/guides.md)")


def build_architecture(spec, hidden=(400,), activation="relu", channels=ENCODER_CHANNELS):
    """An instance of the architecture ``spec`` names (name, import spec, class or instance)."""
    cls = architecture_class(spec)
    if not isinstance(cls, type):
        return cls
    try:
        return cls(hidden, activation, channels)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"could not build the architecture {spec}: {type(e).__name__}: {e} (its constructor "
                        "receives hidden, activation, channels; see docs/guides.md)") from None  # fmt: skip


def check_architecture(arch, x_shape, z_dim, params_per_dim, label=None, batch=2, nets=None):
    """Build ``arch``'s decoder and encoder body for items ``x_shape`` and run them once on a tiny batch.

    Checks: the decoder is a module with parameters mapping ``(batch, z_dim)`` to
    ``(batch, params_per_dim * D)``; the encoder is ``None`` or a module with an integer ``out_dim``
    mapping ``(batch, *x_shape)`` to ``(batch, out_dim)``. Random generators are left as they were.

    ``nets``: ``(decoder, encoder)`` already built by ``arch`` (checked instead of building them; a
    ``None`` decoder is not checked).

    :returns: ``(decoder, encoder)``, the modules built.
    :raises UserError: one line naming the architecture and the breach.
    """
    label = label or getattr(arch, "name", None) or type(arch).__name__
    where = f"the architecture {label}"
    shape = item_shape(x_shape)
    d = math.prod(shape)
    try:
        decoder, encoder = nets if nets is not None else (arch.decoder(z_dim, shape, params_per_dim), arch.encoder(shape))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where} failed to build its nets for items of shape {shape}: {type(e).__name__}: {e}") from None
    for what, net in (("decoder", decoder), ("encoder", encoder)):
        if net is not None and not isinstance(net, nn.Module):
            raise UserError(f"{where}: its {what} is a {type(net).__name__}, not a torch.nn.Module")
    if decoder is not None and not any(True for _ in decoder.parameters()):
        raise UserError(f"{where}: its decoder has no learnable parameters")
    p = next(decoder.parameters()) if decoder is not None else torch.zeros(())
    with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []), torch.no_grad():
        out = None
        if decoder is not None:
            try:
                out = decoder(torch.zeros(batch, z_dim, dtype=p.dtype, device=p.device))
            except Exception as e:
                raise UserError(f"{where}: its decoder failed on codes of shape ({batch}, {z_dim}): "
                                f"{type(e).__name__}: {e}") from None  # fmt: skip
        if out is not None and tuple(out.shape) != (batch, params_per_dim * d):
            raise UserError(f"{where}: its decoder maps codes ({batch}, {z_dim}) to {tuple(out.shape)}; expected "
                            f"({batch}, {params_per_dim * d}) = (batch, params_per_dim * D), flattened")  # fmt: skip
        if encoder is not None:
            out_dim = getattr(encoder, "out_dim", None)
            if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
                raise UserError(f"{where}: its encoder needs a positive integer attribute out_dim, got {out_dim!r}")
            try:
                h = encoder(torch.full((batch, *shape), 0.5, dtype=p.dtype, device=p.device))
            except Exception as e:
                raise UserError(f"{where}: its encoder failed on items of shape ({batch}, {', '.join(map(str, shape))}): "
                                f"{type(e).__name__}: {e}") from None  # fmt: skip
            if tuple(h.shape) != (batch, out_dim):
                raise UserError(f"{where}: its encoder returned {tuple(h.shape)}; expected ({batch}, {out_dim}) "
                                "= (batch, out_dim)")  # fmt: skip
    return decoder, encoder
