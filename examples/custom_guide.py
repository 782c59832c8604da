#!/usr/bin/env python
r"""Write your own guide q(z|x), register it, and train it from Python and from the command line.

A guide is one class following the contract of :class:`pyro_vae.vae.guides.Guide`: the constructor
receives ``(x_dim, z_dim, hidden, activation)`` plus options of its own; ``forward(x)`` returns a
distribution over ``z`` with ``batch_shape (B,)`` and ``event_shape (z_dim,)``; its nets are
submodules. The model, its site names and the training loop do not change. Three guides:

- :class:`LowRankGuide`: :math:`\mathcal{N}(\mu(x), W(x) W(x)^\top + \mathrm{diag}\,d(x))` with
  :math:`W(x)` of shape ``(z_dim, rank)``: the strongest posterior correlations at
  :math:`O(J r^2)`, reparameterized, so every objective trains it.
- :class:`ResidualGuide`: a diagonal Gaussian whose mean and scale come from a residual MLP,
  :math:`h_{l+1} = h_l + W_2\,\mathrm{act}(W_1\,\mathrm{LayerNorm}(h_l))` (He et al. 2016).
- :class:`MixtureGuide`: :math:`q(z \mid x) = \sum_c \pi_c(x)\,\mathcal{N}(z; \mu_c(x), \mathrm{diag}\,\sigma_c^2(x))`.
  A draw picks a component, which has no reparameterization, so ``elbo``/``iwae`` refuse it with a
  clear error; reweighted wake-sleep (``objective="rws"``) trains it, since it needs only
  :math:`\log q` of fixed draws.

Each is trained next to the built-in diagonal guide (same data, nets, budget and seed) and scored
on the same test numbers, printed and saved in ``guides.json`` under ``--out``::

    python examples/custom_guide.py                       # digits, 20 epochs each
    python examples/custom_guide.py --dataset mnist --data-dir ~/data --hidden 400 --z-dim 10 --epochs 5
    python examples/custom_guide.py --smoke               # 1 epoch each, seconds (what the tests run)

From the command line nothing needs registering: name the class by file and class name::

    pyro-vae fit --dataset digits --guide examples/custom_guide.py:ResidualGuide --epochs 20
"""

import argparse
import json
import shlex
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

import pyro.distributions as dist

from pyro_vae import GUIDES, Guide, UserError, fit, load_run
from pyro_vae.cli import main as cli_main
from pyro_vae.vae.nets import ACTIVATIONS, MLP


class LowRankGuide(Guide):
    r"""A Gaussian with a low-rank-plus-diagonal covariance,
    :math:`\mathcal{N}(\mu(x), W(x) W(x)^\top + \operatorname{diag} d(x))`.

    :param int rank: the rank :math:`r` of the factor :math:`W(x)`.
    """

    def __init__(self, x_dim, z_dim, hidden, activation="tanh", rank=2):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.rank = rank
        # one network computes all the parameters: mu (z_dim), d (z_dim) and W (z_dim * rank)
        self.net = MLP(x_dim, hidden, z_dim * (2 + rank), activation)

    def options(self):  # recorded in config.json, so that load_run rebuilds the same guide
        return {"rank": self.rank}

    def forward(self, x):
        loc, raw_diag, factor = self.net(x).split([self.z_dim, self.z_dim, self.z_dim * self.rank], dim=-1)
        factor = factor.unflatten(-1, (self.z_dim, self.rank)) / self.rank**0.5
        # batch_shape (B,), event_shape (z_dim,): what the model's site "z" expects
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + 1e-5)


class ResidualBlock(nn.Module):
    r""":math:`h + W_2\,\mathrm{act}(W_1\,\mathrm{LayerNorm}(h))`: a pre-norm residual block."""

    def __init__(self, width, activation):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[activation](), nn.Linear(width, width))

    def forward(self, h):
        return h + self.inner(self.norm(h))


