r"""Weighting the KL term: beta-VAE, KL warm-up and free bits, the Pyro way.

The ELBO of one datapoint (Kingma & Welling 2013, eq. 3) is a reconstruction term minus a KL term,

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]
    - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big).

Three ways of weighting the KL term are used in practice; none of them is a bound on
:math:`\log p_\theta(x)` for a weight other than 1, so a run's metrics and ``evaluate`` must keep
reporting the true ELBO (weight 1) and :math:`\log p(x)`:

- **beta-VAE** (Higgins et al. 2017, ``--beta B``): :math:`\mathbb{E}_q[\log p_\theta(x \mid z)] - \beta\,\mathrm{KL}`.
  For :math:`\beta > 1` it is below the ELBO (still a lower bound on :math:`\log p_\theta(x)`) and
  trades reconstruction for a posterior closer to the prior; for :math:`\beta < 1` it is above the
  ELBO and no longer a bound.
- **KL warm-up** (Bowman et al. 2016, "KL cost annealing"; Sønderby et al. 2016, "warm-up",
  ``--kl-warmup EPOCHS``): the weight grows linearly from 0 to :math:`\beta` over the first
  ``EPOCHS`` epochs, per step (:class:`KLSchedule`), to keep latent units from collapsing early.
- **free bits** (Kingma et al. 2016, IAF paper, eq. 13 of the appendix; ``--free-bits LAMBDA``):
  the KL of each latent unit :math:`j`, averaged over the minibatch, is not penalized below
  :math:`\lambda` nats:

  .. math::

      \widetilde{\mathcal{L}}_\lambda = \mathbb{E}_{x \sim \mathcal{M}}\Big[\mathbb{E}_q \log p_\theta(x \mid z)\Big]
      - \sum_{j=1}^{d} \max\Big(\lambda,\ \mathbb{E}_{x \sim \mathcal{M}}\big[\mathrm{KL}(q_\phi(z_j \mid x) \,\|\, p(z_j))\big]\Big).

**beta and warm-up as a Pyro scale.** The model and the guide both sample the latent site ``"z"``;
:class:`ScaleSites` (:func:`pyro.poutine.scale` restricted to named sites) multiplies the site's
``scale`` by the weight :math:`w` in both. Pyro scales each site's ``log_prob`` by its scale, so

- :class:`~pyro.infer.Trace_ELBO` (``elbo``, estimator A) computes
  :math:`\log p_\theta(x \mid z) + w \log p(z) - w \log q_\phi(z \mid x) = \log p_\theta(x \mid z) - w\,(\log q - \log p)`,
  :math:`w` times the single-sample KL estimate;
- :class:`~pyro.infer.TraceMeanField_ELBO` (``elbo-analytic``, estimator B) computes the closed-form
  KL and multiplies it by the *guide* site's scale (``scale_and_mask(kl_qp, scale=guide_site["scale"])``
  in ``pyro/infer/trace_mean_field_elbo.py``, Pyro 1.9), i.e. :math:`w\,\mathrm{KL}`.

``tests/vae/test_kl_weighting.py`` checks both against direct computations. For ``iwae`` and ``rws``
a weighted KL is not a defined objective (the importance weights :math:`p(x, z)/q(z \mid x)` do
not split into a reconstruction and a KL term), so :meth:`KLWeighting.check` refuses them.

**The weight is a tensor, updated in place.** :class:`KLWeight` holds a 0-dim tensor on the
model's device that the scale messenger multiplies into the site's scale at every step; the
schedule changes it with ``fill_`` between steps. pyro_vae's fast path captures the loss graph
once per batch shape (:class:`pyro_vae.speed.CapturedLoss`, ``make_fx``): a real tensor that is
not an input is referenced by the graph as a constant *by identity* (as the parameters are), so an
in-place change is seen by every replay, with no re-capture (a capture costs a trace and a
verification run) and no host read. A Python float would have been baked into the graph at
capture. On CUDA the tensor must live on the device (:meth:`KLWeight.to`): CUDA graphs would also
freeze a CPU scalar.

**Free bits** cannot be written as a scale (the max is over minibatch averages):
:class:`FreeBitsELBO` is a :class:`~pyro.infer.Trace_ELBO` whose KL term for the latent site is
computed per unit. It needs a guide and a prior that factorize over latent units (``diagonal`` and
``standard``; the learned priors of :mod:`pyro_vae.vae.priors` do not, and are refused): with
``elbo-analytic`` the per-unit KL is the closed form
:math:`\mathrm{KL}_{ij} = \log\frac{1}{\sigma_{ij}} + \frac{\sigma_{ij}^2 + \mu_{ij}^2 - 1}{2}` (the
paper's Appendix B, per unit), with ``elbo`` the single-sample estimate
:math:`\log q(z_{ij} \mid x_i) - \log p(z_{ij})` of each unit. The weight :math:`w` (beta and
warm-up) multiplies the free-bits KL term too.
"""

