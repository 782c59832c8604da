"""The networks of the encoder and decoder (Kingma & Welling 2013, Appendix C), one registry entry per architecture.

An architecture (``--arch``) is a class in :data:`ARCHITECTURES` that builds the decoder
:math:`f_\\theta: z \\mapsto` the likelihood's parameters, and the encoder network that a guide
puts its heads on. Adding one (say a convolutional pair) is one class::

    @ARCHITECTURES.register("my-arch")
    class MyArch(Architecture):
        def decoder(self, z_dim, x_dim, params_per_dim): ...   # (..., z_dim) -> (..., params_per_dim * x_dim)
"""

import torch.nn as nn

from .config import parse_hidden
from .errors import UserError
from .registry import Registry

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "Architecture", "MLP", "MLPArchitecture", "parse_hidden"]

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


class Architecture:
    """Base class of an architecture: builds the nets of a VAE from its sizes.

    :param hidden: hidden layer sizes, e.g. ``(400,)`` or ``"200,200"``.
    :param str activation: hidden nonlinearity, a key of :data:`ACTIVATIONS`.
    """

    def __init__(self, hidden=(400,), activation="relu"):
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.hidden, self.activation = parse_hidden(hidden), activation

    def decoder(self, z_dim, x_dim, params_per_dim):
        """:math:`f_\\theta`: a module mapping ``(..., z_dim)`` to ``(..., params_per_dim * x_dim)``."""
        raise NotImplementedError


@ARCHITECTURES.register("mlp")
class MLPArchitecture(Architecture):
    """Multilayer perceptrons, the paper's "Gaussian MLP" and "Bernoulli MLP" (Appendix C):
    the decoder is ``z_dim -> hidden -> params_per_dim * x_dim``; the guides build their encoder
    MLPs ``x_dim -> hidden -> ...`` with the same ``hidden`` and ``activation``."""

    def decoder(self, z_dim, x_dim, params_per_dim):
        return MLP(z_dim, self.hidden, params_per_dim * x_dim, self.activation)
