r"""One torch optimizer doing what a :class:`~pyro.optim.PyroOptim` does, and its state in Pyro's format.

A :class:`~pyro.optim.PyroOptim` (what :class:`~pyro.infer.SVI` takes) keeps one
:class:`torch.optim.Optimizer` per parameter, created when the parameter is first seen, and steps
each in a Python loop. For element-wise optimizers (Adam, Adagrad, SGD: the update of each scalar
depends only on its own gradient and state, e.g. Adam's
:math:`\theta \leftarrow \theta - \alpha\, \hat m / (\sqrt{\hat v} + \epsilon)`, Kingma & Ba 2015)
one optimizer over all the parameters with the same arguments takes the same steps, and PyTorch
runs it as one fused kernel or one multi-tensor operation per state (:func:`torch_optimizer`).

Checkpoints keep :meth:`PyroOptim.get_state <pyro.optim.PyroOptim.get_state>`'s format (one
``state_dict`` per parameter name, :func:`pyro_optim_state`, :func:`load_pyro_optim_state`), so a
run saved by either implementation continues in the other.
"""

import inspect

import torch

from ..errors import UserError


def accepts(constructor, name):
    """Whether the optimizer class ``constructor`` takes an argument ``name`` (e.g. ``"fused"``)."""
    try:
        return name in inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return False


def torch_optimizer(pyro_optim, params, kind="fused", clip_norm=None):
    """One :class:`torch.optim.Optimizer` doing what ``pyro_optim`` does to each of ``params``.

    ``pyro_optim`` keeps one optimizer per parameter; for element-wise optimizers (Adam, Adagrad,
    SGD, ...) one optimizer over all of them with the same arguments takes the same steps.
    Returns ``None`` when that cannot be guaranteed: per-parameter arguments (a callable), gradient
    clipping, or a constructor that is not a :class:`torch.optim.Optimizer`.

    :param float clip_norm: the caller clips the global gradient norm to this bound itself
        (:class:`~pyro_vae.speed.fused.FusedOptimizerStep`): ``pyro_optim``'s clip arguments
        ``{"clip_norm": clip_norm}`` (those of :class:`~pyro_vae.train.schedules.GlobalClipOptim`)
        are then accepted; any other clipping is not.
    """
    constructor, args = pyro_optim.pt_optim_constructor, pyro_optim.pt_optim_args
    clip = pyro_optim.pt_clip_args
    if (
        callable(args)
        or (clip and (clip_norm is None or callable(clip) or dict(clip) != {"clip_norm": float(clip_norm)}))
        or not (inspect.isclass(constructor) and issubclass(constructor, torch.optim.Optimizer))
    ):
        return None
    args = dict(args)
    if kind == "fused" and accepts(constructor, "fused"):
        try:
            return constructor(params, **args, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            kind = "foreach"
    if kind in ("fused", "foreach") and accepts(constructor, "foreach"):
        return constructor(params, **args, foreach=True)
    return constructor(params, **args)


#: group options that say how an optimizer computes, not what: kept when loading saved state
_IMPLEMENTATION_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def pyro_optim_state(optimizer, names):
    """The state of a torch ``optimizer`` over params called ``names``, as :meth:`PyroOptim.get_state` gives it."""
    saved = optimizer.state_dict()
    groups = {i: g for g in saved["param_groups"] for i in g["params"]}
    state = {}
    for i, name in enumerate(names):
        group = {k: v for k, v in groups[i].items() if k != "params" and k not in _IMPLEMENTATION_OPTIONS}
        state[name] = {
            "state": {0: saved["state"][i]} if i in saved["state"] else {},
            "param_groups": [{**group, "params": [0]}],
        }
    return state


def load_pyro_optim_state(optimizer, names, state):
    """Load :meth:`PyroOptim.get_state`-format ``state`` into a torch ``optimizer`` over ``names``."""
    saved = optimizer.state_dict()
    keep = [{k: g[k] for k in _IMPLEMENTATION_OPTIONS if k in g} for g in optimizer.param_groups]
    index = {name: i for i, name in enumerate(names)}
    per_param = {}
    for name, s in state.items():
        if name not in index:
            raise UserError(f"the saved optimizer state has a parameter {name!r} this model does not have")
        if s.get("state"):
            per_param[index[name]] = next(iter(s["state"].values()))
    groups = []
    for g, impl in zip(saved["param_groups"], keep):
        first = next((state[names[i]] for i in g["params"] if names[i] in state), None)
        options = {k: v for k, v in first["param_groups"][0].items() if k != "params"} if first else {}
        groups.append({**g, **options, **impl, "params": g["params"]})
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
