r"""One SVI step, :class:`SVIStep`, and its switches, :class:`Speed`.

:class:`SVIStep` takes the step of :class:`~pyro_vae.speed.reference.ReferenceStep` (the loss of
Pyro's :class:`~pyro.infer.Trace_ELBO`, ``backward``, one optimizer step) or, with
:meth:`Speed.baseline`, :meth:`pyro.infer.SVI.step` itself. Its switches (see
:mod:`pyro_vae.speed`) change how the step runs, never what it computes: the losses, gradients and
random draws are those of the reference step (``tests/speed/test_reference.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch

import pyro
from pyro.infer import SVI
from pyro.optim import PyroOptim

from ..errors import UserError
from ..vae.nets import MLP
from .capture import CapturedLoss
from .cuda_graph import CUDAGraphStep
from .fused import FusedOptimizerStep
from .loss import is_plain_trace_elbo, pyro_internals, trace_elbo_loss
from .optim import load_pyro_optim_state, pyro_optim_state, torch_optimizer

OPTIMIZER_KINDS = ("pyro", "torch", "foreach", "fused")


@dataclass(frozen=True)
class Speed:
    """The switches of :class:`SVIStep`. None of them changes what is computed.

    :param bool validate_every_step: keep Pyro's validation on after the first step.
    :param bool sync_every_step: read the loss on the host after every step (as ``SVI.step`` does).
    :param str optimizer: ``"pyro"`` (``SVI.step`` with the :class:`~pyro.optim.PyroOptim`),
        ``"torch"`` (one torch optimizer, PyTorch's default implementation), ``"foreach"`` or
        ``"fused"`` (its multi-tensor or fused-kernel implementation, where the optimizer has one).
    :param bool capture: replay the loss from a graph traced once per batch shape (:class:`CapturedLoss`).
    :param str compile: a :func:`torch.compile` backend (e.g. ``"inductor"``) for the captured loss
        graph; where the loss is not captured (``capture=False``, or an objective other than
        ``Trace_ELBO``), :class:`~pyro_vae.train.trainer.Trainer` compiles the encoder and decoder MLPs
        instead. ``None``: no compilation.
    :param bool fast_bernoulli: in the captured loss graph, compute the Bernoulli log-density on
        logits without :func:`torch.log1p` (slow on the CPU; :mod:`pyro_vae.speed.fast_ops`). Changes
        float rounding (about 1e-7 relative on the losses), so it is opt-in; needs ``capture``.
    :param bool experimental_cuda_graph: capture full-size steps in a CUDA graph and replay them
        (:class:`~pyro_vae.speed.cuda_graph.CUDAGraphStep`; CUDA only, ignored on the CPU). Off by
        default and experimental: it has not yet been run on a GPU, so nothing has checked it there.
    """

    validate_every_step: bool = False
    sync_every_step: bool = False
    optimizer: str = "fused"
    capture: bool = True
    compile: str | None = None
    experimental_cuda_graph: bool = False
    fast_bernoulli: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_KINDS:
            raise UserError(f"unknown optimizer implementation {self.optimizer!r}; choose one of: "
                            f"{', '.join(OPTIMIZER_KINDS)}")  # fmt: skip

    @classmethod
    def baseline(cls) -> Speed:
        """The plain Pyro loop: ``SVI.step`` with validation and a host read every step."""
        return cls(validate_every_step=True, sync_every_step=True, optimizer="pyro", capture=False)

    def replace(self, **changes: Any) -> Speed:
        return replace(self, **changes)


def compile_nets(module, backend="inductor"):
    """:func:`torch.compile` every :class:`~pyro_vae.vae.nets.MLP` inside ``module`` in place.

    In place (:meth:`torch.nn.Module.compile`), so parameter names and checkpoints do not change.
    Only plain MLPs are compiled: the random draws stay in eager PyTorch, so compiled and eager
    runs draw the same numbers.
    """
    for m in module.modules():
        if isinstance(m, MLP):
            m.compile(backend=backend)
    return module


class SVIStep(FusedOptimizerStep):
    """``step(x)``: one SVI step on minibatch ``x``; the loss comes back as a 0-dim tensor.

    With ``speed.sync_every_step=False`` the tensor stays on the device (no host read); otherwise
    (and on the ``"pyro"`` path, where :meth:`SVI.step` returns a float) it is on the CPU.

    Where Pyro's internals are missing or changed (:func:`~pyro_vae.speed.loss.pyro_internals` is
    ``None``, after one :class:`~pyro_vae.speed.loss.PyroInternalsWarning`), the ``Trace_ELBO`` loss is
    Pyro's public ``differentiable_loss``, run eagerly every step (not captured, no CUDA graph).

    The parameter capture, the one torch optimizer and its state are those of
    :class:`~pyro_vae.speed.fused.FusedOptimizerStep`, shared with the data-parallel
    :class:`~pyro_vae.speed.ddp.DDPStep`.

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param loss: a Pyro ELBO (e.g. :class:`~pyro.infer.Trace_ELBO`).
    :param optim: a :class:`~pyro.optim.PyroOptim`.
    :param Speed speed: the switches.
    :param to_scalar: maps what ``loss.loss_and_grads`` (or ``SVI.step``) returns to the one training
        loss (e.g. :meth:`pyro_vae.vae.objectives.Objective.training_loss`: RWS returns a tuple); default identity.
    """

    def __init__(self, model, guide, loss, optim, speed=None, to_scalar=None):
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}")
        super().__init__(optim, speed or Speed())
        self.model, self.guide, self.loss = model, guide, loss
        self.to_scalar = to_scalar or (lambda value: value)
        self._svi = None
        self._known = set()  # the param store's names after the last step
        self._graph = None
        if self.speed.optimizer == "pyro":
            self._svi = SVI(model, guide, optim, loss)
        self._plain_elbo = is_plain_trace_elbo(loss)
        #: whether the loss is summed without host reads (:func:`trace_elbo_loss` on Pyro's internals);
        #: where the internals are missing or changed, it is Pyro's public differentiable_loss
        self._fast_loss = (
            self._plain_elbo and self._svi is None and not self.speed.sync_every_step and pyro_internals() is not None
        )
        self._captured = None
        if self._fast_loss and self.speed.capture and not self.speed.validate_every_step:
            self._captured = CapturedLoss(lambda x: trace_elbo_loss(loss, model, guide, x), self.speed.compile,
                                          self.speed.fast_bernoulli)  # fmt: skip

    @property
    def path(self):
        """Which implementation runs: ``"svi"`` or ``"torch"`` (known after the first step)."""
        return "svi" if self._svi is not None else "torch"

    @property
    def captures(self):
        """Whether the loss is replayed from captured graphs (:class:`CapturedLoss`) after the first step."""
        return self._captured is not None and not self._captured.given_up

    def _loss_and_backward(self, x):
        """The loss (a tensor, or a float on Pyro's generic path) with gradients accumulated."""
        if self._plain_elbo and not self.speed.sync_every_step:
            loss = None
            if self._captured is not None and self.steps > 0:  # the first step runs Pyro's own checks
                loss = self._captured(x)
            if loss is None:
                loss = trace_elbo_loss(self.loss, self.model, self.guide, x)
            if loss.requires_grad:
                loss.backward()
            return loss.detach()
        return self.to_scalar(self.loss.loss_and_grads(self.model, self.guide, x))

    def _first_step(self, x):
        """Run the first step under a parameter capture, then build the one torch optimizer."""
        with self._capture_params() as params:
            loss = self._loss_and_backward(x)
        if self._build_optimizer(params) is None:  # not expressible as one torch optimizer: Pyro's own path
            warnings.warn("this optimizer cannot be fused (per-parameter arguments or clipping); using SVI.step")
            self._svi = SVI(self.model, self.guide, self.optim, self.loss)
            if self._pending_state is not None:
                self.optim.set_state(self._pending_state)
            # finish this step as SVI.step would: the gradients are already there
            self.optim(list(params.values()))
            pyro.infer.util.zero_grads(set(params.values()))
            return loss
        self._known = set(pyro.get_param_store().keys())
        self._optimizer_step()
        return loss

    def _adopt_new_params(self):
        """Parameters first created in this step (``pyro.param`` in a later step than the first):
        add them to the optimizer before it steps, as :meth:`SVI.step` would. One ``len`` a step."""
        store = pyro.get_param_store()
        if len(store) == len(self._known):
            return
        new = [name for name in store.keys() if name not in self._known]
        self._known = set(store.keys())
        if not new:
            return
        state = pyro_optim_state(self._torch_optim, self._names)
        self._names = sorted(self._names + new)
        params = [store[name].unconstrained() for name in self._names]
        kind = "fused" if self._torch_optim.defaults.get("fused") else self.speed.optimizer
        self._torch_optim = torch_optimizer(self.optim, params, kind, self.clip_norm)
        load_pyro_optim_state(self._torch_optim, self._names, state)

    def _optimizer_step(self):
        self._adopt_new_params()
        super()._optimizer_step()

    def _eager_step(self, x):
        if self._graph is not None:  # the graph's backward left its static gradients in .grad
            self._torch_optim.zero_grad(set_to_none=True)
        loss = self._loss_and_backward(x)
        self._optimizer_step()
        return loss

    def __call__(self, x):
        with self._validation():
            if self._svi is not None:
                loss = self.to_scalar(self._svi.step(x))
            elif self._torch_optim is None:
                loss = self._first_step(x)
            else:
                loss = None
                if self._graph is None and self._wants_graph(x):
                    self._graph = CUDAGraphStep(self)
                if self._graph is not None:
                    loss = self._graph(x)  # None for a batch of another shape (the last, partial one)
                if loss is None:
                    loss = self._eager_step(x)
        self.steps += 1
        if not isinstance(loss, torch.Tensor):  # Pyro's generic path returns floats
            return torch.tensor(loss)
        return loss.cpu() if self.speed.sync_every_step else loss

    # CUDA graphs ------------------------------------------------------------------------------
    def _wants_graph(self, x):
        return (
            self.speed.experimental_cuda_graph
            and x.is_cuda
            and self._fast_loss
            and not self.speed.sync_every_step
            and not self.speed.validate_every_step
        )

    # Optimizer state -------------------------------------------------------------------------
    def get_state(self):
        """Optimizer state in :meth:`pyro.optim.PyroOptim.get_state` format (whichever path runs)."""
        if self._svi is not None:
            return self.optim.get_state()
        return super().get_state()

    def set_state(self, state):
        """Load state saved by :meth:`get_state` (or by :meth:`pyro.optim.PyroOptim.get_state`)."""
        if self._svi is not None:
            self.optim.set_state(state)
        else:
            super().set_state(state)
