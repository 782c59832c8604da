"""A run folder as a Python object: load a trained model, sample, reconstruct, evaluate."""

import json
from pathlib import Path

import torch

from . import plots
from .checkpoint import atomic_write_text, load_checkpoint
from .config import Config
from .errors import UserError
from .evaluation import evaluate_terms, summarize


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
        from .training import prepare_data

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
        return summarize(scores, self.vae.likelihood, x.shape[1])

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
        pairs = torch.cat([x.cpu(), self.reconstruct(x)])
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
    from .training import build_vae, resolve_device

    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise UserError(f"{directory} is not a pyro-vae run folder (no config.json)")
    try:
        meta = json.loads((directory / "config.json").read_text())
        config = Config.from_dict(meta)
        x_dim = int(meta["x_dim"])
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
    metrics = []
    if (directory / "metrics.jsonl").exists():
        metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return Run(directory, config, meta, vae, metrics)


def write_evaluation(run, result):
    atomic_write_text(run.directory / "evaluation.json", json.dumps(result, indent=2) + "\n")