import math

import torch
from torch.distributions import Independent, kl_divergence

from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.util import warn_if_nan

from ..errors import UserError
from .guides import preserved_rng


class KLSchedule:
    r"""The weight :math:`w_t` of the KL term at each training step.

    .. math::

        w_t = \beta \cdot \min\Big(1, \frac{t - 1}{E \cdot S}\Big), \qquad
        t = (\text{epoch} - 1)\, S + \text{step},

    for a warm-up of :math:`E` epochs of :math:`S` steps (Bowman et al. 2016; Sønderby et al. 2016),
    and :math:`w_t = \beta` without warm-up. The first step has weight 0 and the first step after
    the warm-up epochs has weight :math:`\beta` exactly.

    :param float beta: the final weight :math:`\beta \ge 0` (Higgins et al. 2017; 1 is the ELBO).
    :param float warmup_epochs: :math:`E \ge 0` epochs of linear warm-up (0: none).
    """

    def __init__(self, beta=1.0, warmup_epochs=0):
        beta, warmup_epochs = _number(beta, "--beta"), _number(warmup_epochs, "--kl-warmup")
        if beta < 0:
            raise UserError(f"--beta must be at least 0, got {beta:g}")
        if warmup_epochs < 0:
            raise UserError(f"--kl-warmup must be at least 0 epochs, got {warmup_epochs:g}")
        self.beta, self.warmup_epochs = beta, warmup_epochs

    @property
    def constant(self):
        """Whether the weight is the same at every step (no warm-up)."""
        return self.warmup_epochs == 0

    def weight(self, epoch, step, steps_per_epoch):
        """The weight at ``step`` (counted from 1) of ``epoch`` (counted from 1), as training counts them."""
        if self.constant:
            return self.beta
        t = (epoch - 1) * steps_per_epoch + step
        return self.beta * min(1.0, (t - 1) / (self.warmup_epochs * steps_per_epoch))

    def __repr__(self):
        return f"KLSchedule(beta={self.beta:g}, warmup_epochs={self.warmup_epochs:g})"


def _number(value, flag):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{flag} must be finite, got {value}")
    return value


class KLWeight:
    """A mutable weight read at every step: a 0-dim tensor changed in place by :meth:`set`.

    :param float value: the initial weight.
    """

    def __init__(self, value=1.0, device=None, dtype=torch.get_default_dtype()):
        self.tensor = torch.tensor(float(value), device=device, dtype=dtype)

    def set(self, value):
        """Change the weight in place (seen by captured graphs; on CUDA, no host synchronization)."""
        with torch.no_grad():
            self.tensor.fill_(float(value))
        return self

    def to(self, device=None, dtype=None):
        """Move the weight (before the first step: a captured graph keeps the tensor it saw)."""
        self.tensor = self.tensor.to(device=device, dtype=dtype or self.tensor.dtype)
        return self

    def __float__(self):
        return float(self.tensor)

    def __repr__(self):
        return f"KLWeight({float(self):g})"


class ScaleSites(Messenger):
    """:func:`pyro.poutine.scale` for the sample sites called ``sites`` only, by a :class:`KLWeight`.

    Unlike :class:`~pyro.poutine.scale_messenger.ScaleMessenger` it reads the weight's tensor at each
    site (so it can change between steps), and it allows a weight of 0 (the first warm-up step).
    """

    def __init__(self, weight, sites=("z",)):
        super().__init__()
        self.weight, self.sites = weight, frozenset(sites)

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites:
            msg["scale"] = self.weight.tensor * msg["scale"]


def scale_sites(fn, weight, sites=("z",)):
    """``fn`` (a model or guide) with the log-densities of ``sites`` multiplied by ``weight``."""

    def scaled(*args, **kwargs):
        with ScaleSites(weight, sites):
            return fn(*args, **kwargs)

    scaled.__name__ = getattr(fn, "__name__", "scaled")
    scaled.__wrapped__ = fn
    return scaled


