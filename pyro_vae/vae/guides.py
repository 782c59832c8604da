r"""Guides: the amortized variational posterior :math:`q_\phi(z \mid x)` (the "encoder").

**The guide contract** is written once, in the docstring of :class:`Guide` (the documentation
includes it from there): what the constructor receives, what a call returns, how the nets are
registered, and what each objective needs of the distribution.

:func:`build_guide` builds a guide from a registered name, a ``file.py:Name`` or
``package.module:Name`` spec, a class or an instance; :func:`check_guide` runs it once on a tiny
batch so that a broken guide fails with a clear :class:`~pyro_vae.errors.UserError` before any
training.

Built in: ``diagonal`` (the paper's), ``full-rank``, ``iaf`` (Kingma et al. 2016) and ``planar``
(Rezende & Mohamed 2015).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyro.distributions as dist
from pyro.distributions import ConditionalTransformModule
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.distributions.transforms import ConditionalAffineAutoregressive, ConditionalPlanar
from pyro.nn import ConditionalAutoRegressiveNN

from ..errors import UserError
from ..registry import Registry
from ..user_code import accepted_options, resolve_class
from .nets import ACTIVATIONS, MLP

GUIDES = Registry("guide")


class Guide(nn.Module):
    r"""Base class of amortized guides :math:`q_\phi(z \mid x)`; its docstring is the guide contract.

    A guide is a :class:`torch.nn.Module`, best derived from this class:

    1. **Constructor** ``__init__(self, x_dim, z_dim, hidden, activation, **options)``. ``x_dim``
       is the flattened data size :math:`D`, ``z_dim`` the latent size :math:`J`, ``hidden`` a
       tuple of hidden layer sizes (``--hidden``, e.g. ``(400,)``), ``activation`` a name from
       :data:`pyro_vae.vae.nets.ACTIVATIONS` (``--activation``). Options of its own are keywords with
       defaults; :meth:`options` returns their values, which a run records as ``guide_options``
       in its ``config.json`` and :func:`~pyro_vae.runs.run.load_run` passes back. The CLI passes
       ``flow_steps=K`` only when ``--flow-steps`` is given (and refuses it for a constructor
       without that keyword). Call ``super().__init__(x_dim, z_dim, hidden, activation)``, which
       sets ``self.x_dim`` and ``self.z_dim``.
    2. **Call** ``forward(self, x)`` with ``x`` of shape ``(B, x_dim)`` returns a
       :class:`pyro.distributions.Distribution` over :math:`z` with ``batch_shape == (B,)`` and
       ``event_shape == (z_dim,)`` (one datapoint's latent vector is one event: use
       ``.to_event(1)`` on elementwise families). It must not call ``pyro.sample`` itself:
       :meth:`VAE.guide <pyro_vae.vae.model.VAE.guide>` samples the site ``"z"`` from it inside the
       ``"data"`` plate (and, at evaluation, inside a ``"particles"`` plate, so the distribution
       is expanded to ``(K, B)``; the families of :mod:`pyro.distributions` and their transforms
       handle that). What the objectives need of it:

       - ``elbo``, ``elbo-analytic`` and ``iwae`` differentiate through the draw, so the
         distribution must be reparameterized (``has_rsample``, :math:`z = g_\phi(\epsilon, x)`;
         Kingma & Welling 2013, Section 2.4).
       - ``rws`` does not need that, but it scores *fixed* (detached) draws: ``log_prob`` must
         work on a value the distribution did not just sample.
       - ``elbo-analytic`` needs ``torch.distributions.kl_divergence(q, prior)`` to exist for the
         family (register one with :func:`torch.distributions.kl.register_kl` if you know it).
    3. **Parameters.** Every learnable part is a submodule or an ``nn.Parameter`` of the guide:
       :meth:`VAE.guide <pyro_vae.vae.model.VAE.guide>` calls ``pyro.module("encoder", guide)``, which
       registers exactly those with Pyro's parameter store, so the optimizer trains them (nets
       kept in a plain Python list or dict would silently not be trained).

    4. **Models with labels** (``--conditional``, ``--semi-supervised``; :mod:`pyro_vae.vae.labels`). There the
       guide is :math:`q_\phi(z \mid x, y)` and takes the label through its input: it is built with
       ``x_dim = D + C`` (``C`` classes) and called with *packed* inputs, the flattened item followed by the
       one-hot label, shape ``(B, D + C)``; when the label is enumerated the input has a leading class
       dimension, ``(C, B, D + C)``, and the distribution must then have ``batch_shape (C, B)`` (nets of
       :class:`torch.nn.Linear` layers broadcast over it). With an image architecture the guide's ``body``
       (:class:`~pyro_vae.vae.labels.LabelledBody`) takes the packed input and returns the image features
       followed by the label. So every guide written to points 1-3 works unchanged in a model with labels.

    **Using it.** On the command line, with no registration: ``--guide path/to/file.py:MyGuide``
    (the file is run as a fresh module) or ``--guide package.module:MyGuide``; ``config.json``
    keeps the spec as given, so reload from the same working directory or give an absolute path.
    In Python: ``GUIDES.register("mine", MyGuide)``, then ``guide="mine"`` like a built-in name (a
    run so trained reloads only in a process that registered the same name);
    ``guide="file.py:MyGuide"`` and ``VAE(..., guide=MyGuide)`` (a class or an instance) work too.
    :func:`check_guide` builds and runs the guide once on a tiny batch before any training, so
    that each breach of this contract is a one-line :class:`~pyro_vae.errors.UserError`.
    """

    #: the shape of one item, set by :func:`build_guide` (``None``: items are vectors of ``x_dim``)
    input_shape: tuple[int, ...] | None = None
    #: whether ``guide(x)`` flattens items ``(B, *input_shape)`` to ``(B, x_dim)`` before ``forward``:
    #: true unless the guide was given an encoder ``body`` (which takes the items as they are)
    flatten_input = True

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int], activation: str = "tanh") -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim

    def __call__(self, x, *args, **kwargs):
        shape = self.input_shape
        if self.flatten_input and shape and len(shape) > 1 and tuple(x.shape[-len(shape):]) == tuple(shape):
            x = x.flatten(-len(shape))
        elif self.flatten_input and x.dim() > 2 and math.prod(x.shape[1:]) == self.x_dim:
            x = x.reshape(len(x), self.x_dim)  # items of a run saved before they kept their shape
        return super().__call__(x, *args, **kwargs)

    def _trunk(self, body, hidden, out_dim, activation):
        """``body`` (the architecture's encoder, ``(B, *x_shape) -> (B, body.out_dim)``) with a linear head to
        ``out_dim``; without a body, the paper's MLP ``x_dim -> hidden -> out_dim`` on flattened items."""
        if body is None:
            return MLP(self.x_dim, hidden, out_dim, activation)
        self.flatten_input = False
        return nn.Sequential(body, nn.Linear(body.out_dim, out_dim))

    def options(self) -> dict[str, Any]:
        """Constructor keywords beyond the common four, with their values (recorded as ``guide_options`` in
        a run's ``config.json``)."""
        return {}

    def forward(self, x: torch.Tensor) -> TorchDistributionMixin:
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

    def __init__(
        self, x_dim: int, z_dim: int, hidden: Sequence[int], activation: str = "tanh", body: nn.Module | None = None
    ) -> None:
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = self._trunk(body, hidden, 2 * z_dim, activation)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.MIN_SCALE

    def forward(self, x: torch.Tensor) -> TorchDistributionMixin:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)


