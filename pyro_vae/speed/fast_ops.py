r"""A faster Bernoulli log-density for the captured loss graph (``Speed(fast_bernoulli=True)``, opt-in).

The Bernoulli likelihood on logits :math:`\ell` (Pyro's ``Bernoulli(logits=...)``, eq. C.1 of Kingma &
Welling 2013) has the log-density

.. math:: \log p(x \mid \ell) = -\big[\max(\ell, 0) - \ell x + \log(1 + e^{-|\ell|})\big],

which PyTorch computes as ``-binary_cross_entropy_with_logits(logits, x, reduction="none")``, with
:func:`torch.log1p` for the last term. On the CPU builds measured for issue 24 (torch 2.14, AVX-512)
``log1p`` runs about 10x slower per element than ``log`` or ``exp`` (1.3 ms against 0.11 ms for
128 x 784 floats on one core; JAX's ``log1p`` took 0.22 ms): the log-density of a 128-image MNIST
batch then costs about 1 ms of a 5-10 ms step, more than any other elementwise work in it.

:func:`rewrite_bce_with_logits` replaces every ``aten.binary_cross_entropy_with_logits`` (no weights,
``reduction="none"``) of a captured graph by :class:`BCEWithLogits`, which computes the same formula
with ``log(1 + u)`` for ``log1p(u)``, :math:`u = e^{-|\ell|} \in (0, 1]`, and the gradient
:math:`(\sigma(\ell) - x)\,g` that PyTorch's own backward computes. ``log(1 + u)`` differs from
``log1p(u)`` by at most about :math:`1.2 \times 10^{-7}` per element (the rounding of :math:`1 + u`), so
a 784-pixel log-density moves by at most :math:`10^{-4}` nats and typically by :math:`10^{-6}`: float
rounding, as with ``torch.compile``, not another estimator; the gradient is unchanged up to rounding
of the sigmoid. This is why it is a switch and not the default: seeded runs are no longer
bit-identical to the reference step (they agree within its float tolerance, ``tests/speed/test_fast_ops.py``).
"""

import torch

__all__ = ["BCEWithLogits", "rewrite_bce_with_logits"]


class BCEWithLogits(torch.autograd.Function):
    """``binary_cross_entropy_with_logits(input, target, reduction="none")`` without ``log1p``."""

    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        return torch.clamp_min(input, 0).sub_(input * target).add_(torch.exp(-input.abs()).add_(1).log_())

    @staticmethod
    def backward(ctx, grad):
        input, target = ctx.saved_tensors
        grad_input = grad * (torch.sigmoid(input) - target) if ctx.needs_input_grad[0] else None
        grad_target = -grad * input if ctx.needs_input_grad[1] else None
        return grad_input, grad_target


def _bce_with_logits(input, target):
    return BCEWithLogits.apply(input, target)


def rewrite_bce_with_logits(graph_module):
    """Replace the graph's plain ``binary_cross_entropy_with_logits`` calls (no ``weight``, no
    ``pos_weight``, ``reduction="none"``) by :class:`BCEWithLogits`, in place; returns how many."""
    op = torch.ops.aten.binary_cross_entropy_with_logits.default
    none = 0  # torch's Reduction::None
    replaced = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is not op:
            continue
        args = list(node.args) + [None] * (5 - len(node.args))
        weight, pos_weight, reduction = args[2], args[3], args[4]
        weight = node.kwargs.get("weight", weight)
        pos_weight = node.kwargs.get("pos_weight", pos_weight)
        reduction = node.kwargs.get("reduction", 1 if reduction is None else reduction)  # torch's default: mean
        if weight is not None or pos_weight is not None or reduction != none:
            continue
        node.target, node.args, node.kwargs = _bce_with_logits, tuple(node.args[:2]), {}
        replaced += 1
    if replaced:
        graph_module.recompile()
    return replaced
