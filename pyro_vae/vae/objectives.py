r"""Training objectives: estimators of (bounds on) :math:`\log p_\theta(x)` for :class:`pyro.infer.SVI`.

Each objective is one class in the :data:`OBJECTIVES` registry (``--objective NAME``) whose
:meth:`Objective.build` returns the Pyro loss that SVI minimizes, with ``particles`` draws per
datapoint (``--particles K``) vectorized over a particle plate. For a datapoint :math:`x`, draws
:math:`z_k \sim q_\phi(z \mid x)` and :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`:

- ``elbo`` (default): estimator A of Kingma & Welling (2013), eq. 6, Pyro's
  :class:`~pyro.infer.Trace_ELBO`: :math:`\widetilde{\mathcal{L}}^A = \frac1K \sum_k \log w_k`.
- ``elbo-analytic``: estimator B, eq. 7, Pyro's :class:`~pyro.infer.TraceMeanField_ELBO`:
  :math:`\widetilde{\mathcal{L}}^B = -\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z)) + \frac1K \sum_k \log p_\theta(x \mid z_k)`,
  with the KL in closed form. Same expectation as A, lower variance. Only for a guide and prior
  whose KL has a closed form (``diagonal`` or ``full-rank`` with the ``standard`` prior); Pyro would
  silently fall back to sampling for others, so we refuse them, naming the pair.
- ``iwae``: the importance weighted bound of Burda, Grosse & Salakhutdinov (2015), Pyro's
  :class:`~pyro.infer.RenyiELBO` with :math:`\alpha = 0`:
  :math:`\mathcal{L}_K = \mathbb{E}\big[\log \frac1K \sum_k w_k\big]`, with
  :math:`\mathcal{L}_1 = \mathcal{L} \le \mathcal{L}_K \le \mathcal{L}_{K+1} \le \log p_\theta(x)`.
- ``rws``: reweighted wake-sleep (Bornschein & Bengio 2015), the wake-sleep comparator of the
  paper's Section 5, from :class:`pyro.infer.ReweightedWakeSleep`; see :class:`RWS`.

Objectives that differentiate through the sample (all but ``rws``) refuse a guide without
``rsample``.

Whatever the objective, the per-epoch test metric is the one-particle ELBO and ``evaluate``
reports the importance-sampled :math:`\log p(x)` (:mod:`pyro_vae.vae.evaluation`), so runs compare.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.distributions import kl_divergence

from pyro.infer import ELBO as PyroELBO
from pyro.infer import RenyiELBO, ReweightedWakeSleep, Trace_ELBO, TraceMeanField_ELBO
from pyro.util import warn_if_nan

from ..errors import UserError
from ..registry import Registry
from . import kl  # noqa: F401  (registers the closed-form KL of the full-rank guide)
from .guides import check_guide, preserved_rng

if TYPE_CHECKING:  # for the annotations only: the model imports nothing from here
    from .model import VAE

OBJECTIVES = Registry("objective")


class Objective:
    """Base class: :meth:`build` returns the Pyro loss object that :class:`~pyro.infer.SVI` minimizes.

    :param int particles: draws :math:`K` per datapoint (vectorized).

    Subclasses set :attr:`needs_rsample` and :attr:`min_particles`, and may override :meth:`check_distribution`
    (further requirements on the guide) and :meth:`training_loss` (what ``svi.step`` returns -> one float).
    """

    #: whether the estimator differentiates through :math:`z = g_\phi(\epsilon, x)`
    #: the registered name (set by :data:`OBJECTIVES`)
    name: str
    needs_rsample = True
    #: smallest number of particles the estimator is defined for
    min_particles = 1
    #: whether the estimate splits into reconstruction and KL, so that the KL can be weighted
    #: (``--beta``, ``--kl-warmup``, ``--free-bits``: :mod:`pyro_vae.vae.kl_weighting`)
    kl_weighting = False
    #: whether the KL term is in closed form (free bits then uses the closed-form KL of each unit)
    analytic_kl = False

    def __init__(self, particles: int = 1) -> None:
        self.particles = int(particles)
        if self.particles < self.min_particles:
            raise UserError(
                f"the {self.name} objective needs --particles of at least {self.min_particles}, got {self.particles}"
                + (" (with one particle it is the ELBO: use --objective elbo)" if self.min_particles == 2 else "")
            )

    def build(self) -> PyroELBO:
        raise NotImplementedError

    def check(self, vae: VAE) -> Objective:
        """Refuse, with a :class:`UserError`, a guide this estimator cannot use. Returns ``self``."""
        q = check_guide(vae.encoder, getattr(vae, "encoder_input_shape", getattr(vae, "x_shape", vae.x_dim)), vae.z_dim)
        if self.needs_rsample and not q.has_rsample:
            raise UserError(
                f"the {self.name} objective needs a reparameterized guide (z = g(eps, x), has_rsample), but the "
                f"guide's {type(q).__name__} has no rsample; use a reparameterizable family or --objective rws"
            )
        self.check_distribution(q, vae)
        return self

    def check_distribution(self, q: torch.distributions.Distribution, vae: VAE) -> None:
        """Further requirements on a distribution ``q`` the guide returned for a tiny batch."""

    def training_loss(self, step_value: Any) -> float | torch.Tensor:
        """The float the training loop records from ``svi.step``: an estimate of :math:`-\\sum_i \\text{bound}(x_i)`."""
        return step_value

    def _vectorize(self):
        return self.particles > 1


@OBJECTIVES.register("elbo")
class ELBO(Objective):
    """Estimator A: the Monte Carlo ELBO (``Trace_ELBO``)."""

    kl_weighting = True

    def build(self):
        return Trace_ELBO(num_particles=self.particles, vectorize_particles=self._vectorize(), max_plate_nesting=1)


@OBJECTIVES.register("elbo-analytic")
class AnalyticELBO(Objective):
    """Estimator B: analytic KL plus Monte Carlo reconstruction (``TraceMeanField_ELBO``).

    :meth:`check` refuses a guide whose KL to the prior has no closed form, for which Pyro would
    silently estimate the KL by sampling (making this estimator A again).
    """

    kl_weighting = True
    analytic_kl = True

    def build(self):
        return TraceMeanField_ELBO(num_particles=self.particles, vectorize_particles=self._vectorize(), max_plate_nesting=1)

    def check_distribution(self, q, vae):
        p = vae.prior(next(vae.encoder.parameters())).expand(q.batch_shape)
        try:
            with torch.no_grad():
                kl_divergence(q, p)
        except NotImplementedError:
            prior = getattr(getattr(vae, "prior_module", None), "name", "standard")
            fix = ("use --objective elbo, or a diagonal or full-rank guide" if prior == "standard"
                   else "use --objective elbo (the Monte Carlo KL), or --prior standard")  # fmt: skip
            raise UserError(
                f"the elbo-analytic objective needs a closed-form KL(q || p), which the pair of the guide's "
                f"{type(q).__name__} and the {prior} prior's {type(p).__name__} does not have (Pyro would silently "
                f"fall back to sampling, i.e. to the elbo objective); {fix}"
            ) from None


@OBJECTIVES.register("iwae")
class IWAE(Objective):
    """The importance weighted bound with ``particles`` samples (``RenyiELBO(alpha=0)``).

    Pyro keeps the data plate outside the log-sum-exp (plates common to all sites are independent
    dimensions), so the bound is per datapoint, :math:`\\sum_i \\log \\frac1K \\sum_k w_{ik}`, as in
    Burda et al. (2015); ``tests/vae/test_objectives.py`` checks this against a direct computation.
    """

    min_particles = 2

    def build(self):
        return RenyiELBO(alpha=0, num_particles=self.particles, vectorize_particles=True, max_plate_nesting=1)


class PerDatapointRWS(ReweightedWakeSleep):
    r"""Pyro's :class:`~pyro.infer.ReweightedWakeSleep` with one importance weight per datapoint.

    Pyro's implementation sums each site's log-density over everything but the particle dimension
    (``log_prob.reshape(num_particles, -1).sum(-1)``), i.e. it treats the whole minibatch as *one*
    observation with one weight :math:`\log W_k = \sum_i \log w_{ik}` per particle: the bound
    :math:`\log \frac1K \sum_k \prod_i w_{ik}` of the joint :math:`p(x_1, \dots, x_B)`, much looser
    than the per-datapoint bound for :math:`B \gg 1` and with weights degenerating to the single
    particle of highest joint weight (this is what its docstring means by "mini-batch training is
    not supported"). Here the data plate (``dim=-1``) is kept:

    .. math::

        \text{wake-}\theta:\ -\sum_i \log \frac1K \sum_k w_{ik}, \qquad
        \text{wake-}\phi:\ -\sum_i \sum_k \bar w_{ik} \log q_\phi(z_{ik} \mid x_i), \quad
        \bar w_{ik} = \frac{w_{ik}}{\sum_{k'} w_{ik'}} \ (\text{held constant}),

    exactly Bornschein & Bengio's per-example estimators, with draws :math:`z_{ik}` detached (no
    reparameterization needed). Sleep-:math:`\phi` (``insomnia < 1``) is not offered: it would need
    the guide to take the observations as a keyword, which the VAE's guide does not.
    """

    def _loss(self, model, guide, args, kwargs):
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        log_joint, log_q = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_joint = log_joint + site["log_prob"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                log_q = log_q + site["log_prob"]
        log_weights = (log_joint - log_q.detach()).reshape(self.num_particles, -1)  # (K, B)
        log_q = log_q.reshape(self.num_particles, -1)
        log_sum_weight = torch.logsumexp(log_weights, dim=0)
        wake_theta_loss = -(log_sum_weight - math.log(self.num_particles)).sum()
        warn_if_nan(wake_theta_loss, "wake theta loss")
        normalised_weights = (log_weights - log_sum_weight).exp().detach()
        wake_phi_loss = -(normalised_weights * log_q).sum()
        warn_if_nan(wake_phi_loss, "wake phi loss")
        return wake_theta_loss, wake_phi_loss


@OBJECTIVES.register("rws")
class RWS(Objective):
    r"""Reweighted wake-sleep (Bornschein & Bengio 2015) with ``particles`` samples per datapoint.

    The decoder follows the IWAE gradient of :math:`\mathcal{L}_K` (wake-:math:`\theta`); the
    encoder minimizes the self-normalized importance-sampled :math:`\mathrm{KL}(p \,\|\, q)`
    (wake-:math:`\phi`), not the ELBO, so it does not need a reparameterized guide. Minibatches get
    one weight per datapoint (:class:`PerDatapointRWS`). ``svi.step`` returns the pair
    (wake-:math:`\theta` loss, wake-:math:`\phi` loss); the training loss recorded is the first, the
    negative IWAE bound :math:`-\sum_i \mathcal{L}_K(x_i)` of the batch.

    The guide must score fixed draws (``log_prob`` of a value it did not just sample): the planar
    guide cannot (planar steps have no inverse) and is refused.
    """

    needs_rsample = False
    min_particles = 2

    def build(self):
        return PerDatapointRWS(num_particles=self.particles, vectorize_particles=True, max_plate_nesting=1)

    def check_distribution(self, q, vae):
        with preserved_rng(next(vae.encoder.parameters()).device), torch.no_grad():
            z = q.sample()
            try:
                q.log_prob(z.clone())
            except Exception as e:
                raise UserError(
                    "the rws objective scores fixed (detached) draws of z, but this guide can only score the draws it "
                    f"just made ({type(e).__name__}: {e}); use --objective elbo or iwae with it, or a guide with an "
                    "inverse (diagonal, full-rank, iaf)"
                ) from None

    def training_loss(self, step_value):
        wake_theta_loss, _ = step_value
        return wake_theta_loss


def build_objective(config, vae):
    """The :class:`Objective` a :class:`~pyro_vae.config.Config` names, checked against ``vae``'s guide."""
    cls = OBJECTIVES.get(config.objective)
    return cls(particles=config.particles).check(vae)