@GUIDES.register("full-rank")
class FullRankGuide(Guide):
    r"""A Gaussian with a full covariance: :math:`q_\phi(z \mid x) = \mathcal{N}(z; \mu(x), L(x) L(x)^\top)`.

    The Cholesky factor is :math:`L = \mathrm{diag}(\sigma)\, M`, with :math:`\sigma = \mathrm{softplus}(\eta)`
    and :math:`M` unit lower triangular: the MLP outputs :math:`\mu`, :math:`\eta` and the
    :math:`z(z-1)/2` strictly lower entries of :math:`M`. Row :math:`i` of :math:`M` sets the
    correlations of :math:`z_i` with :math:`z_{<i}` and :math:`\sigma_i` its scale, so the two are
    decoupled; the entries of :math:`M` start at zero, so training starts from the ``diagonal``
    guide, which trains better than a randomly initialized lower triangle (measured: docs/benchmarks.md,
    "Measurements cited by the code"). Sampling is :math:`z = \mu + L \epsilon`, and

    .. math::

        \log q_\phi(z \mid x) = -\tfrac12 \lVert L^{-1}(z - \mu) \rVert^2 - \sum_i \log \sigma_i
        - \tfrac{d}{2} \log 2\pi .

    The KL divergence to the prior :math:`\mathcal{N}(0, I)` has a closed form
    (:mod:`pyro_vae.vae.kl`), so ``elbo-analytic`` (estimator B) applies to it.
    """

    MIN_SCALE = DiagonalGuide.MIN_SCALE

    def __init__(
        self, x_dim: int, z_dim: int, hidden: Sequence[int], activation: str = "tanh", body: nn.Module | None = None
    ) -> None:
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = self._trunk(body, hidden, 2 * z_dim + z_dim * (z_dim - 1) // 2, activation)
        with torch.no_grad():  # M = I at the start: the diagonal guide
            self.net[-1].weight[2 * z_dim :].zero_()
            self.net[-1].bias[2 * z_dim :].zero_()
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)

    def loc_scale_tril(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.z_dim
        out = self.net(x)
        loc, raw_scale, off = out[..., :z], out[..., z : 2 * z], out[..., 2 * z :]
        unit_tril = out.new_zeros(out.shape[:-1] + (z, z))
        unit_tril[..., self.tril_rows, self.tril_cols] = off
        unit_tril = unit_tril + torch.eye(z, dtype=out.dtype, device=out.device)
        scale = F.softplus(raw_scale) + self.MIN_SCALE
        return loc, scale.unsqueeze(-1) * unit_tril

    def forward(self, x: torch.Tensor) -> TorchDistributionMixin:
        loc, scale_tril = self.loc_scale_tril(x)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


class _FlowGuide(Guide):
    r"""A diagonal Gaussian base :math:`q_0(z_0 \mid x)` and ``flow_steps`` conditional transforms.

    The encoder's trunk maps :math:`x` to a hidden vector :math:`h` (its last hidden layer), from
    which a linear head gives :math:`\mu_0, \sigma_0`; every flow step is conditioned on :math:`h`.
    With :math:`z_T = f_T \circ \dots \circ f_1(z_0)`, the change of variables gives

    .. math::

        \log q_\phi(z_T \mid x) = \log q_0(z_0 \mid x) - \sum_{t=1}^{T} \log \left| \det \frac{\partial f_t}{\partial z_{t-1}} \right| .
    """

    DEFAULT_FLOW_STEPS = 2

    def __init__(
        self, x_dim: int, z_dim: int, hidden: Sequence[int], activation: str = "tanh", flow_steps: int | None = None,
        body: nn.Module | None = None,
    ) -> None:
        super().__init__(x_dim, z_dim, hidden, activation)
        hidden = tuple(hidden)
        steps = self.DEFAULT_FLOW_STEPS if flow_steps is None else flow_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Real) or not float(steps).is_integer() or steps < 1:
            raise UserError(f"--flow-steps must be a whole number of at least 1, got {flow_steps!r}")
        #: T, the number of flow steps
        self.flow_steps: int = int(steps)
        #: the size of the context ``h`` every flow step is conditioned on
        self.context_dim: int
        #: x -> h
        self.trunk: nn.Module
        if body is None:
            self.context_dim = hidden[-1]
            #: x -> h, the context of every flow step (the encoder's last hidden layer, activated)
            self.trunk = nn.Sequential(MLP(x_dim, hidden[:-1], hidden[-1], activation), ACTIVATIONS[activation]())
        else:  # the architecture's encoder body: its features are the context
            self.context_dim, self.trunk, self.flatten_input = int(body.out_dim), body, False
        #: h -> (mu_0, eta_0) of the base, sigma_0 = softplus(eta_0)
        self.head: nn.Linear = nn.Linear(self.context_dim, 2 * z_dim)
        self.flows: nn.ModuleList = nn.ModuleList(self.make_flow(t) for t in range(self.flow_steps))

    def make_flow(self, t: int) -> ConditionalTransformModule:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"flow_steps": self.flow_steps}

    def forward(self, x: torch.Tensor) -> TorchDistributionMixin:
        h = self.trunk(x)
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        base = dist.Normal(loc, F.softplus(raw_scale) + DiagonalGuide.MIN_SCALE).to_event(1)
        steps = [cast(ConditionalTransformModule, flow).condition(h) for flow in self.flows]  # what make_flow built
        return dist.TransformedDistribution(base, steps)


