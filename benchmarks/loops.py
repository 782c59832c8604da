r"""The training loops the benchmarks compare, each built for one (architecture, batch size, device).

All three train the same VAE with the same math: a Gaussian encoder
:math:`q_\phi(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))` with
:math:`\sigma = \mathrm{softplus}(\cdot) + 10^{-5}`, reparameterized; a Bernoulli decoder on logits; data
binarized afresh each time a batch is used (:math:`x \sim \mathrm{Bernoulli}(\text{pixel})`); the
one-sample Monte Carlo ELBO (Kingma & Welling 2013, eq. 6) summed over the batch; Adam.

- :class:`PyroVAELoop` (a): pyro-vae's own loop, :meth:`pyro_vae.Trainer.run_steps`; its variants
  (ac) ``--compile``, (ah) ``--precision bf16``, (ach) both, (af) ``fast_bernoulli``, (a1) one
  torch thread (issue 24);
- :class:`TorchVAELoop` (b): the same VAE written in plain PyTorch, the floor for any PPL;
- :class:`ExampleLoop` (c): a loop written the way Pyro's ``examples/vae/vae.py`` and the VAE
  tutorial train: a torchvision ``DataLoader`` with ``ToTensor``, each batch copied to the device,
  ``Trace_ELBO`` with ``pyro.optim.Adam`` through ``SVI.step`` (a float back every step);
- (d) NumPyro and (e) pythae, in :mod:`benchmarks.peers` (optional: ``pip install -e .[bench]``).

Each loop has ``run(k)`` (``k`` steps, no host synchronization required by the harness) and
``sync()``; the harness times blocks of steps between two ``sync()`` calls.
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: use this checkout's pyro_vae
    sys.path.insert(0, str(ROOT))

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import Config, Speed, Trainer

#: the architectures compared: name -> (hidden sizes, activation, z_dim)
ARCHITECTURES = {
    "relu400": ((400,), "relu", 20),  # pytorch/examples' VAE, pyro-vae's default
    "tanh200x2": ((200, 200), "tanh", 50),  # the IWAE paper's one-stochastic-layer MLP (Burda et al. 2015)
    "relu512x2": ((512, 512), "relu", 50),  # the nets of examples/reproduce/mnist_recipe.py (-88 nats)
}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
LOG_2PI = math.log(2 * math.pi)
MIN_SCALE = 1e-5  # pyro_vae.vae.guides.DiagonalGuide.MIN_SCALE


def config_for(arch, batch_size, device, dataset="mnist", data_dir=None, seed=0, lr=1e-3):
    hidden, activation, z_dim = ARCHITECTURES[arch]
    return Config(dataset=dataset, data_dir=data_dir, hidden=hidden, activation=activation, z_dim=z_dim,
                  batch_size=batch_size, device=str(device), seed=seed, lr=lr)  # fmt: skip


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def mlp(sizes, activation):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


# (a) ------------------------------------------------------------------------------------------
class PyroVAELoop:
    """(a) pyro-vae through its API: a :class:`pyro_vae.Trainer` taking ``k`` steps at a time."""

    name = "a"
    label = "pyro-vae"

    def __init__(self, config, speed=None):
        self.trainer = Trainer(config, speed=speed or Speed())
        self.device = self.trainer.device
        self.last = None

    def run(self, k):
        self.last = self.trainer.run_steps(k)

    def sync(self):
        synchronize(self.device)


class PyroVAEBaselineLoop(PyroVAELoop):
    """(a0) pyro-vae's loop before this work: ``SVI.step`` with validation and a host read per step."""

    name = "a0"
    label = "pyro-vae, SVI.step (before)"

    def __init__(self, config):
        super().__init__(config, Speed.baseline())


class PyroVAECompiledLoop(PyroVAELoop):
    """(ac) pyro-vae with ``--compile``: the captured loss graph compiled by inductor (opt-in; float
    rounding changes, relative 1e-7 on the losses)."""

    name = "ac"
    label = "pyro-vae --compile"

    def __init__(self, config):
        super().__init__(config, Speed(compile="inductor"))


class PyroVAEBF16Loop(PyroVAELoop):
    """(ah) pyro-vae with ``--precision bf16``: the networks under CPU/CUDA autocast in bfloat16, the
    ELBO, gradients and Adam state in float32 (:class:`pyro_vae.train.distributed.DistributedTrainer`)."""

    name = "ah"
    label = "pyro-vae --precision bf16"

    def __init__(self, config, compile=None):
        from pyro_vae.train.distributed import DistributedTrainer

        self.trainer = DistributedTrainer(config, Speed(compile=compile), precision="bf16")
        self.device = self.trainer.device
        self.last = None


