r"""Closed-form KL divergences that torch and Pyro do not register, used by estimator B.

:class:`~pyro.infer.TraceMeanField_ELBO` (``--objective elbo-analytic``) uses
:func:`torch.distributions.kl_divergence` between each guide site and the model's prior. Torch
knows :math:`\mathrm{KL}(\mathcal{N}_\text{full} \,\|\, \mathcal{N}_\text{full})` and
:math:`\mathrm{KL}(\mathcal{N}_\text{diag} \,\|\, \mathcal{N}_\text{diag})` but not a full-covariance
guide against the model's diagonal prior, so the ``full-rank`` guide would silently fall back to
sampling. Registered here: for :math:`q = \mathcal{N}(\mu, LL^\top)` and
:math:`p = \mathcal{N}(m, \mathrm{diag}\, s^2)` in :math:`d` dimensions,

.. math::

    \mathrm{KL}(q \,\|\, p) = \sum_i \log s_i - \sum_i \log L_{ii}
    + \frac12 \Big( \sum_{i,j} \frac{L_{ij}^2}{s_i^2} + \sum_i \frac{(\mu_i - m_i)^2}{s_i^2} - d \Big),

the general Gaussian KL with :math:`\mathrm{tr}(\Sigma_p^{-1}\Sigma_q) = \sum_{ij} L_{ij}^2 / s_i^2`
(with :math:`p = \mathcal{N}(0, I)`, the paper's Appendix B generalized to a full covariance).
"""

from torch.distributions import Independent, MultivariateNormal, Normal, register_kl


@register_kl(MultivariateNormal, Independent)
def kl_mvn_diagonal_normal(q, p):
    """KL(MultivariateNormal || Independent(Normal, 1)); other ``p`` raise :class:`NotImplementedError`."""
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    m, s = p.base_dist.loc, p.base_dist.scale
    L = q.scale_tril
    d = q.event_shape[0]
    trace = (L.pow(2) / s.pow(2).unsqueeze(-1)).sum((-2, -1))
    mahalanobis = ((q.loc - m).pow(2) / s.pow(2)).sum(-1)
    log_det = s.log().sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return log_det + 0.5 * (trace + mahalanobis - d)
