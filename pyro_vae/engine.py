r"""The SVI step, made fast without changing what it computes.

One step of Algorithm 1 of Kingma & Welling (2013) draws a minibatch :math:`x`, estimates the
objective from a Pyro trace of the guide and a replayed trace of the model, back-propagates, and
updates :math:`(\theta, \phi)`. For the ELBO (the paper's estimator A, eq. 6) with one particle

.. math::

    -\widetilde{\mathcal{L}}(\theta, \phi; x) = -\sum_{i} \Big[\log p_\theta(x_i \mid z_i) + \log p(z_i)
    - \log q_\phi(z_i \mid x_i)\Big], \qquad z_i = g_\phi(\epsilon_i, x_i),\ \epsilon_i \sim \mathcal{N}(0, I).

:meth:`pyro.infer.SVI.step` computes exactly this, but per step it also: reads the loss back to the
host several times (``.item()`` inside :class:`~pyro.infer.Trace_ELBO`, a NaN check, the returned
float), which on a GPU stalls the launch queue; runs Pyro's argument and shape validation; records
a second trace to find the parameters; and updates each parameter with its own
:class:`torch.optim.Optimizer` (one Python-level optimizer step per tensor).

:class:`SVIStep` takes the same step with each of those costs behind a switch of :class:`Speed`:

- ``sync_every_step=False``: the :class:`~pyro.infer.Trace_ELBO` estimate is summed from the same
  Pyro traces (:func:`trace_elbo_loss`) with no host reads; the loss stays a device tensor that
  the caller reads once per epoch;
- ``validate_every_step=False``: Pyro's validation runs on the first step of a run (where a wrong
  model, guide or data shape shows up) and is off afterwards (the data is checked once up front);
- ``optimizer="fused"`` (or ``"foreach"``, ``"torch"``): one :class:`torch.optim.Optimizer` built
  from the :class:`~pyro.optim.PyroOptim`'s own constructor and arguments over all parameters,
  with PyTorch's fused (one kernel) or multi-tensor implementation; ``"pyro"`` keeps
  :meth:`pyro.infer.SVI.step`. Optimizer state is saved in :meth:`pyro.optim.PyroOptim.get_state`'s
  format either way, so checkpoints move freely between the two;
- ``capture=True``: after the first step, the loss is traced once per batch shape into a graph of
  tensor operations (:class:`CapturedLoss`, :func:`torch.fx.experimental.proxy_tensor.make_fx`)
  and that graph is replayed on every later batch of the shape: Pyro's Python (the poutine stack,
  the traces, the distribution objects) runs at capture only, the operations and their random
  draws are the same. This is what Pyro's :class:`~pyro.infer.JitTrace_ELBO` does with the
  deprecated :func:`torch.jit.trace`, and it asks the same of the model and guide: the same
  operations for every batch of a shape;
- ``compile``: :func:`torch.compile` the captured loss graph (a backend name); where the loss is
  not captured, :class:`~pyro_vae.training.Trainer` compiles the MLPs of the encoder and decoder;
- ``cuda_graph``: on CUDA, capture a full-size step in a CUDA graph and replay it (the partial last
  batch of an epoch runs eagerly, so there is one static shape and no recompilation).

Each switch keeps a seeded run's losses and parameters equal within float tolerance
(``tests/test_engine.py``); ``docs/benchmarks.md`` has what each one gains.
"""

import contextlib
import inspect
import logging
import warnings
from dataclasses import dataclass, replace

import torch

import pyro
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, is_validation_enabled
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.optim import PyroOptim

