"""Multilayer perceptrons for the encoder and decoder (Kingma & Welling 2013, Appendix C)."""

import torch.nn as nn

from .errors import UserError

#: Hidden-layer nonlinearities selectable with ``--activation``.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def parse_hidden(spec):
    """``"400"`` -> ``(400,)``, ``"200,200"`` -> ``(200, 200)``; also accepts an int or a sequence."""
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str):
        spec = [s for s in spec.replace(" ", "").split(",") if s]
    try:
        sizes = tuple(int(s) for s in spec)
    except (TypeError, ValueError):
        raise UserError(f"--hidden takes layer sizes like 400 or 200,200, got {spec!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise UserError(f"--hidden needs at least one positive layer size, got {spec!r}")
    return sizes


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with ``activation`` between layers.

    The output layer is linear: each consumer (a likelihood family, a guide) maps raw outputs to
    its own constrained parameters. Works on any number of leading batch dimensions.
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