@GUIDES.register("iaf")
class IAFGuide(_FlowGuide):
    r"""Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016).

    Each step :math:`t` is a MADE network (Germain et al. 2015) on :math:`(z_{t-1}, h)` giving
    :math:`(m_t, s_t)`, autoregressive in :math:`z_{t-1}`; with :math:`\sigma_t = \mathrm{sigmoid}(s_t + 2)`
    (the paper's eq. 14, "numerically stable" update with a forget-gate bias),

    .. math::

        z_t = \sigma_t \odot z_{t-1} + (1 - \sigma_t) \odot m_t, \qquad
        \log \left| \det \frac{\partial z_t}{\partial z_{t-1}} \right| = \sum_i \log \sigma_{t,i},

    since the Jacobian is triangular. The order of the variables is reversed after every step
    (as in the paper). Built from :class:`pyro.distributions.transforms.ConditionalAffineAutoregressive`
    (``stable=True``) and :class:`pyro.nn.ConditionalAutoRegressiveNN` with one hidden layer of
    ``10 * z_dim`` units (Pyro's default). ``flow_steps`` (``--flow-steps``) defaults to 2.

    Sampling and scoring one's own samples costs one network pass per step; scoring an arbitrary
    :math:`z` (as ``rws`` does) inverts each step with ``z_dim`` sequential passes.
    """

    def make_flow(self, t: int) -> ConditionalTransformModule:
        permutation = torch.arange(self.z_dim) if t % 2 == 0 else torch.arange(self.z_dim - 1, -1, -1)
        # Pyro annotates the permutation as torch.LongTensor, the int64 tensor torch.arange returns
        arn = ConditionalAutoRegressiveNN(self.z_dim, self.context_dim, [10 * self.z_dim],
                                          permutation=permutation)  # type: ignore[arg-type]  # fmt: skip
        return ConditionalAffineAutoregressive(arn, stable=True)


