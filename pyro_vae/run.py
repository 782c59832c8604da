"""A run folder: what it holds, how it is written, and the run as a Python object.

A run folder holds ``config.json`` (every setting, the data's shape and the package versions),
``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.pt`` and pictures (:data:`RUN_FILES`).
:class:`Run` is a trained VAE with its settings and metrics (load one with :func:`load_run`):
sample, reconstruct, evaluate.
"""

import json
import math
import platform
from datetime import datetime
from pathlib import Path

import torch

import pyro

from . import plots
from .build import build_vae, prepare_data, resolve_device
from .checkpoint import atomic_write_text, load_checkpoint
from .config import Config
from .errors import UserError
from .evaluation import evaluate_terms, summarize

#: Files a run folder holds; ``--overwrite`` removes exactly these.
RUN_FILES = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png", "curves.png",
    "manifold.png", "evaluation.json",
)  # fmt: skip


def package_versions():
    """The versions of pyro-vae, Pyro, PyTorch, torchvision, NumPy and Python (recorded in ``config.json``)."""
    import numpy
    import torchvision

    return {
        "pyro_vae": __import__("pyro_vae").__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def new_run_dir(config, base="runs"):
    """A new folder name under ``base``: ``<dataset or data file>-<likelihood>-<date>-<time>[-i]``."""
    stem = f"{config.dataset if not config.data else Path(config.data).stem}-{config.likelihood}-"
    stem += datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = Path(base) / stem, 1
    while path.exists():
        i += 1
        path = Path(base) / f"{stem}-{i}"
    return path


def holds_run(out):
    """True when the folder ``out`` holds (part of) a run."""
    return any((Path(out) / f).exists() for f in ("config.json", "checkpoint.pt", "metrics.jsonl"))


def read_metrics(path, upto_epoch=None):
    """The records of ``metrics.jsonl`` (those of epochs up to ``upto_epoch``), ``[]`` if there is none."""
    path = Path(path)
    metrics = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                if upto_epoch is None or m["epoch"] <= upto_epoch:
                    metrics.append(m)
    return metrics


def write_config(out, config, meta):
    """Write ``config.json``: the settings and ``meta`` (data shape, versions), atomically."""
    atomic_write_text(Path(out) / "config.json", json.dumps({**config.to_dict(), **meta}, indent=2) + "\n")


def write_metrics(out, metrics):
    """Write ``metrics.jsonl`` anew with ``metrics`` (atomically)."""
    atomic_write_text(Path(out) / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def append_metrics(out, record):
    """Append one epoch's record to ``metrics.jsonl``."""
    with open(Path(out) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


class Run:
    """A trained VAE with its settings and metrics; returned by :func:`~pyro_vae.fit` and :func:`load_run`.

    :ivar Path directory: the run folder.
    :ivar Config config: the settings it was trained with.
    :ivar dict meta: ``config.json`` as saved (settings, data shape, package versions).
    :ivar vae: the :class:`~pyro_vae.model.VAE`, in eval mode.
    :ivar list metrics: one dict per epoch, as in ``metrics.jsonl``.
    """

    def __init__(self, directory, config, meta, vae, metrics):
        self.directory = Path(directory)
        self.config, self.meta, self.vae, self.metrics = config, meta, vae.eval(), metrics

    @property
    def image_shape(self):
        return tuple(self.meta["image_shape"])

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def test_data(self):
        """The test set, prepared for the likelihood exactly as during training (same fixed draw)."""
        return prepare_data(self.config, self.vae.likelihood, self.device)[2]

    def sample(self, n=64, seed=0):
        """Decoder means for ``n`` draws from the prior, shape ``(n, D)``, on the CPU."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.vae.sample(n, generator=generator).cpu()

    def reconstruct(self, x):
        """Decoder means for one draw from :math:`q(z \\mid x)` for each row of ``x``, on the CPU."""
        return self.vae.reconstruct(torch.as_tensor(x, dtype=torch.float32, device=self.device)).cpu()

    def evaluate(self, samples=1000, subset=None, progress=None):
        """Test ELBO, its two terms, importance-sampled log-likelihood (nats per item), bits per
        dimension and active units (see :mod:`pyro_vae.evaluation`).

        :param int samples: importance samples ``K`` per item.
        :param int subset: use only the first ``subset`` test items.
        :returns: dict with ``test_elbo``, ``test_log_likelihood``, ``samples``, ``items``,
            ``reconstruction``, ``kl``, ``bits_per_dim``, ``active_units`` and the other keys of
            :func:`~pyro_vae.evaluation.summarize`.
        """
        if samples < 1:
            raise UserError(f"--samples must be at least 1, got {samples}")
        if subset is not None and subset < 1:
            raise UserError(f"--subset must be at least 1, got {subset}")
        x = self.test_data()
        if subset is not None:
            x = x[:subset]
        scores = evaluate_terms(self.vae, x, num_samples=samples, progress=progress)
        return summarize(scores, self.vae.likelihood, math.prod(x.shape[1:]))

    # Pictures ------------------------------------------------------------------------------------
    def _display_range(self):
        """[0, 1] for images; the data's own range for real-valued user data."""
        return (0.0, 1.0) if self.vae.likelihood.domain != "real" or not self.config.data else None

    def save_samples(self, path, n=64, seed=0):
        plots.save_grid(self.sample(n, seed), self.image_shape, path, value_range=self._display_range())

    def write_pictures(self, test):
        """``samples.png``, ``reconstructions.png``, ``curves.png`` and, for a 2-D latent space, ``manifold.png``."""
        d = self.directory
        torch.manual_seed(self.config.seed)
        self.save_samples(d / "samples.png")
        x = test[:16]
        pairs = torch.cat([x.cpu().reshape(len(x), -1), self.reconstruct(x)])
        title = "test inputs (top) and reconstructions (bottom)"
        plots.save_grid(pairs, self.image_shape, d / "reconstructions.png", ncol=len(x), title=title,
                        value_range=self._display_range())  # fmt: skip
        if self.metrics:
            plots.save_curves(self.metrics, d / "curves.png", title=f"{self.config.likelihood} VAE on {self.config.dataset}")
        if self.config.z_dim == 2:
            z = plots.manifold_codes(20, device=self.device)
            plots.save_grid(self.vae.decode(z), self.image_shape, d / "manifold.png", ncol=20,
                            value_range=self._display_range())  # fmt: skip


def load_run(directory, device="auto"):
    """Load the run in ``directory`` (its ``config.json`` and ``checkpoint.pt``) onto ``device``."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise UserError(f"{directory} is not a pyro-vae run folder (no config.json)")
    try:
        meta = json.loads((directory / "config.json").read_text())
        config = Config.from_dict(meta)
        x_dim = tuple(meta["item_shape"]) if meta.get("item_shape") else int(meta["x_dim"])  # item shape since images
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{directory / 'config.json'} is damaged ({e})") from None
    device = resolve_device(device)
    state = load_checkpoint(directory / "checkpoint.pt", map_location=device)
    if Config.from_dict(state["config"]).differences(config):
        raise UserError(f"the checkpoint in {directory} is from another configuration than its config.json")
    vae = build_vae(config, x_dim, meta.get("levels")).to(device)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"the checkpoint in {directory} does not fit the model its config.json describes") from None
    metrics = read_metrics(directory / "metrics.jsonl")
    return Run(directory, config, meta, vae, metrics)


def write_evaluation(run, result):
    """Write ``evaluation.json`` into the run folder (atomically)."""
    atomic_write_text(run.directory / "evaluation.json", json.dumps(result, indent=2) + "\n")
