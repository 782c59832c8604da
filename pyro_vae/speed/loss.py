r"""The :class:`~pyro.infer.Trace_ELBO` loss without host reads, and the Pyro internals it needs.

:meth:`Trace_ELBO.differentiable_loss <pyro.infer.Trace_ELBO.differentiable_loss>` sums, over the
sample sites of a guide trace and of the model trace replayed on it,

.. math::

    -\widetilde{\mathcal{L}}(\theta, \phi; x) = -\frac{1}{S}\sum_{s=1}^{S} \Big[\sum_{\text{model sites}}
    \log p - \sum_{\text{guide sites}} \log q\Big]_{z = z^{(s)}},

averaged over :math:`S` particles, and differentiates Pyro's surrogate objective (which adds the
score-function terms :math:`\log r \cdot \log q` of non-reparameterized guide sites, Ranganath et
al. 2014, and equals the loss when every site is reparameterized). It also reads the loss back to
the host (a NaN check and ``.item()``), which stalls a GPU's launch queue and cannot be captured as
a graph. :func:`trace_elbo_loss` computes the same sums from the same traces without those reads.

To do so it calls three Pyro internals: ``Trace_ELBO._get_traces`` (the traces, one per particle
or one vectorized over particles), ``pyro.infer.trace_elbo._compute_log_r`` (the :math:`\log r`
of the score-function terms) and ``pyro.infer.util.is_identically_zero``. They are not public API,
so they are imported here and nowhere else, and :func:`pyro_internals` checks them once per
process on first use: their signatures, and the value and gradients of the fast loss on a tiny
model with a reparameterized and a score-function site against ``differentiable_loss``. Where that
fails (a Pyro version that renamed or changed them), :func:`trace_elbo_loss` is
``differentiable_loss`` itself, with one :class:`PyroInternalsWarning`: slower, never different.
``setup.cfg`` pins ``pyro-ppl`` to the versions this is tested with.
"""

import inspect
import warnings
from typing import Callable, NamedTuple

import torch

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import Trace_ELBO

#: the Pyro versions the internals were checked against (as in setup.cfg)
TESTED_PYRO = "pyro-ppl>=1.9.2,<1.10"


class PyroInternalsWarning(UserWarning):
    """The Pyro internals of the fast loss are missing or changed; the public ``differentiable_loss`` runs instead."""


class Internals(NamedTuple):
    """The three Pyro internals :func:`trace_elbo_loss` calls."""

    #: ``Trace_ELBO._get_traces(elbo, model, guide, args, kwargs)``: (model trace, guide trace) per particle
    get_traces: Callable
    #: ``_compute_log_r(model_trace, guide_trace)``: the :class:`~pyro.infer.util.MultiFrameTensor` of log r
    compute_log_r: Callable
    #: ``is_identically_zero(x)``: whether ``x`` is the number 0 (a term Pyro left out)
    is_identically_zero: Callable


#: the signature of each internal, as it is called
_SIGNATURES = {
    "get_traces": "(self, model, guide, args, kwargs)",
    "compute_log_r": "(model_trace, guide_trace)",
    "is_identically_zero": "(x)",
}

_UNCHECKED = object()
_internals = _UNCHECKED  # the checked Internals, or None once the check failed


def _import_internals():
    """The internals, imported and their signatures checked; raises ImportError, AttributeError or TypeError."""
    from pyro.infer.trace_elbo import _compute_log_r
    from pyro.infer.util import is_identically_zero

    internals = Internals(Trace_ELBO._get_traces, _compute_log_r, is_identically_zero)
    for name, expected in _SIGNATURES.items():
        got = str(inspect.signature(getattr(internals, name)))
        if got != expected:
            raise TypeError(f"{name} has the signature {got}, not {expected}")
    return internals


def _probe(internals):
    """Raise ValueError unless the fast loss equals ``differentiable_loss`` on a tiny model, in value and gradients.

    The model has a reparameterized site (``z``) and a non-reparameterized one (``c``, so that
    ``_compute_log_r`` and the score-function terms are used), two particles; both losses are drawn
    from the same seed. Runs on the CPU, with the caller's random state restored and the caller's
    Pyro handlers blocked, so it changes nothing around it.
    """
    cpu = torch.device("cpu")
    loc = torch.tensor(0.3, device=cpu, requires_grad=True)
    logit = torch.tensor(-0.2, device=cpu, requires_grad=True)
    half, zero, one, obs = (torch.tensor(v, device=cpu) for v in (0.5, 0.0, 1.0, 0.7))

    def model():
        c = pyro.sample("c", dist.Bernoulli(half))
        z = pyro.sample("z", dist.Normal(zero, one))
        pyro.sample("x", dist.Normal(z + c, one), obs=obs)

    def guide():
        pyro.sample("c", dist.Bernoulli(logits=logit))
        pyro.sample("z", dist.Normal(loc, one))

    elbo = Trace_ELBO(num_particles=2)
    results = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), poutine.block():
        for loss_fn in (
            lambda: _trace_elbo_loss(internals, elbo, model, guide, (), {}),
            lambda: elbo.differentiable_loss(model, guide),
        ):
            torch.manual_seed(0)
            loss = loss_fn()
            results.append((loss.detach(), *torch.autograd.grad(loss, [loc, logit])))
    for ours, theirs in zip(*results):
        if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
            raise ValueError(f"the fast loss disagrees with differentiable_loss on a test model "
                             f"({[r.tolist() for r in results[0]]} vs {[r.tolist() for r in results[1]]})")  # fmt: skip


