"""What the tests of the speed layer (tests/test_speed_*.py) share: a tiny VAE, digits, fixed steps."""

import torch

import pyro
import pyro.optim
from pyro.infer import Trace_ELBO

from pyro_vae.speed import SVIStep
from pyro_vae.vae.model import VAE


def small_vae():
    torch.manual_seed(1)
    return VAE(64, 4, (32,), "tanh")


DIGITS = None


def batch(n=16, seed=2):
    """``n`` of scikit-learn's 8x8 digits, thresholded; ``seed`` picks which."""
    global DIGITS
    if DIGITS is None:
        from sklearn.datasets import load_digits

        DIGITS = torch.as_tensor(load_digits().data > 8, dtype=torch.float32)
    start = (seed * n) % (len(DIGITS) - n)
    return DIGITS[start : start + n]


def grads_of(loss, params):
    return torch.autograd.grad(loss, params)


def run_steps(speed, n=6, elbo=None, lr=1e-2, device="cpu"):
    """``n`` steps from a fixed init on fixed batches on ``device``; returns (losses, final params)."""
    pyro.clear_param_store()
    vae = small_vae().to(device)
    step = SVIStep(vae.model, vae.guide, elbo or Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": lr}), speed)
    pyro.set_rng_seed(11)
    losses = [step(batch(seed=20 + i).to(device)).item() for i in range(n)]
    return losses, [p.detach().clone() for p in vae.parameters()], step

