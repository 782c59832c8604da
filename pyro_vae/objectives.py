r"""Training objectives: estimators of (bounds on) :math:`\log p_\theta(x)` for :class:`pyro.infer.SVI`.

``elbo`` is Pyro's :class:`~pyro.infer.Trace_ELBO`: the paper's SGVB estimator A (eq. 6), a Monte
Carlo estimate of :math:`\mathbb{E}_q[\log p_\theta(x, z) - \log q_\phi(z \mid x)]` with
``num_particles`` reparameterized draws per datapoint, vectorized over particles.
Each objective is one class in the :data:`OBJECTIVES` registry.
"""

from pyro.infer import Trace_ELBO

from .registry import Registry

OBJECTIVES = Registry("objective")


class Objective:
    """Base class: :meth:`build` returns the Pyro loss object that :class:`~pyro.infer.SVI` minimizes."""

    def __init__(self, particles=1):
        self.particles = particles

    def build(self):
        raise NotImplementedError


@OBJECTIVES.register("elbo")
class ELBO(Objective):
    """Estimator A: the Monte Carlo ELBO (``Trace_ELBO``)."""

    def build(self):
        return Trace_ELBO(num_particles=self.particles, vectorize_particles=self.particles > 1, max_plate_nesting=1)
