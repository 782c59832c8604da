r"""The loss captured once per batch shape as a graph of tensor operations, and replayed (:class:`CapturedLoss`).

Pyro's Python runs at capture only; the replay runs the same operations, with the same values,
gradients and random draws. This is what Pyro's :class:`~pyro.infer.JitTrace_ELBO` does with the
deprecated :func:`torch.jit.trace`.
"""

import logging
import warnings

import torch

from .fast_ops import rewrite_bce_with_logits
from .loss import pyro_internals


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
    :param bool fast_bernoulli: replace the graph's Bernoulli log-densities on logits by
        :class:`~pyro_vae.speed.fast_ops.BCEWithLogits` (no ``log1p``; float rounding changes, see
        :mod:`pyro_vae.speed.fast_ops`).
    """

    MAX_SHAPES = 4

    def __init__(self, loss_fn, compile=None, fast_bernoulli=False):
        self.loss_fn, self.compile, self.fast_bernoulli = loss_fn, compile, fast_bernoulli
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

        pyro_internals()  # their one-time check runs eagerly, not inside the trace on fake tensors
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = make_fx(self.loss_fn, tracing_mode="fake", _allow_non_fake_inputs=True)(x)
        except Exception as e:  # data-dependent control flow, or an operation fake tensors cannot run
            first_line = (str(e).strip().splitlines() or [""])[0]
            return self._give_up(f"{type(e).__name__}: {first_line}")
        graph.graph.eliminate_dead_code()
        graph.recompile()
        if self.fast_bernoulli:
            rewrite_bce_with_logits(graph)
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
