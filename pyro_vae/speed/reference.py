r"""The SVI step as Pyro documents it: the reference that the fast step is tested against.

Pyro's tutorial *Customizing SVI objectives and training loops* writes one step of stochastic
variational inference with a plain PyTorch optimizer as

.. code-block:: python

    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()

with the optimizer built over the parameters found by a parameter-only trace of the first loss.
For the VAE this is one iteration of Algorithm 1 of Kingma & Welling (2013): the minibatch
estimate :math:`-\widetilde{\mathcal{L}}^M(\theta, \phi; x)` of eq. 8 from one draw of
:math:`\epsilon` per datapoint, its gradient with respect to :math:`(\theta, \phi)` by
back-propagation through :math:`z = \mu_\phi(x) + \sigma_\phi(x) \odot \epsilon`, and one
optimizer update. :class:`~pyro_vae.speed.step.SVIStep` computes the same losses, gradients and
draws (``tests/speed/test_reference.py``); it only runs them with less Python and fewer host reads.
"""

import torch

from pyro import poutine
from pyro.infer import Trace_ELBO


class ReferenceStep:
    """``step(x)``: one SVI step on minibatch ``x`` as Pyro documents it; returns the loss (a 0-dim tensor).

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param elbo: the objective, a Pyro ELBO with ``differentiable_loss`` (default :class:`~pyro.infer.Trace_ELBO`).
    :param make_optimizer: ``params -> torch.optim.Optimizer``, called once with the parameters of the
        first step (default Adam with learning rate 1e-3, as ``pyro-vae fit``).
    """

    def __init__(self, model, guide, elbo=None, make_optimizer=None):
        self.model, self.guide = model, guide
        self.elbo = elbo if elbo is not None else Trace_ELBO()
        self.make_optimizer = make_optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        #: the torch optimizer, built on the first step
        self.optimizer = None

    def __call__(self, x):
        if self.optimizer is None:  # find the parameters: a parameter-only trace of the first loss
            with poutine.trace(param_only=True) as param_capture:
                loss = self.elbo.differentiable_loss(self.model, self.guide, x)
            params = {id(p): p for p in (s["value"].unconstrained() for s in param_capture.trace.nodes.values())}
            self.optimizer = self.make_optimizer(list(params.values()))
        else:
            loss = self.elbo.differentiable_loss(self.model, self.guide, x)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()