from .errors import UserError
from .nets import MLP

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
        ``Trace_ELBO``), :class:`~pyro_vae.training.Trainer` compiles the encoder and decoder MLPs
        instead. ``None``: no compilation.
    :param bool cuda_graph: capture full-size steps in a CUDA graph (CUDA only; ignored on the CPU).
    """

    validate_every_step: bool = False
    sync_every_step: bool = False
    optimizer: str = "fused"
    capture: bool = True
    compile: str = None
    cuda_graph: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZER_KINDS:
            raise UserError(f"unknown optimizer implementation {self.optimizer!r}; choose one of: "
                            f"{', '.join(OPTIMIZER_KINDS)}")  # fmt: skip

    @classmethod
    def baseline(cls):
        """The plain Pyro loop: ``SVI.step`` with validation and a host read every step."""
        return cls(validate_every_step=True, sync_every_step=True, optimizer="pyro", capture=False)

    def replace(self, **changes):
        return replace(self, **changes)


# The objective ------------------------------------------------------------------------------
def is_plain_trace_elbo(loss):
    """Whether ``loss`` computes exactly :class:`~pyro.infer.Trace_ELBO`'s estimator (no subclass overrides)."""
    cls = type(loss)
    return isinstance(loss, Trace_ELBO) and all(
        getattr(cls, name) is getattr(Trace_ELBO, name)
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
    """
    loss = 0.0
    surrogate_loss = None  # stays None while the surrogate equals the loss
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
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
                        log_r = _compute_log_r(model_trace, guide_trace)
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


# The captured loss --------------------------------------------------------------------------
class CapturedLoss:
    r"""``loss_fn(x)`` traced once per batch shape into a graph of tensor operations, then replayed.

    For the VAE's ``Trace_ELBO`` the per-step work of Pyro (messages through the poutine stack, two
    traces, the distribution objects, the site bookkeeping) is Python that produces the same few
    dozen tensor operations on every batch of a shape. :func:`~torch.fx.experimental.proxy_tensor.make_fx`
    runs ``loss_fn`` once on fake tensors and records those operations (down to PyTorch's ATen
    operators) in a :class:`torch.fx.GraphModule`; later batches of the shape run the graph:

    - the same operations in the same order, so the same values and gradients (autograd records
      the replayed operations as it records eager ones);
    - the parameters are the model's own tensors, referenced by the graph, so optimizer updates are
      seen; the data is the graph's input;
    - random draws are operations of the graph (``normal_`` for the reparameterized
      :math:`\epsilon`), drawn from the same generator in the same order: a seeded run draws the
      same numbers as the eager one. Tracing itself draws nothing (fake tensors).

    As for Pyro's :class:`~pyro.infer.JitTrace_ELBO`, the model and guide must run the same
    operations for every batch of a shape. Two checks hold them to it, and on failure capture is
    given up (with a warning) and the loss runs eagerly from then on:

    - Python control flow on tensor *values* (``if x.sum() > 0``, ``.item()``) cannot be traced on
      fake tensors and stops the capture;
    - at capture the graph and ``loss_fn`` are run on the same batch from the same random state
      (without gradients; the state is restored after each), and must agree.

    A model or guide whose structure depends on Python state (a step counter, say) and agrees at
    capture would still be frozen: turn capture off for it (``Speed(capture=False)``).

    Returns ``None`` (run eagerly) for a batch of a new shape once ``MAX_SHAPES`` are held, and
    after capture was given up.

    :param loss_fn: ``x -> loss``, a 0-dim tensor.
    :param str compile: a :func:`torch.compile` backend for each captured graph, or ``None``. The
        random draws stay PyTorch's own (``torch._inductor.config.fallback_random``).
    """

    MAX_SHAPES = 4

    def __init__(self, loss_fn, compile=None):
        self.loss_fn, self.compile = loss_fn, compile
        self.graphs = {}
        self.given_up = None  # why capture was given up

    def __call__(self, x):
        key = (x.shape, x.dtype, x.device)
        graph = self.graphs.get(key)
        if graph is None:
            if self.given_up or len(self.graphs) >= self.MAX_SHAPES:
                return None
            graph = self._capture(x)
            if graph is None:
                return None
            self.graphs[key] = graph
        return graph(x)

    def _give_up(self, why):
        self.given_up = why
        self.graphs.clear()
        warnings.warn(f"the loss could not be captured as a graph ({why}); running it eagerly")

    def _capture(self, x):
        from torch.fx.experimental.proxy_tensor import make_fx

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = make_fx(self.loss_fn, tracing_mode="fake", _allow_non_fake_inputs=True)(x)
        except Exception as e:  # data-dependent control flow, or an operation fake tensors cannot run
            first_line = (str(e).strip().splitlines() or [""])[0]
            return self._give_up(f"{type(e).__name__}: {first_line}")
        graph.graph.eliminate_dead_code()
        graph.recompile()
        devices = [x.device] if x.is_cuda else []
        with torch.no_grad():
            with torch.random.fork_rng(devices):
                eager = self.loss_fn(x)
            with torch.random.fork_rng(devices):
                replayed = graph(x)
        agree = isinstance(eager, torch.Tensor) and torch.allclose(replayed, eager, rtol=1e-5, atol=1e-5, equal_nan=True)
        if not agree:
            return self._give_up("its replay disagreed with the model and guide run afresh: "
                                 "they do not run the same operations on every batch")  # fmt: skip
        if self.compile == "inductor":
            # a CUDA build of torch on a machine without CUDA logs a warning when it builds CPU kernels
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # fallback_random: the eager generator's draws, not inductor's own
            graph = torch.compile(graph, backend="inductor", options={"fallback_random": True})
        elif self.compile:  # any other backend gets the graph as it is
            graph = torch.compile(graph, backend=self.compile)
        return graph


# The optimizer ------------------------------------------------------------------------------
def _accepts(constructor, name):
    try:
        return name in inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return False


def torch_optimizer(pyro_optim, params, kind="fused"):
    """One :class:`torch.optim.Optimizer` doing what ``pyro_optim`` does to each of ``params``.

    ``pyro_optim`` keeps one optimizer per parameter; for element-wise optimizers (Adam, Adagrad,
    SGD, ...) one optimizer over all of them with the same arguments takes the same steps.
    Returns ``None`` when that cannot be guaranteed: per-parameter arguments (a callable), gradient
    clipping, or a constructor that is not a :class:`torch.optim.Optimizer`.
    """
    constructor, args = pyro_optim.pt_optim_constructor, pyro_optim.pt_optim_args
    if (
        callable(args)
        or pyro_optim.pt_clip_args
        or not (inspect.isclass(constructor) and issubclass(constructor, torch.optim.Optimizer))
    ):
        return None
    args = dict(args)
    if kind == "fused" and _accepts(constructor, "fused"):
        try:
            return constructor(params, **args, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            kind = "foreach"
    if kind in ("fused", "foreach") and _accepts(constructor, "foreach"):
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


# The step -----------------------------------------------------------------------------------
def compile_nets(module, backend="inductor"):
    """:func:`torch.compile` every :class:`~pyro_vae.nets.MLP` inside ``module`` in place.

    In place (:meth:`torch.nn.Module.compile`), so parameter names and checkpoints do not change.
    Only plain MLPs are compiled: the random draws stay in eager PyTorch, so compiled and eager
    runs draw the same numbers.
    """
    for m in module.modules():
        if isinstance(m, MLP):
            m.compile(backend=backend)
    return module


class SVIStep:
    """``step(x)``: one SVI step on minibatch ``x``; the loss comes back as a 0-dim tensor.

    With ``speed.sync_every_step=False`` the tensor stays on the device (no host read); otherwise
    (and on the ``"pyro"`` path, where :meth:`SVI.step` returns a float) it is on the CPU.

    :param model: the Pyro model.
    :param guide: the Pyro guide.
    :param loss: a Pyro ELBO (e.g. :class:`~pyro.infer.Trace_ELBO`).
    :param optim: a :class:`~pyro.optim.PyroOptim`.
    :param Speed speed: the switches.
    :param to_scalar: maps what ``loss.loss_and_grads`` (or ``SVI.step``) returns to the one training
        loss (e.g. :meth:`pyro_vae.objectives.Objective.training_loss`: RWS returns a tuple); default identity.
    """

    def __init__(self, model, guide, loss, optim, speed=None, to_scalar=None):
        self.model, self.guide, self.loss, self.optim = model, guide, loss, optim
        self.to_scalar = to_scalar or (lambda value: value)
        self.speed = speed or Speed()
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}")
        self.steps = 0
        self._svi = None
        self._torch_optim = None
        self._names = None  # param store names of the torch optimizer's params, in order
        self._known = set()  # the param store's names after the last step
        self._pending_state = None
        self._graph = None
        if self.speed.optimizer == "pyro":
            self._svi = SVI(model, guide, optim, loss)
        self._plain_elbo = is_plain_trace_elbo(loss)
        self._captured = None
        if self._plain_elbo and self.speed.capture and not (self.speed.sync_every_step or self.speed.validate_every_step):
            self._captured = CapturedLoss(lambda x: trace_elbo_loss(loss, model, guide, x), self.speed.compile)

    @property
    def path(self):
        """Which implementation runs: ``"svi"`` or ``"torch"`` (known after the first step)."""
        return "svi" if self._svi is not None else "torch"

    @property
    def captures(self):
        """Whether the loss is replayed from captured graphs (:class:`CapturedLoss`) after the first step."""
        return self._captured is not None and not self._captured.given_up

    def _validation(self):
        """``validation_enabled(False)`` after the first step unless asked otherwise; else Pyro's own setting."""
        if self.steps == 0 or self.speed.validate_every_step or not is_validation_enabled():
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

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
        with poutine.trace(param_only=True) as capture:
            loss = self._loss_and_backward(x)
        store = pyro.get_param_store()
        params = {}
        for site in capture.trace.nodes.values():
            p = site["value"].unconstrained()
            params[store.param_name(p)] = p
        self._names = sorted(params)
        self._torch_optim = torch_optimizer(self.optim, [params[n] for n in self._names], self.speed.optimizer)
        if self._torch_optim is None:  # not expressible as one torch optimizer: Pyro's own path
            warnings.warn("this optimizer cannot be fused (per-parameter arguments or clipping); using SVI.step")
            self._svi = SVI(self.model, self.guide, self.optim, self.loss)
            if self._pending_state is not None:
                self.optim.set_state(self._pending_state)
            # finish this step as SVI.step would: the gradients are already there
            self.optim(list(params.values()))
            pyro.infer.util.zero_grads(set(params.values()))
            return loss
        if self._pending_state is not None:
            load_pyro_optim_state(self._torch_optim, self._names, self._pending_state)
            self._pending_state = None
        self._known = set(store.keys())
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
        self._torch_optim = torch_optimizer(self.optim, params, kind)
        load_pyro_optim_state(self._torch_optim, self._names, state)

    def _optimizer_step(self):
        self._adopt_new_params()
        try:
            self._torch_optim.step()
        except RuntimeError as e:  # a fused kernel refused this device or dtype at its first step
            if not self._torch_optim.defaults.get("fused"):
                raise
            state = pyro_optim_state(self._torch_optim, self._names)
            params = [p for g in self._torch_optim.param_groups for p in g["params"]]
            self._torch_optim = torch_optimizer(self.optim, params, "foreach")
            load_pyro_optim_state(self._torch_optim, self._names, state)
            warnings.warn(f"fused optimizer unavailable ({e}); using the multi-tensor one")
            self._torch_optim.step()
        self._torch_optim.zero_grad(set_to_none=True)

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
                    self._graph = _CUDAGraphStep(self)
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
            self.speed.cuda_graph
            and x.is_cuda
            and self._plain_elbo
            and not self.speed.sync_every_step
            and not self.speed.validate_every_step
        )

    # Optimizer state -------------------------------------------------------------------------
    def get_state(self):
        """Optimizer state in :meth:`pyro.optim.PyroOptim.get_state` format (whichever path runs)."""
        if self._svi is not None:
            return self.optim.get_state()
        if self._torch_optim is None:
            return dict(self._pending_state or {})
        return pyro_optim_state(self._torch_optim, self._names)

    def set_state(self, state):
        """Load state saved by :meth:`get_state` (or by :meth:`pyro.optim.PyroOptim.get_state`)."""
        if self._svi is not None:
            self.optim.set_state(state)
        elif self._torch_optim is None:
            self._pending_state = state
        else:
            load_pyro_optim_state(self._torch_optim, self._names, state)


