r"""Which devices can train with ``precision="bf16"``: CUDA, and CPUs with bfloat16 arithmetic.

``--precision bf16`` runs the networks (every :class:`~pyro_vae.vae.nets.MLP`) under
:func:`torch.autocast` with ``dtype=torch.bfloat16`` and casts their outputs back to float32
(:func:`pyro_vae.train.distributed.autocast_networks`): the matrix products and the activations run in
bfloat16 (8 bits of mantissa, float32's exponent range), while the parameters, their gradients, the
optimizer state, the distributions' log-densities, the KL and the ELBO stay float32.

On the CPU that only pays where the CPU multiplies bfloat16 natively: the AVX-512 BF16 instructions
(``VDPBF16PS``; Intel Cooper Lake and later, AMD Zen 4 and later) or Intel's AMX tiles (Sapphire
Rapids and later). PyTorch's CPU matrix products (oneDNN) use them; elsewhere they convert to float32
and back, slower than float32 alone. :func:`cpu_bf16_features` finds them, :func:`check_precision`
refuses bf16 on a CPU without them (and on any device other than CUDA or the CPU).

Measured on this project's 2-core AMD EPYC with ``avx512_bf16`` (issue 24): the four linear layers of
the 784-400-20 network, forward and backward, took 1.35x less time under CPU autocast at batch 128 and
2x less at batch 1024; what a whole step gains, and what bf16 costs in test ELBO, is in
``docs/benchmarks.md`` ("bfloat16 on the CPU").
"""

import sys

import torch

from ..errors import UserError

__all__ = ["PRECISIONS", "check_precision", "cpu_bf16_features"]

PRECISIONS = ("fp32", "bf16")

#: the CPU feature flags (as Linux's /proc/cpuinfo names them) with native bfloat16 products
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags(path="/proc/cpuinfo"):
    """The feature flags of the first processor listed in ``path`` (Linux), or ``None`` if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def _torch_flags():
    """The flags PyTorch's own CPU check reports (``torch.cpu._is_avx512_bf16_supported`` and
    ``_is_amx_tile_supported``, private functions of torch >= 2.3), or ``None`` where they are missing."""
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found, any_check = set(), False
    for flag, name in checks.items():
        check = getattr(torch.cpu, name, None)
        if check is None:
            continue
        any_check = True
        try:
            if check():
                found.add(flag)
        except (RuntimeError, AttributeError):
            continue
    return found if any_check else None


def cpu_bf16_features():
    """The CPU's bfloat16 features among :data:`BF16_FLAGS`, as a sorted list (empty: none).

    Read from ``/proc/cpuinfo`` on Linux and from PyTorch's own CPU check (which runs CPUID) where
    it exists; a feature either reports counts. On a system where neither can be read, the list
    is empty (bf16 is refused rather than guessed)."""
    found = set()
    if sys.platform.startswith("linux"):
        found |= (_cpuinfo_flags() or set()) & set(BF16_FLAGS)
    found |= _torch_flags() or set()
    return sorted(found)


def check_precision(precision, device):
    """Refuse a precision this device cannot run.

    :param str precision: ``"fp32"`` or ``"bf16"``.
    :param device: the training device (a :class:`torch.device` or its name).
    :raises UserError: for an unknown precision; for ``bf16`` on a CPU without AVX512_BF16 or AMX
        (:func:`cpu_bf16_features`), or on a device other than CUDA or the CPU.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision != "bf16":
        return
    kind = torch.device(device).type
    if kind == "cuda":
        return
    if kind != "cpu":
        raise UserError(f"--precision bf16 runs on CUDA or on a CPU with AVX512_BF16 or AMX, not on {kind}; use fp32")
    if not cpu_bf16_features():
        raise UserError("--precision bf16 on the CPU needs bfloat16 instructions (AVX512_BF16 or AMX), which this "
                        "CPU lacks: there bf16 would run slower than fp32; use --precision fp32")  # fmt: skip
