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
"""

import math

import torch

import pyro
import pyro.poutine as poutine

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
def log_weights(vae, x, num_samples):
    """``(num_samples, B)`` log importance weights :math:`\\log p(x, z_k) - \\log q(z_k \\mid x)`."""
    model, guide = _vectorized(vae.model, num_samples), _vectorized(vae.guide, num_samples)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = _site_log_prob(model_trace) - _site_log_prob(guide_trace)
    return log_w.expand(num_samples, x.shape[0])


@torch.no_grad()
def evaluate(vae, x, num_samples=1000, progress=None):
    """Per-datapoint ELBO and importance-sampled :math:`\\log p(x)` of each row of ``x``.

    :param vae: a :class:`~pyro_vae.model.VAE` (its nets in eval mode).
    :param torch.Tensor x: ``(N, D)`` data, already prepared for the likelihood.
    :param int num_samples: importance samples :math:`K` per datapoint.
    :param progress: optional callable taking the number of items just finished.
    :returns: ``(elbo, log_px)``, two tensors of shape ``(N,)`` in nats.
    """
    n, d = x.shape
    particles = max(1, min(num_samples, MAX_ELEMENTS // max(d, 1)))
    items = max(1, MAX_ELEMENTS // (particles * max(d, 1)))
    elbos, log_pxs = [], []
    for start in range(0, n, items):
        batch = x[start : start + items]
        total_w = torch.zeros(batch.shape[0], dtype=x.dtype, device=x.device)
        lse = torch.full_like(total_w, -math.inf)
        done = 0
        while done < num_samples:
            k = min(particles, num_samples - done)
            log_w = log_weights(vae, batch, k)
            total_w += log_w.sum(0)
            lse = torch.logaddexp(lse, log_w.logsumexp(0))
            done += k
        elbos.append(total_w / num_samples)
        log_pxs.append(lse - math.log(num_samples))
        if progress is not None:
            progress(batch.shape[0])
    return torch.cat(elbos), torch.cat(log_pxs)
