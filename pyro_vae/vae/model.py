r"""The variational autoencoder as a Pyro model and guide (Kingma & Welling 2013).

Generative model (:meth:`VAE.model`), for each datapoint :math:`i` in the minibatch plate:

.. math::

    z_i \sim p_\lambda(z), \qquad x_i \sim p_\theta(x \mid z_i)

with the paper's :math:`p(z) = \mathcal{N}(0, I)` by default, or a learned prior (:mod:`pyro_vae.vae.priors`).

Inference network (:meth:`VAE.guide`): :math:`z_i \sim q_\phi(z \mid x_i)`, reparameterized.

Training maximizes the evidence lower bound (the paper's eq. 2; eq. 3 writes it as
:math:`-D_{KL}(q_\phi(z \mid x_i) \,\|\, p(z)) + \mathbb{E}_q[\log p_\theta(x_i \mid z)]`) with :class:`pyro.infer.SVI`:

.. math::

    \mathcal{L}(\theta, \phi; x_i) = \mathbb{E}_{q_\phi(z \mid x_i)}\left[\log p_\theta(x_i, z) - \log q_\phi(z \mid x_i)\right]
    \le \log p_\theta(x_i)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

import pyro
from pyro.distributions.torch_distribution import TorchDistributionMixin

from .guides import build_guide
from .likelihoods import Likelihood, build_likelihood
from .nets import Architecture, build_architecture, check_architecture, item_shape, parse_hidden
from .priors import Prior, build_prior


class VAE(nn.Module):
    """A VAE: a decoder network :math:`f_\\theta`, a likelihood family and an amortized guide :math:`q_\\phi(z \\mid x)`.

    :param x_dim: size of one flattened datapoint ``D``, or the shape of one item (e.g. ``(C, H, W)``
        for images; ``D`` is then its product). Batches given to :meth:`model`, :meth:`guide` and
        :meth:`reconstruct` are ``(B, *x_shape)`` (or ``(B, D)``); the likelihood scores them
        flattened to ``(B, D)``, and :meth:`decode`, :meth:`sample`, :meth:`reconstruct` return
        flattened ``(..., D)`` means.
    :param int z_dim: latent size.
    :param hidden: hidden layer sizes of both nets, e.g. ``(400,)`` or ``"200,200"``.
    :param str activation: hidden nonlinearity (``relu``, ``tanh``, ``softplus``, ``elu``).
    :param likelihood: a :class:`~pyro_vae.vae.likelihoods.Likelihood` or a registered name.
    :param guide: a :class:`~pyro_vae.vae.guides.Guide` class, instance, registered name, or import spec
        ``path/to/file.py:Name`` / ``package.module:Name`` (see :mod:`pyro_vae.vae.guides` for the contract).
    :param dict guide_options: keyword options of the guide's constructor, e.g. ``{"flow_steps": 4}``.
    :param bool check_guide: run the guide once on a tiny batch to check its contract (see
        :func:`~pyro_vae.vae.guides.check_guide`).
    :param decoder: a module mapping ``(..., z_dim)`` to ``(..., likelihood.params_per_dim * x_dim)``;
        default: built by the architecture ``arch``.
    :param arch: a name in :data:`~pyro_vae.vae.nets.ARCHITECTURES` (``--arch``: ``mlp``, ``conv``,
        ``resnet``), a user's ``file.py:Name``, or an :class:`~pyro_vae.vae.nets.Architecture`; it builds
        the decoder and the encoder body the guide puts its heads on (checked on a tiny batch).
    :param channels: convolution widths of the image architectures (``--channels``).
    :param prior: a :class:`~pyro_vae.vae.priors.Prior` class, instance, registered name (``standard``,
        ``mog``, ``vamp``, ``flow``) or import spec (see :mod:`pyro_vae.vae.priors` for the contract).
    :param dict prior_options: keyword options of the prior's constructor, e.g. ``{"components": 500}``.
    :raises UserError: for an unknown family, guide, prior or architecture, or a guide or prior that breaks
        its contract.
    """

    def __init__(
        self, x_dim: int | Sequence[int], z_dim: int = 20, hidden: int | str | Sequence[int] = (400,),
        activation: str = "relu", likelihood: Likelihood | str | type[Likelihood] = "bernoulli",
        guide: str | type[nn.Module] | nn.Module = "diagonal", guide_options: dict[str, Any] | None = None,
        check_guide: bool = True, decoder: nn.Module | None = None,
        arch: str | Architecture | type[Architecture] = "mlp", channels: int | str | Sequence[int] = (32, 64, 128, 256),
        prior: str | type[Prior] | Prior = "standard", prior_options: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        hidden = parse_hidden(hidden)
        #: the shape of one item, and its number of values D
        self.x_shape = item_shape(x_dim)
        self.x_dim, self.z_dim = math.prod(self.x_shape), z_dim
        self.likelihood = likelihood if isinstance(likelihood, Likelihood) else build_likelihood(likelihood)
        architecture = build_architecture(arch, hidden, activation, channels)
        label = arch if isinstance(arch, str) else None
        body = architecture.encoder(self.x_shape)  # None for mlp: the guide builds its MLP (parameters as before)
        if body is not None:  # a user's --arch file fails here, clearly, before a guide is put on it
            check_architecture(architecture, self.x_shape, z_dim, self.likelihood.params_per_dim, label,
                               nets=(None, body))  # fmt: skip
        guide_input, body = self.guide_input(body)
        #: :math:`q_\phi(z \mid x)`, built and checked once on a tiny batch (:func:`~pyro_vae.vae.guides.build_guide`)
        self.encoder = build_guide(guide, guide_input, z_dim, hidden, activation, check=check_guide, body=body,
                                   **(guide_options or {}))  # fmt: skip
        if decoder is None:
            code_dim = z_dim + self.label_dim
            decoder = architecture.decoder(code_dim, self.x_shape, self.likelihood.params_per_dim)
            # run the nets once on a tiny batch: a user's --arch file fails here, clearly
            check_architecture(architecture, self.x_shape, code_dim, self.likelihood.params_per_dim, label,
                               nets=(decoder, None))  # fmt: skip
        #: :math:`f_\theta`: z -> the likelihood's parameters for every data dimension
        self.decoder = decoder
        # built last: a learned prior draws its initial values after the nets (the standard prior draws none)
        bounds = (0.0, 1.0) if self.likelihood.domain in ("binary", "unit") else None
        #: :math:`p_\lambda(z)`, a :class:`~pyro_vae.vae.priors.Prior` (``prior.*`` in the state dict)
        self.prior_module = build_prior(prior, z_dim, encoder=self.encoder, x_shape=self.x_shape, bounds=bounds,
                                        **(prior_options or {}))  # fmt: skip

    #: Hooks for models whose nets also take a label (:mod:`pyro_vae.vae.labels`): the size of the
    #: one-hot label appended to the decoder's input (0 here: the decoder takes ``z`` alone) ...
    label_dim = 0

    def guide_input(self, body: nn.Module | None) -> tuple[tuple[int, ...], nn.Module | None]:
        """... and what the guide is built for: ``(input shape, encoder body)``; here the items' shape
        and the architecture's body as they are."""
        return self.x_shape, body

    @property
    def encoder_input_shape(self) -> tuple[int, ...]:
        """The shape of one input of :attr:`encoder` (the items' shape here)."""
        return self.x_shape

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Items ``(..., *x_shape)`` flattened to ``(..., D)`` (flat batches are returned as they are)."""
        k = len(self.x_shape)
        if k > 1 and tuple(x.shape[-k:]) == self.x_shape:
            return x.flatten(-k)
        if x.dim() > 2 and math.prod(x.shape[1:]) == self.x_dim:  # a run saved before items kept their shape
            return x.reshape(len(x), self.x_dim)
        return x

    def prior(self, like: torch.Tensor) -> TorchDistributionMixin:
        """:math:`p_\\lambda(z)` (the prior module's distribution) on the dtype and device of ``like``."""
        fixed = self.__dict__.get("_fixed_priors")
        if fixed is None:
            return self.prior_module(like)
        key = (like.dtype, like.device)
        if key not in fixed:
            fixed[key] = self.prior_module(like)
        return fixed[key]

    @contextlib.contextmanager
    def fixed_prior(self) -> Iterator[VAE]:
        """Within this block :meth:`prior` builds :math:`p_\\lambda(z)` once per dtype and device and
        reuses it: for evaluation without gradients, where the parameters do not change and a
        VampPrior's encoder pass over its pseudo-inputs need not be repeated for every chunk of
        importance samples. Not for training (the distribution would hold stale parameters)."""
        outer = self.__dict__.get("_fixed_priors")
        self.__dict__["_fixed_priors"] = {} if outer is None else outer
        try:
            yield self
        finally:
            self.__dict__["_fixed_priors"] = outer

    def model(self, x: torch.Tensor) -> None:
        """:math:`p_\\lambda(z)\\,p_\\theta(x \\mid z)` for a minibatch ``x`` of shape ``(B, D)``."""
        pyro.module("decoder", self.decoder)
        if self.prior_module.learned:
            pyro.module("prior", self.prior_module)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)).to_event(1), obs=self.flat(x))

    def guide(self, x: torch.Tensor) -> None:
        """:math:`q_\\phi(z \\mid x)` for the same minibatch; the site name ``"z"`` matches the model's."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))

    # Uses of a trained model ------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb{E}[x \\mid z]` for latent codes ``z`` of shape ``(..., z_dim)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means for ``n`` codes drawn from the prior: shape ``(n, D)``."""
        return self.decode(self.prior_module.sample(n, generator, like=next(self.parameters())))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means for one draw :math:`z \\sim q_\\phi(z \\mid x)` per row of ``x``."""
        return self.decode(self.encoder(x).sample())


