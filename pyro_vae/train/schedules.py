r"""The optimizer's schedule and its gradient clipping: ``--lr-schedule``, ``--lr-warmup``, ``--clip-norm``.

**Learning rate.** The learning rate of step :math:`t` (counted from 1 over the whole run) of epoch
:math:`e` (counted from 1) is

.. math::

    \eta_t = \eta_{\text{sched}}(e) \cdot \min\Big(1, \frac{t}{W}\Big),

the epoch-level schedule :math:`\eta_{\text{sched}}` of ``--lr-schedule`` times a linear warm-up
over the first :math:`W` = ``--lr-warmup`` steps (Goyal et al. 2017; no warm-up for :math:`W = 0`).
The epoch-level schedules are PyTorch's :mod:`torch.optim.lr_scheduler`, stepped once per epoch:

=============== ======================================================= =====================================
``none``        :math:`\eta`                                             
``step``        :class:`~torch.optim.lr_scheduler.StepLR`               ``--lr-step`` (10 epochs), ``--lr-gamma`` (0.1)
``exponential`` :class:`~torch.optim.lr_scheduler.ExponentialLR`        ``--lr-gamma`` (0.95 per epoch)
``cosine``      :class:`~torch.optim.lr_scheduler.CosineAnnealingLR`    to 0 over the run's ``--epochs``
``plateau``     :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`    on the validation ELBO (``mode="max"``, strictly better):
                                                                         ``--lr-gamma`` (0.1) after ``--lr-step``
                                                                         (10) epochs without improvement
=============== ======================================================= =====================================

The scheduler runs on a *proxy* optimizer (one dummy parameter, holding :math:`\eta_{\text{sched}}`)
and :class:`LRSchedule` writes :math:`\eta_t` into the ``lr`` of every parameter group of the
optimizer that actually steps, before every step: the one torch optimizer of the fast step
(``SVIStep._torch_optim``, which the step may rebuild: new parameters, fused fallback) or Pyro's
per-parameter optimizers (``PyroOptim.optim_objs``), and the arguments future ones are built with
(``PyroOptim.pt_optim_args``). Nothing in :mod:`pyro_vae.engine` changes. The proxy scheduler's
``state_dict`` and the step count are saved in checkpoints, so a resumed run takes the same steps
as an uninterrupted one. (``cosine`` anneals over ``--epochs`` as given when the run started; a
resume with more epochs stretches the rest of the curve to the new total.)

**Clipping.** ``--clip-norm C`` rescales the gradient of all parameters together when its global
L2 norm exceeds :math:`C` (:func:`torch.nn.utils.clip_grad_norm_` over every parameter, as in
PyTorch's recipes), between the backward pass and the optimizer step. The fused step has no place
for it, so such runs take Pyro's own path (``SVI.step``) with :class:`GlobalClipOptim`, a
:class:`~pyro.optim.PyroOptim` that clips across its parameters (Pyro's own ``clip_args`` clip
each parameter tensor separately).
"""

import warnings

import torch

from pyro.optim import PyroOptim

from ..errors import UserError

__all__ = ["LR_DEFAULTS", "GlobalClipOptim", "LRSchedule"]

#: defaults of ``--lr-step`` and ``--lr-gamma`` per schedule
LR_DEFAULTS = {"step": (10, 0.1), "exponential": (None, 0.95), "plateau": (10, 0.1)}


class GlobalClipOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` that clips the global gradient norm of the parameters it steps.

    :param PyroOptim optim: the optimizer to wrap (its constructor and arguments are used).
    :param float clip_norm: the largest global L2 norm :math:`C > 0`.
    """

    def __init__(self, optim, clip_norm):
        # clip_args marks the optimizer as not expressible as one fused torch optimizer (the fast
        # step then refuses it); the clipping itself is global, in __call__.
        super().__init__(optim.pt_optim_constructor, optim.pt_optim_args, {"clip_norm": float(clip_norm)})
        self.clip_norm = float(clip_norm)

    def _get_grad_clip(self, param):
        return None  # no per-parameter clipping: see __call__

    def __call__(self, params, *args, **kwargs):
        params = list(params)
        grads = [p for p in params if p.grad is not None]
        if grads:
            torch.nn.utils.clip_grad_norm_(grads, self.clip_norm)
        super().__call__(params, *args, **kwargs)


class LRSchedule:
    """The learning rate of each step of a run (see the module docstring).

    :param Config config: ``lr``, ``lr_schedule``, ``lr_step``, ``lr_gamma``, ``lr_warmup``, ``epochs``.
    """

    def __init__(self, config):
        self.base, self.kind, self.warmup = config.lr, config.lr_schedule, config.lr_warmup
        step, gamma = LR_DEFAULTS.get(self.kind, (None, None))
        self.lr_step = config.lr_step if config.lr_step is not None else step
        self.lr_gamma = config.lr_gamma if config.lr_gamma is not None else gamma
        self._proxy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.base)
        sched = torch.optim.lr_scheduler
        if self.kind == "none":
            self.scheduler = None
        elif self.kind == "step":
            self.scheduler = sched.StepLR(self._proxy, step_size=self.lr_step, gamma=self.lr_gamma)
        elif self.kind == "exponential":
            self.scheduler = sched.ExponentialLR(self._proxy, gamma=self.lr_gamma)
        elif self.kind == "cosine":
            self.scheduler = sched.CosineAnnealingLR(self._proxy, T_max=max(config.epochs, 1))
        elif self.kind == "plateau":
            # absolute threshold 0: "better" is strictly greater (a relative one misjudges negative ELBOs)
            self.scheduler = sched.ReduceLROnPlateau(self._proxy, mode="max", factor=self.lr_gamma,
                                                     patience=self.lr_step, threshold=0.0,
                                                     threshold_mode="abs")  # fmt: skip
        else:
            raise UserError(f"unknown --lr-schedule {self.kind!r}")
        #: steps taken so far (for the warm-up), counted over the whole run
        self.steps = 0

    @property
    def constant(self):
        """Whether every step has the configured ``lr`` (no schedule, no warm-up)."""
        return self.scheduler is None and not self.warmup

    @property
    def epoch_lr(self):
        """The epoch-level learning rate :math:`\\eta_{\\text{sched}}(e)` of the current epoch."""
        return self._proxy.param_groups[0]["lr"]

    def lr(self, step=None):
        """:math:`\\eta_t` for step ``t`` (default: the next one, ``steps + 1``)."""
        t = self.steps + 1 if step is None else step
        factor = min(1.0, t / self.warmup) if self.warmup else 1.0
        return self.epoch_lr * factor

    def apply(self, svi_step):
        """Write the next step's learning rate into ``svi_step``'s optimizer(s); count the step."""
        lr = self.lr()
        self.steps += 1
        if self.constant:
            return lr
        optim = svi_step.optim
        if isinstance(optim.pt_optim_args, dict):
            optim.pt_optim_args = {**optim.pt_optim_args, "lr": lr}
        optimizers = list(optim.optim_objs.values())
        fast = getattr(svi_step, "_torch_optim", None)  # the fast step's one torch optimizer, once built
        if fast is not None:
            optimizers.append(fast)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def end_epoch(self, valid_elbo=None):
        """Step the epoch-level scheduler (``plateau`` on the validation ELBO)."""
        if self.scheduler is None:
            return
        with warnings.catch_warnings():  # the proxy optimizer never steps; torch would warn of the order
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            if self.kind == "plateau":
                if valid_elbo is not None:
                    self.scheduler.step(valid_elbo)
            else:
                self.scheduler.step()

    def state_dict(self):
        return {"steps": self.steps, "lr": self.epoch_lr,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}  # fmt: skip

    def rebase(self, lr):
        """A constant schedule's rate becomes ``lr`` (``fit --resume --lr``)."""
        self._proxy.param_groups[0]["lr"] = self.base = lr

    def load_state_dict(self, state, epochs=None):
        self.steps = int(state["steps"])
        self._proxy.param_groups[0]["lr"] = state["lr"]
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            if self.kind == "cosine" and epochs:
                self.scheduler.T_max = max(epochs, 1)