class PyroVAEBF16CompiledLoop(PyroVAEBF16Loop):
    """(ach) pyro-vae with ``--precision bf16 --compile``."""

    name = "ach"
    label = "pyro-vae --precision bf16 --compile"

    def __init__(self, config):
        super().__init__(config, compile="inductor")


class PyroVAEFastBernoulliLoop(PyroVAELoop):
    """(af) pyro-vae with ``Speed(fast_bernoulli=True)``: the Bernoulli log-density without ``log1p``
    (:mod:`pyro_vae.speed.fast_ops`; float rounding changes, relative 1e-7)."""

    name = "af"
    label = "pyro-vae, Speed(fast_bernoulli=True)"

    def __init__(self, config):
        super().__init__(config, Speed(fast_bernoulli=True))


class PyroVAEOneThreadLoop(PyroVAELoop):
    """(a1) pyro-vae with one torch intra-op thread (set for its own steps, restored after)."""

    name = "a1"
    label = "pyro-vae, 1 torch thread"

    def run(self, k):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            super().run(k)
        finally:
            torch.set_num_threads(threads)


# (b) ------------------------------------------------------------------------------------------
class TorchVAE(nn.Module):
    r"""The VAE in plain PyTorch: the same nets, the same estimator, no Pyro.

    ``loss(x)`` is :math:`-\sum_i [\log p(x_i \mid z_i) + \log p(z_i) - \log q(z_i \mid x_i)]` with
    :math:`z_i = \mu_i + \sigma_i \epsilon_i`: the value (and gradient) of Pyro's ``Trace_ELBO``
    for :class:`pyro_vae.VAE`.
    """

    def __init__(self, x_dim, z_dim, hidden, activation):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = mlp((x_dim,) + tuple(hidden) + (2 * z_dim,), activation)
        self.decoder = mlp((z_dim,) + tuple(hidden) + (x_dim,), activation)

    def loss(self, x):
        x = x.reshape(len(x), -1)  # items (1, H, W) as vectors
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + MIN_SCALE
        z = loc + torch.randn_like(loc) * scale
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2).sum(-1) + self.z_dim * LOG_2PI)
        log_qz = -0.5 * (((z - loc) / scale).pow(2).sum(-1) + self.z_dim * LOG_2PI) - scale.log().sum(-1)
        return -(log_px + log_pz - log_qz).sum()

    @torch.no_grad()
    def test_elbo(self, x, chunk=10_000):
        """Mean one-sample ELBO of the rows of ``x`` (nats per item)."""
        return -sum(self.loss(x[i : i + chunk]).item() for i in range(0, len(x), chunk)) / len(x)


