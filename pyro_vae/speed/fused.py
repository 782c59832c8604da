r"""What :class:`~pyro_vae.speed.SVIStep` and :class:`~pyro_vae.speed.ddp.DDPStep` share: the parameters
captured on the first step and one torch optimizer over them (:class:`FusedOptimizerStep`).

Both steps compute the loss of a Pyro objective on a minibatch, back-propagate, and update
:math:`(\theta, \phi)` with one :class:`torch.optim.Optimizer` built from the
:class:`~pyro.optim.PyroOptim`'s constructor and arguments (:func:`~pyro_vae.speed.optim.torch_optimizer`).
The parameters are those Pyro's parameter store hands out during the first step
(``poutine.trace(param_only=True)``), named as the store names them, so the optimizer state is read
and written in :meth:`pyro.optim.PyroOptim.get_state`'s format and a checkpoint of either step is
that of ``SVI.step``.

**Learning rate.** :class:`~pyro_vae.train.schedules.LRSchedule` writes each step's rate into
``optim.pt_optim_args`` (read when the optimizer is built, on the first step) and into the groups of
``_torch_optim`` once it exists: both steps keep their optimizer under that name.

**Clipping.** A ``clip_norm`` :math:`C` rescales the gradient of all the parameters together when its
global L2 norm exceeds :math:`C` (:func:`torch.nn.utils.clip_grad_norm_`), between the backward pass
and the optimizer step: what :class:`~pyro_vae.train.schedules.GlobalClipOptim` does on Pyro's path.
"""

import contextlib
import warnings

import torch

import pyro
from pyro import poutine
from pyro.infer import is_validation_enabled

from .optim import load_pyro_optim_state, pyro_optim_state, torch_optimizer

__all__ = ["FusedOptimizerStep", "global_clip_norm"]


def global_clip_norm(optim):
    """The global gradient-norm bound of ``optim`` (a :class:`~pyro_vae.train.schedules.GlobalClipOptim`
    has one, as ``clip_norm``), or ``None``."""
    return getattr(optim, "clip_norm", None)


class FusedOptimizerStep:
    """The base of the steps that update with one torch optimizer: parameter capture, optimizer
    construction (with pending saved state), the optimizer step (fused-kernel fallback, global
    clipping, ``zero_grad``) and the state in Pyro's format.

    Subclasses implement ``__call__``; they call :meth:`_capture_params` around the first step's
    loss and backward, then :meth:`_build_optimizer` and :meth:`_optimizer_step`.

    :param optim: the :class:`~pyro.optim.PyroOptim` whose constructor and arguments are used.
    :param Speed speed: the switches (``optimizer``: ``"fused"``, ``"foreach"`` or ``"torch"``).
    :param float clip_norm: the global gradient-norm bound, or ``None``.
    """

    def __init__(self, optim, speed, clip_norm=None):
        self.optim, self.speed, self.clip_norm = optim, speed, clip_norm
        self.steps = 0
        self._torch_optim = None
        self._names = None  # param store names of the torch optimizer's params, in order
        self._pending_state = None  # saved state set before the optimizer exists

    def _validation(self):
        """``validation_enabled(False)`` after the first step unless asked otherwise; else Pyro's own setting."""
        if self.steps == 0 or self.speed.validate_every_step or not is_validation_enabled():
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

    @staticmethod
    @contextlib.contextmanager
    def _capture_params():
        """Yields a dict filled, on exit, with the parameters used inside: ``{store name: unconstrained tensor}``."""
        params = {}
        with poutine.trace(param_only=True) as capture:
            yield params
        store = pyro.get_param_store()
        for site in capture.trace.nodes.values():
            p = site["value"].unconstrained()
            params[store.param_name(p)] = p

    def _build_optimizer(self, params):
        """One torch optimizer over ``params`` (sorted by name), with any pending saved state; ``None``
        (nothing built) when the :class:`~pyro.optim.PyroOptim` cannot be expressed as one."""
        names = sorted(params)
        optimizer = torch_optimizer(self.optim, [params[n] for n in names], self.speed.optimizer, self.clip_norm)
        if optimizer is None:
            return None
        self._names, self._torch_optim = names, optimizer
        if self._pending_state is not None:
            load_pyro_optim_state(self._torch_optim, self._names, self._pending_state)
            self._pending_state = None
        return optimizer

    def _rebuild(self, params, kind):
        """The optimizer rebuilt over ``params`` (in ``_names`` order) with implementation ``kind``, state kept."""
        state = pyro_optim_state(self._torch_optim, self._names)
        self._torch_optim = torch_optimizer(self.optim, params, kind, self.clip_norm)
        load_pyro_optim_state(self._torch_optim, self._names, state)

    def _optimizer_step(self):
        """Clip (with ``clip_norm``), step and zero the gradients."""
        if self.clip_norm is not None:
            params = [p for g in self._torch_optim.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        try:
            self._torch_optim.step()
        except RuntimeError as e:  # a fused kernel refused this device or dtype at its first step
            if not self._torch_optim.defaults.get("fused"):
                raise
            self._rebuild([p for g in self._torch_optim.param_groups for p in g["params"]], "foreach")
            warnings.warn(f"fused optimizer unavailable ({e}); using the multi-tensor one")
            self._torch_optim.step()
        self._torch_optim.zero_grad(set_to_none=True)

    # Optimizer state -------------------------------------------------------------------------
    def get_state(self):
        """Optimizer state in :meth:`pyro.optim.PyroOptim.get_state` format."""
        if self._torch_optim is None:
            return dict(self._pending_state or {})
        return pyro_optim_state(self._torch_optim, self._names)

    def set_state(self, state):
        """Load state saved by :meth:`get_state` (or by :meth:`pyro.optim.PyroOptim.get_state`)."""
        if self._torch_optim is None:
            self._pending_state = state
        else:
            load_pyro_optim_state(self._torch_optim, self._names, state)