def pyro_internals():
    """The checked :class:`Internals`, or ``None`` where they are missing or changed (then warns once).

    The check (imports, signatures, :func:`_probe`) runs on the first call of the process and its
    result is kept; the one :class:`PyroInternalsWarning` is given then.
    """
    global _internals
    if _internals is _UNCHECKED:
        try:
            internals = _import_internals()
            _probe(internals)
        except Exception as e:  # ImportError, AttributeError, TypeError, ValueError, or an error inside them
            _internals = None
            warnings.warn(
                f"the Pyro internals of pyro-vae's fast loss are missing or changed in pyro-ppl {pyro.__version__} "
                f"({type(e).__name__}: {e}); using the public Trace_ELBO.differentiable_loss instead (the same "
                f"values, with host reads and Pyro's tracing every step). pyro-vae is tested with {TESTED_PYRO}.",
                PyroInternalsWarning,
                stacklevel=2,
            )
        else:
            _internals = internals
    return _internals


def is_plain_trace_elbo(loss):
    """Whether ``loss`` computes exactly :class:`~pyro.infer.Trace_ELBO`'s estimator (no subclass overrides)."""
    cls = type(loss)
    return isinstance(loss, Trace_ELBO) and all(
        getattr(cls, name, None) is getattr(Trace_ELBO, name, None)
        for name in ("differentiable_loss", "loss_and_grads", "_differentiable_loss_particle", "_get_trace")
    )


def trace_elbo_loss(elbo, model, guide, *args, **kwargs):
    r""":meth:`Trace_ELBO.differentiable_loss <pyro.infer.Trace_ELBO.differentiable_loss>` without host reads.

    The same traces (``elbo._get_traces``: one per particle, or one vectorized over particles), the
    same sums of each site's scaled and masked ``log_prob_sum``, the same surrogate terms for
    non-reparameterized guide sites; only the value is kept as a tensor. Returns
    ``loss + (surrogate - surrogate.detach())``: the value of :math:`-\widetilde{\mathcal{L}}`
    with the gradient of Pyro's surrogate objective. When every guide site is reparameterized (its
    entropy term is its ``log_prob`` and it has no score-function term) the surrogate *is* the loss,
    and the loss is returned as it is.

    Where Pyro's internals are missing or changed (:func:`pyro_internals` is ``None``), this is
    ``elbo.differentiable_loss(model, guide, *args, **kwargs)``.
    """
    internals = pyro_internals()
    if internals is None:
        return elbo.differentiable_loss(model, guide, *args, **kwargs)
    return _trace_elbo_loss(internals, elbo, model, guide, args, kwargs)


def _trace_elbo_loss(internals, elbo, model, guide, args, kwargs):
    is_identically_zero = internals.is_identically_zero
    loss = 0.0
    surrogate_loss = None  # stays None while the surrogate equals the loss
    for model_trace, guide_trace in internals.get_traces(elbo, model, guide, args, kwargs):
        elbo_particle = 0.0
        surrogate_extra = 0.0  # the surrogate minus the ELBO, for this particle
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo_particle = elbo_particle + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo_particle = elbo_particle - site["log_prob_sum"]
                if entropy_term is not site["log_prob"]:  # not a plain reparameterized site
                    surrogate_extra = surrogate_extra + site["log_prob_sum"]
                    if not is_identically_zero(entropy_term):
                        surrogate_extra = surrogate_extra - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = internals.compute_log_r(model_trace, guide_trace)
                    term = log_r.sum_to(site["cond_indep_stack"])
                    surrogate_extra = surrogate_extra + (term * score_function_term).sum()
        loss = loss - elbo_particle / elbo.num_particles
        if not is_identically_zero(surrogate_extra):
            surrogate_loss = (0.0 if surrogate_loss is None else surrogate_loss) - surrogate_extra / elbo.num_particles
    if not isinstance(loss, torch.Tensor):  # a model and guide without sample sites
        return torch.as_tensor(loss)
    if surrogate_loss is None:
        return loss
    surrogate_loss = loss + surrogate_loss
    return loss.detach() + (surrogate_loss - surrogate_loss.detach())
