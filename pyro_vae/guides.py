r"""Guides: the amortized variational posterior :math:`q_\phi(z \mid x)` (the "encoder").

**The guide contract.** A guide is an :class:`torch.nn.Module` derived from :class:`Guide`:

- its constructor receives ``x_dim`` (the flattened data size), ``z_dim``, ``hidden`` (a tuple of
  layer sizes) and ``activation`` (a name from :data:`pyro_vae.nets.ACTIVATIONS`), plus any
  options of its own as keywords with defaults;
- calling it on a batch ``x`` of shape ``(B, x_dim)`` returns a distribution over ``z`` with
  ``batch_shape == (B,)`` and ``event_shape == (z_dim,)``, whose ``rsample`` is reparameterized
  (``has_rsample``), so that gradients flow through :math:`z = g_\phi(\epsilon, x)`;
- all its learnable parts are submodules, so that :meth:`VAE.guide` registers them with
  ``pyro.module("encoder", guide)`` and the optimizer trains them.

:meth:`pyro_vae.model.VAE.guide` then samples the site ``"z"`` from it inside the data plate; the
model and its site names never change when the guide does.
"""

import torch.nn as nn
import torch.nn.functional as F

import pyro.distributions as dist

from .nets import MLP
from .registry import Registry

GUIDES = Registry("guide")


class Guide(nn.Module):
    """Base class of amortized guides; see the module docstring for the contract."""

    def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim

    def options(self):
        """Constructor keywords beyond the common four (saved in ``config.json``)."""
        return {}

    def forward(self, x):
        raise NotImplementedError


@GUIDES.register("diagonal")
class DiagonalGuide(Guide):
    r"""The paper's Gaussian encoder: :math:`q_\phi(z \mid x) = \mathcal{N}(z; \mu(x), \mathrm{diag}\,\sigma^2(x))`.

    One MLP outputs :math:`\mu` and an unconstrained :math:`\eta`; :math:`\sigma = \mathrm{softplus}(\eta)`
    is positive by construction (unlike ReLU on the outputs, which would pin :math:`\mu \geq 0`).
    Sampling is :math:`z = \mu + \sigma \odot \epsilon`, :math:`\epsilon \sim \mathcal{N}(0, I)`:
    the reparameterization trick (Kingma & Welling 2013, Section 2.4).
    """

    #: keeps sigma away from an exact zero in float32 (softplus underflows below about -100)
    MIN_SCALE = 1e-5

    def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = MLP(x_dim, hidden, 2 * z_dim, activation)

    def loc_scale(self, x):
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.MIN_SCALE

    def forward(self, x):
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