class TorchVAELoop:
    """(b) the hand-written PyTorch loop: data on the device, shuffled and binarized there."""

    name = "b"
    label = "hand-written PyTorch"

    def __init__(self, config, train=None, fused=True, seed=0):
        from pyro_vae.train.build import load_prepared, resolve_device

        self.device = resolve_device(config.device)
        if train is None:
            train = load_prepared(config.replace(likelihood="bernoulli"), self.device)[2]
        train = train.tensor() if hasattr(train, "tensor") else train  # a Trainer's TrainingData
        train = train.reshape(len(train), -1)  # items keep their shape (1, 28, 28); these loops use vectors
        self.train, self.batch_size = train, config.batch_size
        torch.manual_seed(seed)
        self.vae = TorchVAE(train.shape[1], config.z_dim, config.hidden, config.activation).to(self.device)
        kwargs = {"fused": True} if fused else {}
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=config.lr, **kwargs)
        self.order, self.position = None, 0
        self.last = None

    def step(self, x):
        loss = self.vae.loss(x)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, k):
        losses = []
        for _ in range(k):
            if self.order is None or self.position >= len(self.train):
                self.order, self.position = torch.randperm(len(self.train), device=self.device), 0
            x = torch.bernoulli(self.train[self.order[self.position : self.position + self.batch_size]])
            self.position += self.batch_size
            losses.append(self.step(x))
        self.last = losses

    def epoch(self):
        """One pass in a fresh order; returns the train ELBO per item (one host read)."""
        self.order, self.position = None, 0
        n = len(self.train)
        self.run(-(-n // self.batch_size))
        self.order = None
        return -torch.stack(self.last).double().sum().item() / n

    def sync(self):
        synchronize(self.device)


# (c) ------------------------------------------------------------------------------------------
class ExampleEncoder(nn.Module):
    """As in Pyro's ``examples/vae/vae.py``: returns ``(z_loc, z_scale)``."""

    def __init__(self, x_dim, z_dim, hidden, activation):
        super().__init__()
        self.x_dim = x_dim
        self.net = mlp((x_dim,) + tuple(hidden) + (2 * z_dim,), activation)

    def forward(self, x):
        x = x.reshape(-1, self.x_dim)
        z_loc, raw = self.net(x).chunk(2, dim=-1)
        return z_loc, F.softplus(raw) + MIN_SCALE


class ExampleVAE(nn.Module):
    """Model and guide written as in Pyro's ``examples/vae/vae.py`` (the same nets as pyro-vae's)."""

    def __init__(self, z_dim, hidden, activation, x_dim=784):
        super().__init__()
        self.encoder = ExampleEncoder(x_dim, z_dim, hidden, activation)
        self.decoder = mlp((z_dim,) + tuple(hidden) + (x_dim,), activation)
        self.z_dim, self.x_dim = z_dim, x_dim

    def model(self, x):
        # ("example_" names keep these apart from loop (a)'s in Pyro's one global parameter store)
        pyro.module("example_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("example_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


class ExampleLoop:
    """(c) the loop of Pyro's VAE example and tutorial: DataLoader + ToTensor, per-batch copies, SVI.step."""

    name = "c"
    label = "Pyro example loop"

    def __init__(self, config, num_workers=0, seed=0):
        from torchvision import datasets, transforms

        from pyro_vae.data.load import load_dataset
        from pyro_vae.data.sources import cache_dir, data_root
        from pyro_vae.train.build import resolve_device

        self.device = resolve_device(config.device)
        if config.dataset == "mnist":
            root = data_root(config.data_dir)
            if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
                # archives only (perhaps read-only): pyro-vae's reader unpacks a copy in its cache, read from there
                load_dataset("mnist", config.data_dir)
                root = cache_dir() if (cache_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists() else root
            train_set = datasets.MNIST(str(root), train=True, download=True, transform=transforms.ToTensor())
        else:  # a smoke run on scikit-learn's digits: the same per-item ToTensor path
            train_set = _DigitImages(transforms.ToTensor())
        x_dim = train_set[0][0].numel()
        kwargs = {"num_workers": num_workers, "pin_memory": self.device.type == "cuda"}
        self.loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, **kwargs)
        torch.manual_seed(seed)
        self.vae = ExampleVAE(config.z_dim, config.hidden, config.activation, x_dim).to(self.device)
        self.svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": config.lr}), loss=Trace_ELBO())
        self.batches = None
        self.epoch_loss = 0.0

    def run(self, k):
        for _ in range(k):
            try:
                x, _ = next(self.batches)
            except (StopIteration, TypeError):
                self.batches, self.epoch_loss = iter(self.loader), 0.0
                x, _ = next(self.batches)
            x = x.to(self.device)
            x = torch.bernoulli(x)  # dynamic binarization, as loops (a) and (b) do
            self.epoch_loss += self.svi.step(x)

    def sync(self):
        synchronize(self.device)


class _DigitImages(torch.utils.data.Dataset):
    """scikit-learn's 8x8 digits as uint8 images, for smoke runs of loop (c)."""

    def __init__(self, transform):
        import numpy as np
        from sklearn.datasets import load_digits

        self.images = np.round(load_digits().images / 16 * 255).astype(np.uint8)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


from peers import NumPyroLoop, PythaeLoop, Unavailable  # noqa: E402, F401  (d), (e): optional extra ``bench``; Unavailable re-exported

LOOPS = {"a": PyroVAELoop, "a0": PyroVAEBaselineLoop, "b": TorchVAELoop, "c": ExampleLoop, "d": NumPyroLoop,
         "e": PythaeLoop, "ac": PyroVAECompiledLoop, "ah": PyroVAEBF16Loop, "ach": PyroVAEBF16CompiledLoop,
         "af": PyroVAEFastBernoulliLoop, "a1": PyroVAEOneThreadLoop}  # fmt: skip