class PlanarParams(nn.Module):
    r"""A linear head :math:`h \mapsto (b, u, w)`: the per-datapoint parameters of one planar step."""

    def __init__(self, context_dim, z_dim):
        super().__init__()
        self.z_dim = z_dim
        self.linear = nn.Linear(context_dim, 1 + 2 * z_dim)

    def forward(self, h):
        out = self.linear(h)
        return out[..., :1], out[..., 1 : 1 + self.z_dim], out[..., 1 + self.z_dim :]


@GUIDES.register("planar")
class PlanarGuide(_FlowGuide):
    r"""Planar normalizing flow (Rezende & Mohamed 2015, Section 4.1), amortized.

    Each step is :math:`z_t = z_{t-1} + \hat u\, \tanh(w^\top z_{t-1} + b)` with
    :math:`(b, u, w)` a linear function of the encoder's hidden vector :math:`h` (the flow's
    parameters are outputs of the inference network, as in the paper), and

    .. math::

        \log \left| \det \frac{\partial z_t}{\partial z_{t-1}} \right|
        = \log \left| 1 + \hat u^\top \psi(z_{t-1}) \right|, \qquad
        \psi(z) = (1 - \tanh^2(w^\top z + b))\, w,

    where :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \lVert w \rVert^2`,
    :math:`m(a) = -1 + \log(1 + e^a)`, keeps the step invertible (the paper's Appendix A).
    Built from :class:`pyro.distributions.transforms.ConditionalPlanar`. ``flow_steps``
    (``--flow-steps``) defaults to 10, the paper's smallest setting.

    A planar step has no closed-form inverse: the guide scores its own samples only, so it cannot
    be trained with ``rws``.
    """

    DEFAULT_FLOW_STEPS = 10

    def make_flow(self, t: int) -> ConditionalTransformModule:
        return ConditionalPlanar(PlanarParams(self.context_dim, self.z_dim))


# Building and checking guides ---------------------------------------------------------------------


def _label(spec):
    if isinstance(spec, str):
        return spec
    if isinstance(spec, type):
        return spec.__name__
    return type(spec).__name__


def guide_class(spec):
    """The guide class a registered name or an import spec (``file.py:Name``, ``module:Name``) names."""
    return resolve_class(spec, GUIDES, "guide", lambda obj: isinstance(obj, type) and issubclass(obj, nn.Module),
                         "a class", "a subclass of pyro_vae.Guide (a torch.nn.Module)")  # fmt: skip


