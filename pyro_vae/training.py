"""Training by stochastic variational inference: Algorithm 1 of Kingma & Welling (2013).

Each step takes a minibatch of :math:`M` datapoints (an index slice of the data, which lives on the
training device and is reshuffled each epoch), prepares it for the likelihood (e.g. a fresh dynamic
binarization) and takes one :class:`pyro.infer.SVI` step on the objective's estimate of
:math:`-\\sum_{i \\in \\text{batch}} \\mathcal{L}(\\theta, \\phi; x_i)`.
"""

import json
import math
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

import pyro
import pyro.optim
from pyro.infer import SVI

from . import plots
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .config import Config
from .data import load_dataset
from .errors import TrainingDiverged, UserError
from .evaluation import evaluate
from .model import VAE
from .objectives import OBJECTIVES
from .registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", pyro.optim.Adam)
OPTIMIZERS.register("adagrad", pyro.optim.Adagrad)

#: Files a run folder holds; ``--overwrite`` removes exactly these.
RUN_FILES = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png", "curves.png",
    "manifold.png", "evaluation.json",
)  # fmt: skip

#: Seed offset of the fixed draw that prepares the test set (e.g. its binarization).
TEST_PREP_SEED = 10_007


class Step(NamedTuple):
    """What ``fit(on_step=...)`` is called with after every SVI step (e.g. to plot the bound
    against the number of training samples evaluated, as in Kingma & Welling's Figure 2)."""

    #: the epoch, counted from 1
    epoch: int
    #: the step within the epoch, counted from 1
    step: int
    #: training datapoints processed so far, including the epochs of a resumed run
    samples: int
    #: the step's loss: minus the objective's estimate, summed over the minibatch
    loss: float
    #: the :class:`~pyro_vae.model.VAE` being trained (in train mode)
    vae: VAE


def resolve_device(name):
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose one of: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def build_vae(config, x_dim):
    """The :class:`~pyro_vae.model.VAE` a config describes."""
    from .likelihoods import build_likelihood

    likelihood = build_likelihood(config.likelihood, binarize=config.binarize, min_scale=config.min_scale)
    return VAE(x_dim, config.z_dim, config.hidden, config.activation, likelihood, config.guide)


def prepare_data(config, likelihood, device):
    """Load, check and prepare the data for ``likelihood`` on ``device``.

    Returns ``(dataset, train, test)``: ``train`` has had the deterministic preparation applied
    (random preparation happens per batch); ``test`` is fully prepared once with a fixed seed so
    that test numbers are comparable across epochs and runs.
    """
    dataset = load_dataset(config.dataset, config.data_dir, config.data, config.test_data)
    likelihood.check_data(dataset.train, "the training data")
    likelihood.check_data(dataset.test, "the test data")
    train = likelihood.prepare_static(dataset.train.to(device))
    generator = torch.Generator(device=device).manual_seed(config.seed + TEST_PREP_SEED)
    test = likelihood.prepare_batch(likelihood.prepare_static(dataset.test.to(device)), generator)
    return dataset, train, test


def package_versions():
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


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_dir(config, base="runs"):
    stem = f"{config.dataset if not config.data else Path(config.data).stem}-{config.likelihood}-"
    stem += datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = Path(base) / stem, 1
    while path.exists():
        i += 1
        path = Path(base) / f"{stem}-{i}"
    return path


def _holds_run(out):
    return any((out / f).exists() for f in ("config.json", "checkpoint.pt", "metrics.jsonl"))


def _read_metrics(path, upto_epoch):
    metrics = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                if m["epoch"] <= upto_epoch:
                    metrics.append(m)
    return metrics


