r"""The speed layer: the SVI step made fast without changing what it computes.

One step of Algorithm 1 of Kingma & Welling (2013) draws a minibatch :math:`x`, estimates the
objective from a Pyro trace of the guide and a replayed trace of the model, back-propagates, and
updates :math:`(\theta, \phi)`. For the ELBO (the paper's estimator A, eq. 6) with one particle

.. math::

    -\widetilde{\mathcal{L}}(\theta, \phi; x) = -\sum_{i} \Big[\log p_\theta(x_i \mid z_i) + \log p(z_i)
    - \log q_\phi(z_i \mid x_i)\Big], \qquad z_i = g_\phi(\epsilon_i, x_i),\ \epsilon_i \sim \mathcal{N}(0, I).

The step as Pyro documents it is :class:`ReferenceStep` (:mod:`pyro_vae.speed.reference`):
``loss = Trace_ELBO().differentiable_loss(model, guide, x); loss.backward(); optimizer.step();
optimizer.zero_grad()``. :meth:`pyro.infer.SVI.step` computes exactly this, but per step it also:
reads the loss back to the host several times (``.item()`` inside :class:`~pyro.infer.Trace_ELBO`,
a NaN check, the returned float), which on a GPU stalls the launch queue; runs Pyro's argument and
shape validation; records a second trace to find the parameters; and updates each parameter with
its own :class:`torch.optim.Optimizer` (one Python-level optimizer step per tensor).

:class:`SVIStep` (:mod:`pyro_vae.speed.step`) takes the same step with each of those costs behind a
switch of :class:`Speed`:

- ``sync_every_step=False``: the :class:`~pyro.infer.Trace_ELBO` estimate is summed from the same
  Pyro traces (:func:`trace_elbo_loss`, :mod:`pyro_vae.speed.loss`) with no host reads; the loss
  stays a device tensor that the caller reads once per epoch;
- ``validate_every_step=False``: Pyro's validation runs on the first step of a run (where a wrong
  model, guide or data shape shows up) and is off afterwards (the data is checked once up front);
- ``optimizer="fused"`` (or ``"foreach"``, ``"torch"``): one :class:`torch.optim.Optimizer` built
  from the :class:`~pyro.optim.PyroOptim`'s own constructor and arguments over all parameters
  (:func:`torch_optimizer`, :mod:`pyro_vae.speed.optim`), with PyTorch's fused (one kernel) or
  multi-tensor implementation; ``"pyro"`` keeps :meth:`pyro.infer.SVI.step`. Optimizer state is
  saved in :meth:`pyro.optim.PyroOptim.get_state`'s format either way, so checkpoints move freely
  between the two;
- ``capture=True``: after the first step, the loss is traced once per batch shape into a graph of
  tensor operations (:class:`CapturedLoss`, :mod:`pyro_vae.speed.capture`) and that graph is
  replayed on every later batch of the shape: Pyro's Python (the poutine stack, the traces, the
  distribution objects) runs at capture only, the operations and their random draws are the same.
  This is what Pyro's :class:`~pyro.infer.JitTrace_ELBO` does with the deprecated
  :func:`torch.jit.trace`, and it asks the same of the model and guide: the same operations for
  every batch of a shape;
- ``compile``: :func:`torch.compile` the captured loss graph (a backend name); where the loss is
  not captured, :class:`~pyro_vae.train.trainer.Trainer` compiles the MLPs of the encoder and decoder
  (:func:`compile_nets`);
- data parallelism: :class:`DDPStep` (:mod:`pyro_vae.speed.ddp`) takes the step of :class:`SVIStep`
  on each process's slice of the global batch, its gradient averaged by PyTorch's
  :class:`~torch.nn.parallel.DistributedDataParallel`; the two share the parameter capture, the one
  torch optimizer, clipping and the state format (:class:`FusedOptimizerStep`, :mod:`pyro_vae.speed.fused`);
- ``experimental_cuda_graph``: on CUDA, capture a full-size step in a CUDA graph and replay it
  (:mod:`pyro_vae.speed.cuda_graph`). Off by default and experimental: it has not yet been run on
  a GPU;
- ``fast_bernoulli``: in the captured graph, the Bernoulli log-density on logits without
  :func:`torch.log1p`, which is slow on the CPU (:mod:`pyro_vae.speed.fast_ops`). Off by default: it
  changes float rounding (relative 1e-7 on the losses).

``--precision bf16`` (which devices may run it: :mod:`pyro_vae.speed.precision`) is not a switch of
the step: it changes what the networks compute (bfloat16 products).

Each switch keeps a seeded run's losses and parameters equal within float tolerance
(``tests/speed/test_step.py``), and the fast step computes the same losses, gradients and draws
as :class:`ReferenceStep` (``tests/speed/test_reference.py``); ``docs/benchmarks.md`` has what each
switch gains.

:func:`trace_elbo_loss` reads Pyro internals (``Trace_ELBO._get_traces``,
``pyro.infer.trace_elbo._compute_log_r``, ``pyro.infer.util.is_identically_zero``). They are
imported and probed in one place (:func:`pyro_internals`); where they are missing or behave
differently (another Pyro version), the step falls back to the public
:meth:`Trace_ELBO.differentiable_loss <pyro.infer.Trace_ELBO.differentiable_loss>` with one
:class:`PyroInternalsWarning`.

This layer imports only from the paper layer (:mod:`pyro_vae.errors`, :mod:`pyro_vae.vae.nets`) and
from Pyro and PyTorch.
"""

from .capture import CapturedLoss
from .ddp import DDPStep, LossModule
from .fused import FusedOptimizerStep, global_clip_norm
from .loss import PyroInternalsWarning, is_plain_trace_elbo, pyro_internals, trace_elbo_loss
from .optim import load_pyro_optim_state, pyro_optim_state, torch_optimizer
from .reference import ReferenceStep
from .step import Speed, SVIStep, compile_nets

__all__ = [
    "CapturedLoss", "DDPStep", "FusedOptimizerStep", "LossModule", "PyroInternalsWarning", "ReferenceStep",
    "SVIStep", "Speed", "compile_nets", "global_clip_norm", "is_plain_trace_elbo", "load_pyro_optim_state", "pyro_internals", "pyro_optim_state", "torch_optimizer",
    "trace_elbo_loss",
]  # fmt: skip