# Free bits ------------------------------------------------------------------------------------
def _per_unit(d):
    """The univariate base of a distribution that factorizes over the units of a 1-dim event, or None."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and d.base_dist.event_shape == ():
        return d.base_dist
    return None


def per_unit_kl(q, p, z=None):
    r"""The KL of each latent unit: shape ``batch_shape + (d,)``.

    With ``z=None`` the closed form :math:`\mathrm{KL}(q(z_j \mid x) \,\|\, p(z_j))`; with a draw
    ``z`` from ``q`` the single-sample estimate :math:`\log q(z_j \mid x) - \log p(z_j)`. Raises
    :class:`NotImplementedError` when ``q`` or ``p`` does not factorize over units (or, for the
    closed form, when torch has none).
    """
    q_unit, p_unit = _per_unit(q), _per_unit(p)
    if q_unit is None or p_unit is None:
        raise NotImplementedError(f"{type(q).__name__} does not factorize over latent units")
    if z is None:
        return kl_divergence(q_unit, p_unit)
    return q_unit.log_prob(z) - p_unit.log_prob(z)


class FreeBitsELBO(Trace_ELBO):
    r"""The free-bits objective of Kingma et al. (2016) for the latent site ``site``, as a Pyro ELBO.

    For a minibatch of :math:`B` datapoints and :math:`K` particles (vectorized or not), with
    :math:`\overline{\mathrm{KL}}_j` the per-unit KL (:func:`per_unit_kl`) averaged over datapoints
    and particles, and :math:`w` the latent site's scale (the :class:`KLWeight` of beta and warm-up,
    1 otherwise), the loss is

    .. math::

        -\frac1K \sum_k \sum_i \log p_\theta(x_i \mid z_{ik}) + w\, B \sum_j \max(\lambda, \overline{\mathrm{KL}}_j),

    the negative of :math:`B` times the per-datapoint objective in the docstring of
    :mod:`pyro_vae.vae.kl_weighting`, in the units of Pyro's losses (a sum over the minibatch). Other
    sample sites enter as in :class:`~pyro.infer.Trace_ELBO` (every guide site must be
    reparameterized). The value returned by :meth:`loss_and_grads` is a detached tensor (no host read).

    :param float free_bits: :math:`\lambda \ge 0`, nats per latent unit.
    :param bool analytic: the closed-form per-unit KL (estimator B, ``elbo-analytic``) instead of
        the single-sample estimate (estimator A, ``elbo``).
    :param str site: the latent site.
    """

    def __init__(self, free_bits, analytic=False, site="z", **kwargs):
        super().__init__(**kwargs)
        self.free_bits, self.analytic, self.site = float(free_bits), bool(analytic), site

    def differentiable_loss(self, model, guide, *args, **kwargs):
        reconstruction, kl_sum, count, n_data, scale = 0.0, 0.0, 0, None, None
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            for name, site in model_trace.nodes.items():
                if site["type"] == "sample" and name != self.site:
                    reconstruction = reconstruction + site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample" and name != self.site:
                    reconstruction = reconstruction - site["log_prob_sum"]
            q_site, p_site = guide_trace.nodes[self.site], model_trace.nodes[self.site]
            kl = per_unit_kl(q_site["fn"], p_site["fn"], None if self.analytic else q_site["value"])
            n_data, scale = kl.shape[-2], q_site["scale"]
            kl_sum = kl_sum + kl.reshape(-1, kl.shape[-1]).sum(0)
            count += kl[..., 0].numel()
        kl_unit = kl_sum / count  # (d,): each unit's KL averaged over datapoints and particles
        kl_term = n_data * kl_unit.clamp(min=self.free_bits).sum()
        loss = -reconstruction / self.num_particles + scale * kl_term
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.detach()


# What training uses ---------------------------------------------------------------------------
class KLWeighting:
    r"""``--beta``, ``--kl-warmup`` and ``--free-bits`` for one run: the loss, the wrapped model and guide, the weight.

    Training uses it as::

        kl = KLWeighting(beta=config.beta, warmup_epochs=config.kl_warmup,
                         free_bits=config.free_bits).check(objective, vae)
        loss = kl.build_loss(objective)                     # objective.build(), or a FreeBitsELBO
        model, guide = kl.wrap(vae.model, vae.guide)        # the VAE's own, unchanged, when inactive
        step = SVIStep(model, guide, loss, optim, speed, to_scalar=objective.training_loss)
        for each step (epoch and step counted from 1):
            kl.update(epoch, step, steps_per_epoch)         # before the step; 0-dim tensor changed in place
            step(x)

    Metrics and ``evaluate`` use ``vae.model`` and ``vae.guide`` (weight 1), so they report the
    true ELBO. With beta 1, no warm-up and no free bits (:attr:`active` False) nothing is wrapped
    and the loss is the objective's own.

    :param float beta: :math:`\beta` (:class:`KLSchedule`).
    :param float warmup_epochs: epochs of linear warm-up from 0 to :math:`\beta`.
    :param float free_bits: :math:`\lambda` nats per latent unit (0: none).
    :param str site: the latent site (the VAE's is ``"z"``).
    """

    def __init__(self, beta=1.0, warmup_epochs=0, free_bits=0.0, site="z"):
        self.schedule = KLSchedule(beta, warmup_epochs)
        self.free_bits = _number(free_bits, "--free-bits")
        if self.free_bits < 0:
            raise UserError(f"--free-bits must be at least 0 nats, got {self.free_bits:g}")
        self.site = site
        self.weight = KLWeight(self.schedule.weight(1, 1, 1))

    @property
    def active(self):
        """Whether the training objective differs from the plain one."""
        return not (self.schedule.beta == 1 and self.schedule.constant and self.free_bits == 0)

    @property
    def scaled(self):
        """Whether the latent site is scaled (beta or warm-up)."""
        return not (self.schedule.beta == 1 and self.schedule.constant)

    def _flags(self):
        flags = []
        if self.schedule.beta != 1:
            flags.append("--beta")
        if not self.schedule.constant:
            flags.append("--kl-warmup")
        if self.free_bits:
            flags.append("--free-bits")
        return " and ".join(flags)

    def check(self, objective, vae):
        """Refuse, with a :class:`UserError`, an objective or guide where the weighting is not defined.

        Moves the weight to ``vae``'s device and dtype. Returns ``self``.
        """
        p = next(vae.parameters())
        self.weight.to(p.device, p.dtype)
        if not self.active:
            return self
        name = objective.name
        if not getattr(objective, "kl_weighting", False):
            raise UserError(
                f"{self._flags()} weight the KL term of the ELBO, which the {name} objective does not have "
                "(its importance weights p(x, z)/q(z|x) do not split into reconstruction and KL); "
                "use --objective elbo or elbo-analytic"
            )
        if self.free_bits:
            self._check_factorized(objective, vae)
        return self

    def _check_factorized(self, objective, vae):
        x = torch.zeros(2, *getattr(vae, "x_shape", (vae.x_dim,)), device=next(vae.parameters()).device)
        with preserved_rng(x.device), torch.no_grad():
            q = vae.encoder(x)
            p = vae.prior(x).expand(q.batch_shape)
            if _per_unit(q) is not None and _per_unit(p) is None:
                prior = getattr(getattr(vae, "prior_module", None), "name", type(p).__name__)
                raise UserError(
                    f"--free-bits needs the KL of each latent unit, but the {prior} prior's {type(p).__name__} does not "
                    "factorize over units, so no per-unit KL exists (free bits is defined per unit, Kingma et al. "
                    "2016); use --prior standard with free bits, or --beta / --kl-warmup with this prior"
                )
            try:
                per_unit_kl(q, p, None if getattr(objective, "analytic_kl", False) else q.sample())
            except NotImplementedError:
                raise UserError(
                    f"--free-bits needs the KL of each latent unit, but the guide's {type(q).__name__} does not "
                    "factorize over units (free bits is defined per unit, Kingma et al. 2016); "
                    "use the diagonal guide"
                ) from None

    def build_loss(self, objective):
        """The Pyro loss: ``objective.build()``, or a :class:`FreeBitsELBO` with the objective's particles."""
        if not self.free_bits:
            return objective.build()
        return FreeBitsELBO(self.free_bits, analytic=getattr(objective, "analytic_kl", False), site=self.site,
                            num_particles=objective.particles, vectorize_particles=objective.particles > 1,
                            max_plate_nesting=1)  # fmt: skip

    def wrap(self, model, guide):
        """``(model, guide)`` with the latent site scaled by the weight (unchanged when not :attr:`scaled`)."""
        if not self.scaled:
            return model, guide
        return scale_sites(model, self.weight, (self.site,)), scale_sites(guide, self.weight, (self.site,))

    def update(self, epoch, step, steps_per_epoch):
        """Set the weight for ``step`` of ``epoch`` (both counted from 1); returns it as a float."""
        w = self.schedule.weight(epoch, step, steps_per_epoch)
        if not self.schedule.constant:
            self.weight.set(w)
        return w