class _CUDAGraphStep:
    """Full-size steps captured once in a CUDA graph and replayed for every new batch of that shape.

    PyTorch's whole-network capture recipe (``torch.cuda.graphs``): the optimizer is rebuilt
    ``capturable`` over the same state; ``WARMUP_STEPS`` real steps run eagerly on a side stream;
    then one step is captured with a static input buffer, and each later batch of the same shape is
    copied into that buffer and the graph replayed (the Python of Pyro's tracing runs only during
    capture). Random draws inside the graph advance the same generator as eager draws would. A batch
    of another shape (an epoch's last, partial one) returns ``None`` and runs eagerly, so there is
    one static shape and nothing is captured twice.

    Experimental: written for GPUs but not yet run on one (see ``docs/benchmarks.md``).
    """

    WARMUP_STEPS = 3

    def __init__(self, step):
        self.step = step
        opt = step._torch_optim
        if not _accepts(type(opt), "capturable"):
            raise UserError(f"{type(opt).__name__} cannot run inside a CUDA graph; turn cuda_graph off")
        state = pyro_optim_state(opt, step._names)
        params = [p for g in opt.param_groups for p in g["params"]]
        fused = {"fused": True} if opt.defaults.get("fused") else {}
        step._torch_optim = type(opt)(params, **dict(step.optim.pt_optim_args), capturable=True, **fused)
        load_pyro_optim_state(step._torch_optim, step._names, state)
        self.warm, self.graph, self.shape = 0, None, None
        self.side = torch.cuda.Stream()

    def __call__(self, x):
        step = self.step
        if self.graph is None and self.warm < self.WARMUP_STEPS:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                loss = step._loss_and_backward(x)
                step._optimizer_step()
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            self.shape = self.shape or x.shape  # the shape to capture: the first full-size batch's
            return loss
        if self.graph is None:
            if x.shape != self.shape:
                return None
            self.static_x = x.detach().clone()
            self.graph = torch.cuda.CUDAGraph()
            step._torch_optim.zero_grad(set_to_none=True)
            with pyro.validation_enabled(False), torch.cuda.graph(self.graph):
                loss = trace_elbo_loss(step.loss, step.model, step.guide, self.static_x)
                loss.backward()
                step._torch_optim.step()
            self.static_loss = loss.detach()
        if x.shape != self.static_x.shape or x.dtype != self.static_x.dtype:
            return None
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_loss.clone()
