"""A VAE in the fewest lines a Pyro user would write, using pyro-vae's parts.

Kingma & Welling (2013): the model is p(z) p(x|z), the guide is q(z|x), and SVI maximizes the
ELBO E_q[log p(x, z) - log q(z|x)]. Trains on scikit-learn's bundled digits in a few seconds:

    python examples/vae_in_pyro.py --epochs 30
"""

import argparse

import torch
import torch.nn.functional as F

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae.data.load import load_dataset
from pyro_vae.vae.nets import MLP


def main(args):
    pyro.clear_param_store()  # a stale store would silently keep old parameters
    pyro.set_rng_seed(args.seed)
    data = load_dataset("digits")  # images (N, 1, 8, 8) in [0, 1]
    train, test = data.train.flatten(1), data.test.flatten(1)  # as vectors (N, 64) for the MLPs
    D, Z = data.x_dim, args.z_dim
    encoder, decoder = MLP(D, (128,), 2 * Z), MLP(Z, (128,), D)

    def model(x):  # p(z) p(x|z)
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):  # q(z|x), reparameterized
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            loc, raw_scale = encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale)).to_event(1))

    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    test = torch.bernoulli(test)  # binarized once
    for epoch in range(1, args.epochs + 1):
        loss = sum(svi.step(torch.bernoulli(x)) for x in train[torch.randperm(len(train))].split(64))
        if epoch % 10 == 0 or epoch == args.epochs:
            test_elbo = -svi.evaluate_loss(test) / len(test)
            print(f"epoch {epoch:3d}  train ELBO {-loss / len(train):8.3f}  test ELBO {test_elbo:8.3f} nats")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
