r"""Test-time estimates: the ELBO and the importance-sampled marginal likelihood.

For a datapoint :math:`x` and :math:`K` draws :math:`z_k \sim q_\phi(z \mid x)`, the log importance
weights are :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`. Then

.. math::

    \widehat{\mathcal{L}} = \frac{1}{K} \sum_k \log w_k, \qquad
    \log \hat p_\theta(x) = \log \frac{1}{K} \sum_k w_k
    = \operatorname{logsumexp}_k \log w_k - \log K,

(Rezende et al. 2014, Appendix E; Burda et al. 2015). By Jensen's inequality the second is at
least the first for the same draws, and it converges to :math:`\log p_\theta(x)` as :math:`K \to \infty`.
Both are computed from Pyro traces of the model and guide, vectorized over a ``particles`` plate,
so they hold for any guide and likelihood family.

:func:`evaluate_terms` also splits the ELBO into its two terms (Kingma & Welling 2013, Section 2.2),

.. math::

    \mathcal{L} = \underbrace{\mathbb{E}_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]}_{\text{reconstruction}}
    - \underbrace{\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))}_{\text{kl}},

both estimated from the same :math:`K` draws (so that they add up to the ELBO exactly), and keeps
the posterior means for the count of active units (Burda et al. 2015). :func:`summarize` turns
the scores into nats per item and bits per dimension against the discrete data a family scores
(see :mod:`pyro_vae.vae.likelihoods` for the dequantization bound).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

import pyro
import pyro.poutine as poutine

from ..config import check_integer
from ..errors import UserError

if TYPE_CHECKING:  # for the annotations only
    from .model import VAE

#: upper bound on particles x items x data dimensions held in memory at once
MAX_ELEMENTS = 2**23


def _vectorized(fn, num_particles):
    def wrapped(*args):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args)

    return wrapped


def _site_log_prob(trace):
    """Sum over sample sites of ``log_prob``, keeping the (particles, data) batch dims."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["fn"].log_prob(site["value"])
    return total


