"""Helpers shared by the reproduction scripts in this folder (not an example itself).

Each script trains with :func:`pyro_vae.fit` and writes, under its ``--out`` folder, the figure(s)
as PNG, a JSON of every number behind them, and one run folder per trained model (``runs/``,
with checkpoints: large, keep them out of git).
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pyro_vae
from pyro_vae.errors import UserError

#: Published numbers are quoted next to what a script reaches; these say where they come from.
KINGMA_WELLING = "Kingma & Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114"
BURDA = "Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, arXiv:1509.00519"


def parser(description, default_out):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=default_out, help="folder for figures, JSON and run folders")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads [default: torch's]; 1 is fastest for these small nets on a busy machine",
    )
    p.add_argument("--smoke", action="store_true", help="a few seconds' run on a sliver of the data (for CI)")
    p.add_argument("--train-size", type=number, default=None, help="train on the first N items only")
    p.add_argument("--test-size", type=number, default=None, help="test on the first N items only")
    return p


def setup_threads(args):
    if args.threads:
        torch.set_num_threads(args.threads)


def number(text):
    """``"3e5"`` -> 300000: budgets are easier to read in scientific notation."""
    value = float(text)
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return int(value)


def int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def split_registered(names):
    """``(registered, missing)`` objective names, so that a script can say which it has to skip."""
    registered = [n for n in names if n in pyro_vae.OBJECTIVES]
    return registered, [n for n in names if n not in pyro_vae.OBJECTIVES]


def data_settings(name, data_dir, folder, train_size=None, test_size=None):
    """The :func:`pyro_vae.fit` settings that train on dataset ``name``, or on its first items.

    With ``train_size`` or ``test_size``, the first items of the data set are written as ``uint8``
    arrays to ``folder`` (exact for MNIST and Frey Face, whose pixels are bytes scaled by 1/255) and
    passed as ``data``/``test_data``: a smaller but otherwise identical experiment.
    """
    if train_size is None and test_size is None:
        return {"dataset": name, "data_dir": data_dir}
    dataset = pyro_vae.load_dataset(name, data_dir)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, x, size in (("train", dataset.train, train_size), ("test", dataset.test, test_size)):
        x = x if size is None else x[:size]
        array = (x * 255).round().to(torch.uint8).reshape(len(x), *dataset.image_shape).numpy()
        paths[split] = folder / f"{name}-{split}-{len(x)}.npy"
        np.save(paths[split], array)
    return {"dataset": name, "data": str(paths["train"]), "test_data": str(paths["test"])}


def evaluation_sets(config, n_items, seed=0):
    """Fixed evaluation sets for ``config``'s data: ``(train, test, n_train)``.

    ``train`` and ``test`` hold ``n_items`` training and test items prepared for the likelihood
    once (e.g. one fixed dynamic binarization; the test items exactly as :func:`pyro_vae.fit`
    prepares them), on the device the model trains on; ``n_train`` is the training set's size.
    """
    from pyro_vae.train.build import load_prepared

    _, likelihood, train, test = load_prepared(config)
    generator = torch.Generator(device=train.device).manual_seed(seed + 1)
    pick = torch.randperm(len(train), generator=generator, device=train.device)[:n_items]
    return likelihood.prepare_batch(train[pick], generator), test[:n_items], len(train)


def log_spaced(stop, per_decade, start=1000):
    """Sample counts ``start <= 10**(k / per_decade) <= stop``, evenly spaced on a log axis."""
    first, last = math.ceil(per_decade * math.log10(start)), math.floor(per_decade * math.log10(stop))
    return sorted({round(10 ** (k / per_decade)) for k in range(first, last + 1)})


class BoundRecorder:
    """An ``on_step`` callback: the lower bound per datapoint on fixed train and test subsets,
    each time the number of training samples evaluated passes the next of ``targets``.

    It evaluates inside :func:`torch.random.fork_rng`, so that recording does not change training.
    """

    def __init__(self, train, test, targets):
        self.train, self.test, self.targets = train, test, list(targets)
        self.points, self.seconds = [], 0.0

    def __call__(self, step):
        if self.targets and step.samples >= self.targets[0]:
            while self.targets and step.samples >= self.targets[0]:
                self.targets.pop(0)
            self.record(step.vae, step.samples)

    def record(self, vae, samples):
        if self.points and self.points[-1]["samples"] == samples:
            return
        t0 = time.perf_counter()
        device = next(vae.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(samples)
            vae.eval()
            train = pyro_vae.evaluate(vae, self.train, num_samples=1)[0].mean().item()
            test = pyro_vae.evaluate(vae, self.test, num_samples=1)[0].mean().item()
            vae.train()
        self.points.append({"samples": samples, "train_bound": train, "test_bound": test})
        self.seconds += time.perf_counter() - t0


def select_lr(make_config, candidates, trial_settings, out):
    """The paper's step-size rule: the candidate with the best training bound in the first iterations.

    Each candidate trains on ``trial_settings`` (a few hundred minibatches); the criterion is the
    mean training bound over the second half of the trial's steps. Returns ``(best, {lr: bound})``.
    """
    scores = {}
    for lr in candidates:
        seen = []  # (loss, cumulative samples) per step

        def on_step(step, seen=seen):
            seen.append((step.loss, step.samples))

        try:
            pyro_vae.fit(
                make_config(lr=lr, **trial_settings),
                Path(out) / f"lr-{lr:g}",
                overwrite=True,
                quiet=True,
                on_step=on_step,
            )
        except pyro_vae.TrainingDiverged:
            scores[lr] = -math.inf
            continue
        half = len(seen) // 2
        loss = sum(loss for loss, _ in seen[half:])
        items = seen[-1][1] - (seen[half - 1][1] if half else 0)
        scores[lr] = -loss / items
    best = max(scores, key=lambda lr: scores[lr])
    return best, scores


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": pyro_vae.runs.fit.package_versions(),
    }


def save_gray(fig, path):
    """Save a matplotlib figure of grayscale images as an 8-bit grayscale PNG (a third of the RGBA size)."""
    from PIL import Image

    fig.savefig(path)
    Image.open(path).convert("L").save(path, optimize=True)


def sci(n):
    """``120000`` -> ``"1.2e5"``: sample counts as the papers' axes show them."""
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def write_json(path, payload):
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def main_guard(main):
    """Run ``main()``; a :class:`UserError` (a bad flag, missing data) prints one line and exits 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def say(*args):
    print(*args, flush=True)