def fit(config=None, out=None, *, resume=False, overwrite=False, quiet=False, on_epoch=None, on_step=None, **settings):
    """Train a VAE as ``config`` (or keyword ``settings``) says and write a run folder.

    :param Config config: the settings; keyword arguments override single fields.
    :param out: the run folder; default a new folder under ``runs/``.
    :param bool resume: continue the run in ``out`` from its checkpoint (settings other than
        ``epochs``, ``device`` and ``data_dir`` must match the saved ones).
    :param bool overwrite: replace a run already in ``out``.
    :param bool quiet: no progress bar and no summary line.
    :param on_epoch: optional callable receiving each epoch's metrics dict.
    :param on_step: optional callable receiving a :class:`Step` after every SVI step. A callback
        that draws random numbers (e.g. to evaluate the bound) changes the rest of the run unless it
        restores the generator state, e.g. inside :func:`torch.random.fork_rng`.
    :returns: the trained :class:`~pyro_vae.run.Run`.
    """
    from .run import Run

    config = (config or Config()).replace(**settings) if settings else (config or Config())
    out = Path(out) if out is not None else new_run_dir(config)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    state = None
    if resume:
        state = load_checkpoint(out / "checkpoint.pt")
        saved = Config.from_dict(state["config"])
        changed = saved.differences(config)
        if changed:
            raise UserError(
                f"the checkpoint in {out} is from another configuration ({', '.join(changed)} differ); "
                "resume with the run's own settings, or start a new run"
            )
    elif out.exists() and _holds_run(out):
        if not overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    device = resolve_device(config.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae = build_vae(config, 1)  # validates the likelihood and guide names before any data is read
    dataset, train, test = prepare_data(config, vae.likelihood, device)
    vae = build_vae(config, dataset.x_dim).to(device)
    optimizer = OPTIMIZERS.get(config.optimizer)({"lr": config.lr})
    objective = OBJECTIVES.get(config.objective)(particles=config.particles).build()
    svi = SVI(vae.model, vae.guide, optimizer, loss=objective)
    meta = {
        "x_dim": dataset.x_dim,
        "image_shape": list(dataset.image_shape),
        "n_train": len(train),
        "n_test": len(test),
        "versions": package_versions(),
    }

    start_epoch, metrics = 0, []
    if state is not None:
        try:
            vae.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"the checkpoint in {out} does not fit this model (another configuration)") from None
        optimizer.set_state(state["optimizer"])
        _set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        metrics = _read_metrics(out / "metrics.jsonl", start_epoch)
    atomic_write_text(out / "config.json", json.dumps({**config.to_dict(), **meta}, indent=2) + "\n")
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))

    show = not quiet and sys.stderr.isatty()
    n, batch_size = len(train), config.batch_size
    for epoch in range(start_epoch + 1, config.epochs + 1):
        vae.train()
        bar = tqdm(total=n, desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not show, leave=False)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        total = 0.0
        for step, i in enumerate(range(0, n, batch_size), start=1):
            x = vae.likelihood.prepare_batch(train[perm[i : i + batch_size]])
            loss = svi.step(x)
            if not math.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {epoch}, step {step}; training stopped "
                    f"(try a smaller --lr); the last good checkpoint in {out} is kept"
                )
            total += loss
            if on_step is not None:
                on_step(Step(epoch, step, (epoch - 1) * n + i + x.shape[0], loss, vae))
            bar.update(x.shape[0])
            bar.set_postfix(loss=f"{loss / x.shape[0]:.2f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        bar.close()
        vae.eval()
        test_elbo, _ = evaluate(vae, test, num_samples=1)
        record = {
            "epoch": epoch,
            "train_elbo": -total / n,
            "test_elbo": test_elbo.mean().item(),
            "seconds": seconds,
            "items_per_s": n / seconds,
        }
        metrics.append(record)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "config": config.to_dict(),
                "epoch": epoch,
                "model": vae.state_dict(),
                "optimizer": optimizer.get_state(),
                "rng": _rng_state(),
            },
        )
        if on_epoch is not None:
            on_epoch(record)
        if show:
            tqdm.write(
                f"epoch {epoch:3d}  train ELBO {record['train_elbo']:9.3f}  test ELBO {record['test_elbo']:9.3f}  "
                f"{seconds:6.2f} s  {record['items_per_s']:8.0f} items/s",
                file=sys.stderr,
            )

    run = Run(out, config, {**config.to_dict(), **meta}, vae, metrics)
    run.write_pictures(test)
    if not quiet:
        last = metrics[-1] if metrics else None
        summary = (
            f"test ELBO {last['test_elbo']:.3f} nats/item after {last['epoch']} epochs" if last else "no epochs run"
        )
        print(f"{config.likelihood} VAE on {dataset.name}: {summary}; run folder {out}")
    return run