@torch.no_grad()
def log_weights(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(num_samples, B)`` log importance weights :math:`\\log p(x, z_k) - \\log q(z_k \\mid x)`."""
    log_lik, log_ratio, _ = log_weight_terms(vae, x, num_samples)
    return log_lik - log_ratio


def evaluate(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, progress: Callable[[int], object] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint ELBO and importance-sampled :math:`\\log p(x)` of each row of ``x``.

    :param vae: a :class:`~pyro_vae.vae.model.VAE` (its nets in eval mode).
    :param torch.Tensor x: ``(N, D)`` data, already prepared for the likelihood.
    :param int num_samples: importance samples :math:`K` per datapoint.
    :param progress: optional callable taking the number of items just finished.
    :returns: ``(elbo, log_px)``, two tensors of shape ``(N,)`` in nats (see :func:`evaluate_terms`
        for the rest of the report).
    """
    scores = evaluate_terms(vae, x, num_samples, progress)
    return scores.elbo, scores.log_px


# The full report: the ELBO's two terms, bits per dimension, active units ---------------------------


@dataclass
class Scores:
    r"""Per-item test scores of a VAE, in nats, on the data as prepared for its likelihood.

    :ivar elbo: :math:`\frac1K\sum_k \log w_k`, the Monte Carlo ELBO, shape ``(N,)``.
    :ivar log_px: :math:`\log\frac1K\sum_k w_k`, the importance-sampled :math:`\log p(x)`, ``(N,)``.
    :ivar reconstruction: :math:`\frac1K\sum_k \log p_\theta(x \mid z_k)`, the expected log-likelihood, ``(N,)``.
    :ivar kl: :math:`\frac1K\sum_k [\log q_\phi(z_k \mid x) - \log p(z_k)]`, the Monte Carlo
        :math:`\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))`, ``(N,)``; ``elbo == reconstruction - kl``. Monte
        Carlo whatever the prior (also where a closed form exists), so that it adds up with the same draws.
    :ivar posterior_mean: :math:`\mathbb{E}_{q_\phi}[z \mid x]`, ``(N, z_dim)`` (exact when the
        guide's distribution has a ``mean``, else the average of the :math:`K` draws).
    :ivar int num_samples: :math:`K`.
    :ivar posterior_mean_noise: the Monte Carlo variance of each entry of ``posterior_mean``,
        ``(N, z_dim)``: 0 for a closed-form mean, else the draws' sample variance over :math:`K`
        (``None`` when unknown).
    """

    elbo: torch.Tensor
    log_px: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    posterior_mean: torch.Tensor
    num_samples: int
    posterior_mean_noise: torch.Tensor | None = None


@torch.no_grad()
def log_weight_terms(vae, x, num_samples):
    r"""The two parts of the log importance weights, each ``(num_samples, B)``, and the draws.

    Returns ``(log_lik, log_ratio, z)``: :math:`\log p_\theta(x \mid z_k)` (the observed sites of
    the model), :math:`\log q_\phi(z_k \mid x) - \log p(z_k)` (the guide's sites minus the model's
    latent sites), and the draws :math:`z_k` of the site ``"z"``, ``(num_samples, B, z_dim)``;
    :math:`\log w_k` is the first minus the second.
    """
    model, guide = _vectorized(vae.model, num_samples), _vectorized(vae.guide, num_samples)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_lik, log_prior = 0.0, 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            lp = site["fn"].log_prob(site["value"])
            if site["is_observed"]:
                log_lik = log_lik + lp
            else:
                log_prior = log_prior + lp
    shape = (num_samples, x.shape[0])
    log_ratio = (_site_log_prob(guide_trace) - log_prior).expand(shape)
    z = guide_trace.nodes["z"]["value"].expand(*shape, -1)
    return log_lik.expand(shape), log_ratio, z


def _prior_elements_per_value(vae, x):
    """What the prior's ``log_prob`` makes per value scored (its distribution's or its module's
    ``elements_per_value``; 0 when it says nothing)."""
    prior = getattr(vae, "prior_module", None)
    if prior is None:
        return 0
    said = getattr(vae.prior(x[:1]), "elements_per_value", None)
    return int(said if said is not None else getattr(prior, "elements_per_value", 0) or 0)


def _posterior_mean(vae, x):
    try:
        return vae.encoder(x).mean
    except NotImplementedError:  # e.g. a normalizing-flow guide: no closed-form mean
        return None


@torch.no_grad()
def evaluate_terms(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, progress: Callable[[int], object] | None = None
) -> Scores:
    """Every per-item score of :class:`Scores` for the rows of ``x``, from ``num_samples`` draws each.

    :param vae: a :class:`~pyro_vae.vae.model.VAE` (its nets in eval mode).
    :param torch.Tensor x: ``(N, D)`` or ``(N, *item_shape)`` data, already prepared for the likelihood.
    :param int num_samples: importance samples :math:`K` per datapoint.
    :param progress: optional callable taking the number of items just finished.
    :rtype: Scores
    :raises UserError: for ``x`` that is not a tensor of items of the model's size, or ``num_samples`` below 1.
    """
    num_samples = check_integer(num_samples, "--samples", 1)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != getattr(vae, "x_dim", math.prod(x.shape[1:])):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"the model scores a tensor of items of {getattr(vae, 'x_dim', '?')} values, shape (N, ...); "
                        f"got {shape}")  # fmt: skip
    fixed = vae.fixed_prior() if hasattr(vae, "fixed_prior") else contextlib.nullcontext()
    with fixed:
        return _evaluate_terms(vae, x, num_samples, progress)