class ResidualGuide(Guide):
    """A diagonal Gaussian from a residual encoder with ``blocks`` blocks of width ``hidden[-1]``."""

    def __init__(self, x_dim, z_dim, hidden, activation="relu", blocks=2):
        super().__init__(x_dim, z_dim, hidden, activation)
        width = hidden[-1]
        self.blocks = blocks
        self.embed = nn.Linear(x_dim, width)
        self.body = nn.Sequential(*(ResidualBlock(width, activation) for _ in range(blocks)))
        self.head = nn.Linear(width, 2 * z_dim)

    def options(self):
        return {"blocks": self.blocks}

    def forward(self, x):
        loc, raw_scale = self.head(self.body(self.embed(x))).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)  # elementwise: .to_event(1)


class MixtureGuide(Guide):
    """A mixture of ``components`` diagonal Gaussians with weights, means and scales from one MLP."""

    def __init__(self, x_dim, z_dim, hidden, activation="relu", components=3):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.components = components
        self.net = MLP(x_dim, hidden, components * (1 + 2 * z_dim), activation)

    def options(self):
        return {"components": self.components}

    def forward(self, x):
        logits, loc_scale = self.net(x).split([self.components, 2 * self.components * self.z_dim], dim=-1)
        loc, raw_scale = loc_scale.unflatten(-1, (self.components, 2 * self.z_dim)).chunk(2, dim=-1)
        parts = dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)  # batch (B, C), event (z_dim,)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--hidden", default="64", help="hidden layer widths, comma-separated")
    p.add_argument("--z-dim", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=200, help="importance samples per test image")
    p.add_argument("--subset", type=int, default=None, help="evaluate on the first N test images [default: all]")
    p.add_argument("--out", default="runs/custom-guide", help="folder for the run folders and guides.json")
    p.add_argument("--smoke", action="store_true", help="1 epoch each on digits: a quick check that everything runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs, args.samples = "digits", 1, 20
    out = Path(args.out)
    common = dict(dataset=args.dataset, data_dir=args.data_dir, hidden=args.hidden, z_dim=args.z_dim,
                  epochs=args.epochs, seed=0, quiet=True, overwrite=True)  # fmt: skip
    results = {}

    def score(name, run):
        result = run.evaluate(samples=args.samples, subset=args.subset)
        results[name] = result
        elbo, log_px = result["test_elbo"], result["test_log_likelihood"]
        print(f"{name:28s} test ELBO {elbo:9.2f}   log p(x) {log_px:9.2f}   gap {log_px - elbo:5.2f} nats")

    # 1. From Python: register the classes under names, then use the names like built-in guides.
    #    (A run trained so reloads with load_run only in a process where the same registration has run;
    #    registering at import, with @GUIDES.register("name") on the class, also works, but the CLI below
    #    runs this file afresh, which would register the names twice.)
    for name, cls in [("low-rank-mvn", LowRankGuide), ("residual", ResidualGuide), ("mixture", MixtureGuide)]:
        if name not in GUIDES:
            GUIDES.register(name, cls)
    score("diagonal (built in), elbo", fit(guide="diagonal", out=out / "diagonal", **common))
    score("low-rank-mvn, elbo", fit(guide="low-rank-mvn", out=out / "low-rank-mvn", **common))
    score("residual, elbo", fit(guide="residual", out=out / "residual", **common))

    # The mixture cannot be reparameterized: elbo refuses it before training, with a clear message...
    try:
        fit(guide="mixture", out=out / "mixture-elbo", **common)
    except UserError as e:
        print(f"mixture with elbo refused, as it should be: {e}")
    # ...and reweighted wake-sleep trains it.
    score("mixture, rws K=5", fit(guide="mixture", objective="rws", particles=5, out=out / "mixture-rws", **common))

    # 2. From the command line: name the class by file and class name; nothing is registered.
    command = [
        "fit", "--dataset", args.dataset, "--hidden", args.hidden, "--z-dim", str(args.z_dim),
        "--epochs", str(args.epochs), "--seed", "0", "--guide", f"{Path(__file__).resolve()}:ResidualGuide",
        "--out", str(out / "residual-cli"), "--overwrite", "--quiet",
    ] + (["--data-dir", args.data_dir] if args.data_dir else [])  # fmt: skip
    print("$ pyro-vae " + shlex.join(command))
    code = cli_main(command)
    if code != 0:
        raise SystemExit(code)
    score("residual (CLI), elbo", load_run(out / "residual-cli", trust_guide=True))  # our own guide file

    (out / "guides.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'guides.json'}")
    return results


if __name__ == "__main__":
    main()