def build_guide(spec, x_dim, z_dim, hidden, activation, check=True, body=None, **options):
    """Build the guide ``spec`` names (a name, import spec, class or instance) and, if ``check``, check it.

    ``x_dim`` is the number of values ``D`` of one item, or the item's shape (e.g. ``(C, H, W)``);
    the guide's constructor receives ``D``. ``body`` is the architecture's encoder body (a module
    ``(B, *x_shape) -> (B, body.out_dim)``, :meth:`pyro_vae.vae.nets.Architecture.encoder`) or ``None``;
    it is passed as the keyword ``body`` to a guide whose constructor takes one (the built-in ones
    do), and such a guide receives items in their shape. A guide without a body (or not taking
    one) and derived from :class:`Guide` receives items flattened to ``(B, D)``.

    ``options`` whose value is ``None`` are left to the guide's defaults; any other option the
    guide's constructor does not accept is a :class:`UserError`.
    """
    x_shape = (int(x_dim),) if isinstance(x_dim, int) else tuple(int(s) for s in x_dim)
    x_dim = math.prod(x_shape)
    label = _label(spec)
    cls = guide_class(spec)
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(cls, type):
        params = accepted_options(cls, options, f"{label} guide")
        if body is not None and "body" in params:
            options = {**options, "body": body}
        try:
            guide = cls(x_dim, z_dim, tuple(hidden), activation, **options)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"could not build the guide {label}: {type(e).__name__}: {e} (a guide's constructor receives "
                "x_dim, z_dim, hidden, activation and its own keyword options; see docs/guides.md)"
            ) from None
    else:
        if options:
            raise UserError(f"guide options {sorted(options)} cannot be applied to an already built guide")
        guide = cls
    if not isinstance(guide, nn.Module):
        raise UserError(f"the guide {label} must be a torch.nn.Module (derive it from pyro_vae.Guide)")
    if isinstance(guide, Guide):
        guide.input_shape = x_shape
        if "body" in options:  # it was given the body: it takes the items as they are
            guide.flatten_input = False
    if check:
        check_guide(guide, x_shape, z_dim, label)
    return guide


def preserved_rng(device):
    """A context in which random draws leave torch's generators (CPU, and ``device``'s if CUDA) as they were."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def check_guide(guide, x_dim, z_dim, label=None, batch=3):
    """Run ``guide`` once on a tiny batch and check the contract; :class:`UserError` on a breach.

    ``x_dim``: the item size ``D`` or the item's shape (the tiny batch is ``(batch, *shape)``).
    Checks that it has parameters, returns a distribution over ``z`` with ``batch_shape (B,)`` and
    ``event_shape (z_dim,)``, and that a draw has shape ``(B, z_dim)`` with a finite log-density of
    shape ``(B,)``. The random number generators are left as they were. Returns the distribution.
    """
    label = label or _label(guide)
    where = f"the guide {label}"
    if not any(True for _ in guide.parameters()):
        raise UserError(
            f"{where} has no learnable parameters: keep its nets as attributes (submodules) of the guide, "
            "not in plain lists or dicts, so that pyro.module('encoder', guide) registers them"
        )
    p = next(guide.parameters())
    shape = (int(x_dim),) if isinstance(x_dim, int) else tuple(x_dim)
    x = torch.full((batch, *shape), 0.5, dtype=p.dtype, device=p.device)
    with preserved_rng(p.device), torch.no_grad():
        try:
            q = guide(x)
        except Exception as e:
            raise UserError(f"{where} failed on a batch of shape {tuple(x.shape)}: {type(e).__name__}: {e}") from None
        if not isinstance(q, torch.distributions.Distribution):
            raise UserError(
                f"{where} returned a {type(q).__name__}, not a distribution: its forward(x) must return a "
                "pyro.distributions distribution from which the VAE samples the site 'z' (missing site 'z')"
            )
        want_batch, want_event = torch.Size([batch]), torch.Size([z_dim])
        if q.event_shape != want_event or q.batch_shape != want_batch:
            hint = " (use .to_event(1) on an elementwise family)" if q.batch_shape == torch.Size([batch, z_dim]) else ""
            raise UserError(
                f"{where} returned a distribution of batch_shape {tuple(q.batch_shape)} and event_shape "
                f"{tuple(q.event_shape)} for a batch of {batch}; the site 'z' needs batch_shape ({batch},) and "
                f"event_shape ({z_dim},){hint}"
            )
        try:
            z = q.rsample() if q.has_rsample else q.sample()
            log_q = q.log_prob(z)
        except Exception as e:
            raise UserError(f"{where} returned a distribution that fails to sample or score: {type(e).__name__}: {e}") from None
        if z.shape != torch.Size([batch, z_dim]) or log_q.shape != want_batch:
            raise UserError(
                f"{where}: a draw of z has shape {tuple(z.shape)} and log q(z|x) shape {tuple(log_q.shape)}; "
                f"expected ({batch}, {z_dim}) and ({batch},)"
            )
        if not torch.isfinite(log_q).all():
            raise UserError(f"{where} gives a non-finite log q(z|x) for its own draws on a constant input")
    return q