def _evaluate_terms(vae, x, num_samples, progress):
    n, d = x.shape[0], math.prod(x.shape[1:])
    # a mixture prior's log_prob makes up to (..., K, z_dim) per value: size the chunks by the larger
    d = max(d, _prior_elements_per_value(vae, x))
    particles = max(1, min(num_samples, MAX_ELEMENTS // max(d, 1)))
    items = max(1, MAX_ELEMENTS // (particles * max(d, 1)))
    names = ("elbo", "log_px", "reconstruction", "kl", "posterior_mean", "posterior_mean_noise")
    parts = {name: [] for name in names}
    for start in range(0, n, items):
        batch = x[start : start + items]
        zeros = torch.zeros(batch.shape[0], dtype=x.dtype, device=x.device)
        sum_lik, sum_ratio, lse = zeros.clone(), zeros.clone(), torch.full_like(zeros, -math.inf)
        sum_z = sum_z2 = 0.0
        done = 0
        while done < num_samples:
            k = min(particles, num_samples - done)
            log_lik, log_ratio, z = log_weight_terms(vae, batch, k)
            sum_lik += log_lik.sum(0)
            sum_ratio += log_ratio.sum(0)
            lse = torch.logaddexp(lse, (log_lik - log_ratio).logsumexp(0))
            sum_z = sum_z + z.sum(0)
            sum_z2 = sum_z2 + z.pow(2).sum(0)
            done += k
        mean = _posterior_mean(vae, batch)
        parts["reconstruction"].append(sum_lik / num_samples)
        parts["kl"].append(sum_ratio / num_samples)
        parts["elbo"].append((sum_lik - sum_ratio) / num_samples)
        parts["log_px"].append(lse - math.log(num_samples))
        if mean is not None:
            parts["posterior_mean"].append(mean)
            parts["posterior_mean_noise"].append(torch.zeros_like(mean))
        else:  # the average of the K draws, whose own variance is Var(z | x) / K
            mean = sum_z / num_samples
            var = (sum_z2 / num_samples - mean**2).clamp(min=0) * num_samples / max(num_samples - 1, 1)
            parts["posterior_mean"].append(mean)
            parts["posterior_mean_noise"].append(var / num_samples)  # 0 for K = 1: no estimate, no correction
        if progress is not None:
            progress(batch.shape[0])
    return Scores(**{name: torch.cat(p) for name, p in parts.items()}, num_samples=num_samples)


#: Burda et al. (2015), Section 5.2: a latent unit is active when the variance of its posterior mean exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(posterior_mean, threshold=ACTIVE_UNIT_THRESHOLD, noise=None):
    r"""The number of active latent units (Burda et al. 2015): those :math:`j` with
    :math:`A_j = \mathrm{Var}_x\!\left(\mathbb{E}_{q_\phi(z \mid x)}[z_j]\right) > 0.01`,
    the variance taken over the items (rows) of ``posterior_mean`` (``(N, z_dim)``).
    An inactive unit's posterior is the same for every input: the model does not use it.

    When the means are Monte Carlo averages, their noise adds its own variance over the items;
    ``noise`` (``(N, z_dim)``, each estimate's variance) is then subtracted, item-averaged, so that
    a collapsed unit is not counted as active because of sampling noise alone."""
    if posterior_mean.shape[0] < 2:
        return 0
    spread = posterior_mean.var(0, unbiased=True)
    if noise is not None:
        spread = spread - noise.mean(0)
    return int((spread > threshold).sum())


def bits_per_dim(log_p, x_dim):
    r"""Nats per item -> bits per dimension: :math:`-\log_2 P(x) / D = -\log P(x) / (D \ln 2)`."""
    return -log_p / (x_dim * math.log(2))


def summarize(scores, likelihood, x_dim):
    r"""A JSON-ready dict of the means over items of ``scores`` for a VAE with ``likelihood``.

    Keys: ``test_elbo``, ``test_log_likelihood`` (nats per item on the data as prepared, so a
    density's score on dequantized data), ``reconstruction`` and ``kl`` (the ELBO's two terms,
    ``test_elbo == reconstruction - kl``; ``kl_estimate`` says that the KL is the Monte Carlo estimate
    from the same draws, for every prior), ``discrete_test_elbo`` and ``discrete_test_log_likelihood``
    (the same minus :meth:`~pyro_vae.vae.likelihoods.Likelihood.dequantization_nats`: nats against the
    discrete data of ``scored_data``; equal to the first two for a pmf), ``bits_per_dim`` and
    ``elbo_bits_per_dim`` (from those, :func:`bits_per_dim`; ``None`` on continuous data), ``active_units``,
    ``log_likelihood_sem`` (the standard error of the mean log-likelihood over items), ``samples``
    and ``items``, and ``scored_data``, ``representation``, ``levels``, ``dequantization_nats`` saying
    which data the numbers are about.

    For a density on data dequantized as :math:`(k + u)/L`, ``discrete_test_log_likelihood`` is
    :math:`\log \hat p_K(y) - D \log L` for one fixed draw :math:`y` of the test set: an estimate,
    unbiased for :math:`\mathbb{E}_u \mathbb{E}_z[\log \hat p_K((k + u)/L)] - D \log L`, which lower-bounds
    :math:`\log P(k)`.
    """
    n = scores.elbo.shape[0]
    offset = likelihood.dequantization_nats(x_dim)
    elbo, log_px = scores.elbo.mean().item(), scores.log_px.mean().item()
    on_levels = likelihood.scored_data() != "continuous"
    return {
        "test_elbo": elbo,
        "test_log_likelihood": log_px,
        "reconstruction": scores.reconstruction.mean().item(),
        "kl": scores.kl.mean().item(),
        "kl_estimate": f"monte carlo, {scores.num_samples} draws per item",
        "discrete_test_elbo": elbo - offset if on_levels else None,
        "discrete_test_log_likelihood": log_px - offset if on_levels else None,
        "bits_per_dim": bits_per_dim(log_px - offset, x_dim) if on_levels else None,
        "elbo_bits_per_dim": bits_per_dim(elbo - offset, x_dim) if on_levels else None,
        "active_units": active_units(scores.posterior_mean, noise=scores.posterior_mean_noise),
        "log_likelihood_sem": (scores.log_px.std().item() / math.sqrt(n)) if n > 1 else None,
        "samples": scores.num_samples,
        "items": n,
        "scored_data": likelihood.scored_data(),
        "representation": likelihood.representation(),
        "levels": likelihood.levels if likelihood.discrete or on_levels else None,
        "dequantization_nats": offset,
    }
