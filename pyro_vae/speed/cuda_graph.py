r"""Experimental: a full-size SVI step captured in a CUDA graph and replayed (``Speed(experimental_cuda_graph=True)``).

On a GPU, a VAE step of a few small matrix products is bound by the launch of its kernels and by
Pyro's Python between them. A CUDA graph (:class:`torch.cuda.CUDAGraph`) records the kernels of one
step once and replays them with one launch. This module follows PyTorch's whole-network capture
recipe; it has been written for GPUs but **has not yet been run on one**, so it is off by default
and behind a switch named experimental until a GPU run has checked it against the eager step.
"""

import torch

import pyro

from ..errors import UserError
from .loss import trace_elbo_loss
from .optim import accepts, load_pyro_optim_state, pyro_optim_state


class CUDAGraphStep:
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
        if not accepts(type(opt), "capturable"):
            raise UserError(f"{type(opt).__name__} cannot run inside a CUDA graph; turn experimental_cuda_graph off")
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
