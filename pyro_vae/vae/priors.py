r"""Priors: the distribution :math:`p(z)` of the latent codes, an axis like the guide.

**The prior contract** is written once, in the docstring of :class:`Prior` (the documentation
includes it from there). :func:`build_prior` builds a prior from a registered name, a ``file.py:Name``
or ``package.module:Name`` spec, a class or an instance, and :func:`check_prior` runs it once so that
a broken prior fails with one :class:`~pyro_vae.errors.UserError` line before any training.

Built in (``--prior``):

- ``standard``: :math:`p(z) = \mathcal{N}(0, I)`, the paper's (Kingma & Welling 2013); no parameters.
- ``mog``: a mixture of :math:`K` learned diagonal Gaussians (``--prior-components``, default 10),
  :math:`p_\lambda(z) = \sum_k \pi_k\, \mathcal{N}(z; m_k, \mathrm{diag}\, s_k^2)`.
- ``vamp``: the VampPrior (Tomczak & Welling 2018), :math:`p_\lambda(z) = \frac1K \sum_k q_\phi(z \mid u_k)`,
  the run's own guide at :math:`K` learned pseudo-inputs :math:`u_k` (``--prior-components``, default
  500, the paper's on MNIST).
- ``flow``: :math:`\mathcal{N}(0, I)` pushed through ``--prior-flow-steps`` learned affine
  autoregressive transforms (:mod:`pyro.distributions.transforms`; a masked autoregressive flow,
  Papamakarios et al. 2017, so that :math:`\log p(z)` takes one network pass per step).

Every parameter of a prior is trained by SVI with the nets (:meth:`VAE.model <pyro_vae.vae.model.VAE.model>`
registers the prior with ``pyro.module("prior", prior)``), saved in the checkpoints with the VAE's
``state_dict`` and recorded in ``config.json`` as ``prior`` and ``prior_options``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import constraints

import pyro.distributions as dist
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN

from ..errors import UserError
from ..registry import Registry
from ..user_code import accepted_options, resolve_class

PRIORS = Registry("prior")

#: draws that estimate a learned prior's marginal moments and quantiles (traversals, the manifold grid)
MARGINAL_DRAWS = 10_000


class Prior(nn.Module):
    r"""Base class of priors :math:`p_\lambda(z)`; its docstring is the prior contract.

    A prior is a :class:`torch.nn.Module`, best derived from this class:

    1. **Constructor** ``__init__(self, z_dim, **options)``. ``z_dim`` is the latent size :math:`J`.
       Options of its own are keywords with defaults; :meth:`options` returns their values, which a
       run records as ``prior_options`` in ``config.json``. The CLI passes ``components=K``
       (``--prior-components``) and ``flow_steps=T`` (``--prior-flow-steps``) only when given, and
       refuses them for a constructor without that keyword. A constructor may also take the
       keywords ``encoder`` (the run's guide :math:`q_\phi(z \mid x)`, a module already registered
       by the guide: keep it out of the prior's own submodules, e.g. in a tuple, or its parameters
       would be registered, and updated, twice), ``x_shape`` (the shape of one item) and
       ``bounds`` (``(0, 1)`` when the data lies in the unit interval, else ``None``); they are
       given only to constructors that name them. Draw initial values from torch's global
       generator (seeded by the run).
    2. **Call** ``forward(self, like)`` returns a :class:`pyro.distributions.Distribution` over
       :math:`z` with ``batch_shape == ()`` and ``event_shape == (z_dim,)``; ``like`` is a tensor
       whose dtype and device it should use (a parameter-free prior builds its tensors from it).
       The model samples the site ``"z"`` from it inside the ``"data"`` plate (and, at evaluation,
       a ``"particles"`` plate), so it must ``expand`` and its ``log_prob`` must score values of
       shape ``(..., z_dim)`` it did not draw (the guide's draws): it returns shape ``(...)``. It
       must not call ``pyro.sample``. ``elbo-analytic`` needs
       ``torch.distributions.kl_divergence(q, p)`` for the guide's family ``q``; ``--free-bits``
       needs a prior that factorizes over units (``Independent`` of a univariate family).
    3. **Parameters.** Every learnable part is a submodule or an ``nn.Parameter`` of the prior;
       :meth:`VAE.model <pyro_vae.vae.model.VAE.model>` calls ``pyro.module("prior", prior)`` when
       it has any, so the optimizer trains them and the checkpoints hold them (``prior.*`` in the
       VAE's ``state_dict``).
    4. **Sampling.** :meth:`sample` ``(n, generator)`` returns ``(n, z_dim)`` codes (``sample``,
       ``samples.png``); the default draws from ``forward(...)`` under a random state seeded from
       ``generator``, so a seed gives the same pictures. :meth:`marginals` gives each unit's mean,
       standard deviation and quantiles (traversal ranges, the ``z = 2`` manifold grid); the default
       estimates them from :data:`MARGINAL_DRAWS` draws.

    **Using it.** ``--prior path/to/file.py:MyPrior`` or ``--prior package.module:MyPrior`` (a run
    folder that names a prior as code opens only with ``--trust-guide``, as for guides); in Python
    ``PRIORS.register("mine", MyPrior)``, ``VAE(..., prior="file.py:MyPrior")`` or ``VAE(..., prior=MyPrior)``.
    """

    #: elements of the largest intermediate tensor ``log_prob`` makes per value scored (the
    #: evaluation sizes its chunks by it); ``z_dim`` unless a subclass says more
    elements_per_value: int | None = None

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = int(z_dim)

    def options(self) -> dict[str, Any]:
        """Constructor keywords beyond ``z_dim``, with their values (``prior_options`` in ``config.json``)."""
        return {}

    @property
    def learned(self) -> bool:
        """Whether the prior has parameters to train."""
        return any(True for _ in self.parameters())

    def forward(self, like: torch.Tensor) -> TorchDistributionMixin:
        raise NotImplementedError

    def _like(self) -> torch.Tensor:
        p = next(self.parameters(), None)
        return p if p is not None else torch.zeros(())

    def sample(
        self, n: int, generator: torch.Generator | None = None, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n`` codes ``(n, z_dim)`` drawn from the prior, on the device and dtype of ``like``
        (default: the prior's parameters). With ``generator`` (a :class:`torch.Generator`) the draws
        are made from a random state seeded by it, and torch's global state is left as it was."""
        like = self._like() if like is None else like
        with torch.no_grad():
            if generator is None:
                return self(like).sample((n,))
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            devices = [like.device] if like.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return self(like).sample((n,))

    def marginals(
        self, like: torch.Tensor | None = None, quantiles: Sequence[float] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each unit's marginal mean and standard deviation under the prior, and the given quantiles:
        ``(mean (z_dim,), std (z_dim,), q (len(quantiles), z_dim))``. The default estimates them from
        :data:`MARGINAL_DRAWS` draws of a fixed seed."""
        generator = torch.Generator(device=(self._like() if like is None else like).device).manual_seed(0)
        z = self.sample(MARGINAL_DRAWS, generator, like).double()
        p = torch.as_tensor(quantiles, dtype=z.dtype, device=z.device)
        q = torch.quantile(z, p, dim=0) if len(p) else z.new_zeros((0, self.z_dim))
        return z.mean(0).float(), z.std(0).float(), q.float()

    def describe(self) -> str:
        """A few words naming the prior, for captions and messages."""
        return f"the {getattr(self, 'name', type(self).__name__)} prior"


@PRIORS.register("standard")
class StandardPrior(Prior):
    r""":math:`p(z) = \mathcal{N}(0, I)`: the paper's prior. No parameters; :meth:`sample` draws
    :math:`\epsilon \sim \mathcal{N}(0, I)` with ``torch.randn`` (the numbers of every run before priors
    became an axis)."""

    def forward(self, like: torch.Tensor) -> TorchDistributionMixin:
        return dist.Normal(like.new_zeros(()), like.new_ones(())).expand([self.z_dim]).to_event(1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        like = self._like() if like is None else like
        return torch.randn(n, self.z_dim, generator=generator, device=like.device, dtype=like.dtype)

    def marginals(
        self, like: torch.Tensor | None = None, quantiles: Sequence[float] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        like = self._like() if like is None else like
        p = torch.as_tensor(quantiles, dtype=torch.float64)
        q = torch.distributions.Normal(0.0, 1.0).icdf(p).to(like.dtype)[:, None].expand(len(p), self.z_dim)
        zeros = torch.zeros(self.z_dim, dtype=like.dtype)
        return zeros, zeros + 1, q


@PRIORS.register("mog")
class MixturePrior(Prior):
    r"""A mixture of :math:`K` learned diagonal Gaussians (``--prior-components``, default 10):

    .. math::

        p_\lambda(z) = \sum_{k=1}^{K} \pi_k\, \mathcal{N}\big(z; m_k, \mathrm{diag}\, s_k^2\big), \qquad
        \pi = \mathrm{softmax}(a), \quad s_k = \mathrm{softplus}(\eta_k),

    as :class:`pyro.distributions.MixtureSameFamily`. Initialized with equal weights, unit scales and
    means :math:`m_k \sim \mathcal{N}(0, I)` (so the mixture starts near the standard prior's scale).
    There is no closed-form KL to a Gaussian guide: ``elbo-analytic`` and ``--free-bits`` refuse it.
    """

    DEFAULT_COMPONENTS = 10
    MIN_SCALE = 1e-4

    def __init__(self, z_dim: int, components: int | None = None) -> None:
        super().__init__(z_dim)
        self.components = self.DEFAULT_COMPONENTS if components is None else _positive(components, "--prior-components")
        self.logits = nn.Parameter(torch.zeros(self.components))
        self.locs = nn.Parameter(torch.randn(self.components, self.z_dim))
        self.raw_scales = nn.Parameter(torch.full((self.components, self.z_dim), math.log(math.e - 1)))
        self.elements_per_value = self.components * self.z_dim

    def options(self) -> dict[str, Any]:
        return {"components": self.components}

    def forward(self, like: torch.Tensor) -> TorchDistributionMixin:
        scales = F.softplus(self.raw_scales) + self.MIN_SCALE
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits),
                                      dist.Normal(self.locs, scales).to_event(1))  # fmt: skip


class UniformMixture(TorchDistribution):
    r""":math:`p(z) = \frac1K \sum_k c_k(z)`: an equally weighted mixture of the ``K`` components of one
    distribution ``components`` (``batch_shape (K,)``, ``event_shape (J,)``), for components of any
    family, including normalizing flows conditioned per component (which
    :class:`~torch.distributions.MixtureSameFamily` cannot score):
    :math:`\log p(z) = \operatorname{logsumexp}_k \log c_k(z) - \log K`. Not reparameterized (a
    prior is scored, not differentiated through its draws)."""

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, components, batch_shape=torch.Size(), validate_args=None):
        if len(components.batch_shape) != 1 or len(components.event_shape) != 1:
            raise ValueError("components must have batch_shape (K,) and event_shape (J,)")
        self.components = components
        self.num_components = components.batch_shape[0]
        super().__init__(torch.Size(batch_shape), components.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return UniformMixture(self.components, batch_shape)

    @property
    def elements_per_value(self):
        """Elements of the largest intermediate tensor :meth:`log_prob` makes per value scored: ``K``
        on the diagonal-Gaussian path without gradients, else ``K * J``."""
        k, j = self.num_components, self.event_shape[0]
        return 2 * k if _diagonal_normal(self.components) is not None and not torch.is_grad_enabled() else k * j

    def log_prob(self, value):
        k, j = self.num_components, value.shape[-1]
        diagonal = _diagonal_normal(self.components)
        if diagonal is not None and not torch.is_grad_enabled():
            return _diagonal_mixture_log_prob(value, *diagonal) - math.log(k)
        per_component = self.components.log_prob(value.unsqueeze(-2).expand(*value.shape[:-1], k, j))
        return per_component.logsumexp(-1) - math.log(k)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        n = math.prod(shape)
        with torch.no_grad():
            draws = self.components.sample((n,))  # (n, K, J): one draw of every component, one kept
            pick = torch.randint(0, self.num_components, (n,), device=draws.device)
            return draws[torch.arange(n, device=draws.device), pick].reshape(*shape, *self.event_shape)


def _diagonal_normal(components):
    """``(loc, scale)`` of components that are diagonal Gaussians (``Normal(loc, scale).to_event(1)``),
    else ``None``."""
    if (isinstance(components, torch.distributions.Independent) and components.reinterpreted_batch_ndims == 1
            and type(components.base_dist) in (torch.distributions.Normal, dist.Normal)):  # fmt: skip
        return components.base_dist.loc, components.base_dist.scale
    return None


def _diagonal_mixture_log_prob(value, loc, scale):
    r""":math:`\operatorname{logsumexp}_k \log \mathcal{N}(z; m_k, \mathrm{diag}\, s_k^2)` for ``value``
    ``(..., J)`` and ``loc``, ``scale`` ``(K, J)``, with the squares expanded into matrix products,
    :math:`\sum_j (z_j - m_{kj})^2 / s_{kj}^2 = z^2 \cdot s_k^{-2} - 2\, z \cdot (m_k s_k^{-2}) + m_k^2 \cdot s_k^{-2}`,
    so that no ``(..., K, J)`` tensor is made (evaluation scores ~10^7 codes against 500 components).
    Computed in float64, where the expansion loses nothing that matters (relative error ~1e-16 of
    terms below ~1e6), and returned in ``value``'s dtype; equal to the elementwise form to ~1e-10
    (``tests/vae/test_priors.py``)."""
    j = value.shape[-1]
    z = value.reshape(-1, j).double()
    loc, scale = loc.double(), scale.double()
    precision = scale.pow(-2)  # (K, J)
    constant = -0.5 * (loc.pow(2) * precision).sum(-1) - scale.log().sum(-1) - 0.5 * j * math.log(2 * math.pi)
    # one product [z^2, z, 1] @ [-precision / 2, loc * precision, constant]^T: (N, K), one pass over memory
    inputs = torch.cat([z.pow(2), z, torch.ones_like(z[:, :1])], -1)
    weights = torch.cat([-0.5 * precision, loc * precision, constant.unsqueeze(-1)], -1)
    log_normal = inputs @ weights.T
    return log_normal.logsumexp(-1).to(value.dtype).reshape(value.shape[:-1])


@PRIORS.register("vamp")
class VampPrior(Prior):
    r"""The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", AISTATS): the run's own guide at
    :math:`K` learned pseudo-inputs :math:`u_k` (``--prior-components``, default 500 as in the paper):

    .. math::

        p_\lambda(z) = \frac1K \sum_{k=1}^{K} q_\phi(z \mid u_k),

    the variational mixture of posteriors that approximates the optimal prior, the aggregate posterior
    :math:`\frac1N \sum_n q_\phi(z \mid x_n)` (the paper's eq. 9). The pseudo-inputs are parameters in
    the data's shape (``(K, *x_shape)``, so convolutional encoders take them as images) and share the
    encoder :math:`\phi` with the guide: the encoder's gradient gets a term from the prior too.

    **Initialization, as the paper's code** (``jmtomczak/vae_vampprior``, ``add_pseudoinputs``): for data
    in :math:`[0, 1]` the pseudo-inputs are :math:`u_k = \mathrm{hardtanh}_{[0,1]}(w_k)` with
    :math:`w_k \sim \mathcal{N}(0.05, 0.01^2)` elementwise (``--pseudoinputs_mean 0.05
    --pseudoinputs_std 0.01``; their MNIST scripts also use the mean -0.05, where every :math:`w_k` is
    below 0 and the hardtanh passes no gradient, so 0.05 is used here); on real-valued data
    :math:`u_k = w_k`. ``init_mean`` and ``init_std`` change the two numbers.

    The guide must score values it did not draw (``log_prob`` of another draw): the planar guide
    cannot and is refused. No closed-form KL exists: ``elbo-analytic`` and ``--free-bits`` refuse it.
    """

    DEFAULT_COMPONENTS = 500
    #: said when :func:`check_prior` fails (the guide cannot score a z it did not draw)
    check_hint = ("the vamp prior scores z under the guide q(z|u_k), so the guide must score values it did not "
                  "draw: the planar guide cannot (no inverse); use diagonal, full-rank or iaf")  # fmt: skip

    def __init__(
        self, z_dim: int, components: int | None = None, encoder: nn.Module | None = None,
        x_shape: int | Sequence[int] | None = None, bounds: tuple[float, float] | None = None, init_mean: float = 0.05,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(z_dim)
        if encoder is None or x_shape is None:
            raise UserError("the vamp prior needs the run's encoder and the data's shape (build it through "
                            "pyro_vae.VAE(prior='vamp'))")  # fmt: skip
        self.components = self.DEFAULT_COMPONENTS if components is None else _positive(components, "--prior-components")
        self.x_shape = tuple(int(s) for s in ((x_shape,) if isinstance(x_shape, int) else x_shape))
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.init_mean, self.init_std = float(init_mean), float(init_std)
        self._encoder = (encoder,)  # a reference, not a submodule: the guide registers its parameters
        #: :math:`w`, ``(K, *x_shape)``; the pseudo-inputs are :meth:`pseudo_inputs`
        self.pseudo = nn.Parameter(torch.randn(self.components, *self.x_shape) * self.init_std + self.init_mean)
        self.elements_per_value = self.components * self.z_dim

    def options(self) -> dict[str, Any]:
        return {"components": self.components, "init_mean": self.init_mean, "init_std": self.init_std}

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs :math:`u_k`, ``(K, *x_shape)``."""
        return self.pseudo if self.bounds is None else F.hardtanh(self.pseudo, *self.bounds)

    def forward(self, like: torch.Tensor) -> TorchDistributionMixin:
        return UniformMixture(self.encoder(self.pseudo_inputs()))

    def describe(self) -> str:
        return f"the vamp prior ({self.components} pseudo-inputs)"


@PRIORS.register("flow")
class FlowPrior(Prior):
    r""":math:`\mathcal{N}(0, I)` pushed through ``flow_steps`` learned affine autoregressive transforms
    (``--prior-flow-steps``, default 2), :math:`z = f_T^{-1} \circ \dots \circ f_1^{-1}(\epsilon)`:

    .. math::

        \log p_\lambda(z) = \log \mathcal{N}(f(z); 0, I) + \sum_{t=1}^{T} \log \left| \det \frac{\partial f_t}{\partial z_{t-1}} \right|,
        \qquad f = f_T \circ \dots \circ f_1,

    each :math:`f_t` a :class:`pyro.distributions.transforms.AffineAutoregressive` (``stable=True``) on a
    :class:`pyro.nn.AutoRegressiveNN` with one hidden layer of ``10 * z_dim`` units, the order of the
    units reversed every other step. The density direction :math:`z \to \epsilon` is the transforms'
    forward (one pass per step: a masked autoregressive flow, Papamakarios et al. 2017), so training
    scores the guide's draws cheaply; sampling inverts them (``z_dim`` passes per step; Pyro 1.9's
    inverse starts from a tensor of the default dtype, so sample a float64 flow prior with float64 as
    the default). No closed-form KL: ``elbo-analytic`` and ``--free-bits`` refuse it.
    """

    DEFAULT_FLOW_STEPS = 2

    def __init__(self, z_dim: int, flow_steps: int | None = None) -> None:
        super().__init__(z_dim)
        self.flow_steps = self.DEFAULT_FLOW_STEPS if flow_steps is None else _positive(flow_steps, "--prior-flow-steps")
        self.flows = nn.ModuleList()
        for t in range(self.flow_steps):
            order = torch.arange(self.z_dim) if t % 2 == 0 else torch.arange(self.z_dim - 1, -1, -1)
            # Pyro annotates the permutation as torch.LongTensor, the int64 tensor torch.arange returns
            net = AutoRegressiveNN(self.z_dim, [10 * self.z_dim], permutation=order)  # type: ignore[arg-type]
            self.flows.append(AffineAutoregressive(net, stable=True))

    def options(self) -> dict[str, Any]:
        return {"flow_steps": self.flow_steps}

    def forward(self, like: torch.Tensor) -> TorchDistributionMixin:
        base = dist.Normal(like.new_zeros(()), like.new_ones(())).expand([self.z_dim]).to_event(1)
        # the transforms map z -> eps; the distribution's transforms map eps -> z: their inverses, reversed
        return dist.TransformedDistribution(base, [flow.inv for flow in reversed(self.flows)])


def _positive(value, flag):
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise UserError(f"{flag} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")
    return int(value)


# Building and checking priors ---------------------------------------------------------------------


def _label(spec):
    if isinstance(spec, str):
        return spec
    return spec.__name__ if isinstance(spec, type) else type(spec).__name__


def prior_class(spec):
    """The prior class a registered name or an import spec (``file.py:Name``, ``module:Name``) names."""
    return resolve_class(spec, PRIORS, "prior", lambda obj: isinstance(obj, type) and issubclass(obj, nn.Module),
                         "a class", "a subclass of pyro_vae.Prior (a torch.nn.Module)")  # fmt: skip


#: the flags of the prior options the CLI passes (for messages)
FLAGS = {"components": "--prior-components", "flow_steps": "--prior-flow-steps"}


def build_prior(spec, z_dim, encoder=None, x_shape=None, bounds=None, check=True, **options):
    """Build the prior ``spec`` names (a name, import spec, class or instance) and, if ``check``, check it.

    ``encoder``, ``x_shape`` and ``bounds`` are passed to a constructor that names them (see
    :class:`Prior`). ``options`` whose value is ``None`` are left to the prior's defaults; any other
    option the constructor does not accept is a :class:`UserError`.
    """
    label = _label(spec)
    cls = prior_class(spec)
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(cls, type):
        params = accepted_options(cls, options, f"{label} prior", FLAGS)
        given = {"encoder": encoder, "x_shape": x_shape, "bounds": bounds}
        options = {**options, **{k: v for k, v in given.items() if k in params and k not in options}}
        try:
            prior = cls(z_dim, **options)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"could not build the prior {label}: {type(e).__name__}: {e} (a prior's constructor receives z_dim "
                "and its own keyword options; see docs/guides.md)"
            ) from None
    else:
        if options:
            raise UserError(f"prior options {sorted(options)} cannot be applied to an already built prior")
        prior = cls
    if not isinstance(prior, Prior):
        raise UserError(f"the prior {label} must derive from pyro_vae.Prior (a torch.nn.Module with sample and "
                        "marginals; see docs/guides.md)")  # fmt: skip
    if check:
        check_prior(prior, z_dim, label)
    return prior


def check_prior(prior, z_dim, label=None, like=None):
    """Run ``prior`` once and check the contract; :class:`UserError` on a breach. Returns the distribution.

    Checks that a call returns a distribution with ``batch_shape ()`` and ``event_shape (z_dim,)``
    that expands to a batch, whose draws have shape ``(B, z_dim)`` and whose ``log_prob`` scores
    values it did not draw with a finite ``(B,)``. The random number generators are left as they were.
    """
    label = label or _label(prior)
    where = f"the prior {label}"
    if like is None:
        p = next(prior.parameters(), None)
        like = torch.zeros((), dtype=p.dtype if p is not None else torch.get_default_dtype(),
                           device=p.device if p is not None else None)  # fmt: skip
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            d = prior(like)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{where} failed when called: {type(e).__name__}: {e}") from None
        if not isinstance(d, torch.distributions.Distribution):
            raise UserError(f"{where} returned a {type(d).__name__}, not a distribution: its forward(like) must return "
                            "a pyro.distributions distribution over z")  # fmt: skip
        if d.event_shape != torch.Size([z_dim]) or d.batch_shape != torch.Size():
            hint = " (use .to_event(1) on an elementwise family)" if d.batch_shape == torch.Size([z_dim]) else ""
            raise UserError(f"{where} returned a distribution of batch_shape {tuple(d.batch_shape)} and event_shape "
                            f"{tuple(d.event_shape)}; p(z) needs batch_shape () and event_shape ({z_dim},){hint}")  # fmt: skip
        try:
            z = d.expand([3]).sample()
            other = torch.linspace(-1, 1, 3 * z_dim, dtype=like.dtype, device=like.device).reshape(3, z_dim)
            log_p = d.expand([3]).log_prob(other)
        except Exception as e:
            hint = getattr(prior, "check_hint", None) or "the model scores the guide's draws under p(z)"
            raise UserError(f"{where} cannot sample, expand to a batch, or score a value it did not draw "
                            f"({type(e).__name__}: {e}); {hint}") from None  # fmt: skip
        if z.shape != torch.Size([3, z_dim]) or log_p.shape != torch.Size([3]):
            raise UserError(f"{where}: a batch of 3 draws has shape {tuple(z.shape)} and log p(z) shape "
                            f"{tuple(log_p.shape)}; expected (3, {z_dim}) and (3,)")  # fmt: skip
        if not torch.isfinite(log_p).all():
            raise UserError(f"{where} gives a non-finite log p(z) for finite codes")
    return d


def closed_form_kl(q, p):
    """Whether ``torch.distributions.kl_divergence(q, p)`` exists for these two distributions."""
    try:
        with torch.no_grad():
            torch.distributions.kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True
