"""Training cost of each likelihood family relative to the Bernoulli, measured as ratios in one run.

Every family takes SVI steps on the same 8-bit MNIST-shaped batch (784 pixels, default batch 256,
the 784-400-20 MLPs), prepared as the training loop prepares it (binarization, dequantization).
The families are interleaved in rounds and each one's fastest round is kept, so that load from
other processes on a shared machine affects all of them alike. Prints seconds per step and the
ratio to ``bernoulli``.

    python benchmarks/likelihood_cost.py [--batch-size 256] [--steps 20] [--rounds 5]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import pyro
from pyro.infer import SVI, Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pyro_vae
from pyro_vae import LIKELIHOODS, VAE, build_likelihood  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, 784)).float() / 255
    setups = {}
    for name in LIKELIHOODS.names():
        pyro.clear_param_store()
        vae = VAE(784, 20, (400,), "relu", build_likelihood(name, levels=256))
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(vae.likelihood.prepare_batch(x))  # warm up
        setups[name] = (vae, svi, pyro.get_param_store().get_state())
    best = {name: float("inf") for name in setups}
    for _ in range(args.rounds):
        for name, (vae, svi, state) in setups.items():
            pyro.get_param_store().set_state(state)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                svi.step(vae.likelihood.prepare_batch(x))
            best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)
    base = best["bernoulli"]
    print(f"{'family':22s} {'ms/step':>8s} {'vs bernoulli':>13s}   (batch {args.batch_size}, best of {args.rounds} rounds)")
    for name, seconds in best.items():
        print(f"{name:22s} {1000 * seconds:8.1f} {seconds / base:12.2f}x")


if __name__ == "__main__":
    main()
