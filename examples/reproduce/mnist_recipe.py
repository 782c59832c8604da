#!/usr/bin/env python
"""A recipe for -88 nats: a one-stochastic-layer VAE on dynamically binarized MNIST in 30 CPU minutes.

The recipe (each choice and what it is for is in ``docs/reproductions/mnist-recipe.md``):

- data: MNIST, dynamic binarization (a fresh Bernoulli draw of every pixel whenever an image is
  used; the test set binarized once with a fixed seed), 55000 training / 5000 validation images;
- networks: encoder and decoder 784-512-512-50 with ReLU units, Gaussian guide (diagonal),
  Bernoulli decoder: the IWAE paper's one-layer model, wider and with ReLU units;
- objective: the ELBO, one sample (``Trace_ELBO``), the KL term warmed up from 0 to 1 over the
  first 10 epochs;
- optimizer: Adam, learning rate 1e-3 annealed to 0 by a cosine schedule over the 250 epochs,
  minibatches of 128;
- model selection: the epoch with the best validation ELBO (``best.pt``);
- evaluation: test log p(x) by importance sampling with 5000 samples on all 10000 test images
  (:func:`pyro_vae.evaluate`), as in Burda et al. (2015).

The curve: the validation ELBO after every epoch against wall-clock time, and the test log p(x)
(1000 samples, first 1000 test images) of snapshots taken every ``--curve-every`` epochs, scored
after training so that the curve does not slow training down.

Writes ``recipe.json`` (every number, the times and the machine), ``recipe.md`` and
``recipe.png`` under ``--out``, and the run folder ``runs/recipe`` (a ``pyro-vae`` run: evaluate,
sample or resume it with the CLI).

Example::

    python examples/reproduce/mnist_recipe.py --data-dir ~/data
"""

import copy
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _common as common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

import pyro_vae  # noqa: E402

#: the target of the recipe, nats per test image
TARGET = -88.0
#: for scale: Burda et al. (2015), Table 1, VAE k=1 after 3280 passes (784-200-200-50 tanh)
BURDA_VAE = -86.76


def arguments():
    p = common.parser(__doc__.split("\n")[0], "results/mnist_recipe")
    p.add_argument("--epochs", type=common.number, default=250, help="passes over the 55000 training images")
    p.add_argument("--hidden", default="512,512", help="hidden layer sizes of encoder and decoder")
    p.add_argument("--z-dim", type=common.number, default=50)
    p.add_argument("--lr", type=float, default=1e-3, help="the peak learning rate of the cosine schedule")
    p.add_argument("--kl-warmup", type=float, default=10, help="epochs of KL warm-up")
    p.add_argument("--batch-size", type=common.number, default=128)
    p.add_argument("--eval-samples", type=common.number, default=5000, help="importance samples per test image")
    p.add_argument("--eval-items", type=common.number, default=10_000, help="test images evaluated")
    p.add_argument("--curve-every", type=common.number, default=25, help="epochs between snapshots of the curve")
    p.add_argument("--curve-samples", type=common.number, default=1000, help="importance samples per curve point")
    p.add_argument("--curve-items", type=common.number, default=1000, help="test images per curve point")
    args = p.parse_args()
    if args.smoke:
        args.train_size, args.test_size = 300, 50
        args.epochs, args.eval_items, args.eval_samples = 2, 50, 20
        args.curve_every, args.curve_items, args.curve_samples = 1, 20, 10
    return args


def recipe(args, settings):
    """The :class:`pyro_vae.Config` of the recipe."""
    return pyro_vae.Config(
        likelihood="bernoulli",
        likelihood_options={"binarize": "dynamic"},
        hidden=tuple(int(h) for h in args.hidden.split(",")),
        activation="relu",
        z_dim=args.z_dim,
        guide="diagonal",
        objective="elbo",
        optimizer="adam",
        lr=args.lr,
        lr_schedule="cosine",
        kl_warmup=args.kl_warmup,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        **settings,
    )


class Snapshots:
    """``on_step``/``on_epoch`` callbacks that keep a copy of the networks every ``every`` epochs."""

    def __init__(self, every):
        self.every, self.vae, self.states = every, None, {}

    def on_step(self, step):
        self.vae = step.vae

    def on_epoch(self, record):
        if record["epoch"] % self.every == 0:
            self.states[record["epoch"]] = copy.deepcopy(self.vae.state_dict())


def log_likelihood(run, samples, items, seed=0, show=False):
    """``run.evaluate`` with a fixed seed; ``show``: a bar on a terminal, a line per tenth otherwise."""
    if not show:
        return run.evaluate(samples=samples, subset=items, seed=seed)
    from tqdm.auto import tqdm

    total = min(items, run.meta["n_test"])
    if sys.stderr.isatty():
        with tqdm(total=total, desc="evaluate", unit="image", leave=False) as bar:
            return run.evaluate(samples=samples, subset=items, seed=seed, progress=bar.update)
    done, t0 = [0], time.perf_counter()

    def progress(n):
        before, done[0] = done[0], done[0] + n
        if done[0] * 10 // total > before * 10 // total:
            print(f"  evaluated {done[0]} of {total} test images ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)  # fmt: skip

    return run.evaluate(samples=samples, subset=items, seed=seed, progress=progress)


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = common.data_settings("mnist", args.data_dir, out / "data", args.train_size, args.test_size)
    config = recipe(args, settings)
    snapshots = Snapshots(args.curve_every)
    common.say(f"training {args.epochs} epochs (the run folder is {out / 'runs' / 'recipe'})")
    t0 = time.perf_counter()
    pyro_vae.fit(config, out / "runs" / "recipe", overwrite=True, on_step=snapshots.on_step,
                 on_epoch=snapshots.on_epoch)  # fmt: skip
    train_seconds = time.perf_counter() - t0

    run = pyro_vae.load_run(out / "runs" / "recipe", device=args.device, checkpoint="best")
    common.say(f"trained in {train_seconds:.0f} s; evaluating best.pt (epoch {run.final['best_epoch']}) with "
               f"{args.eval_samples} importance samples on {args.eval_items} test images")  # fmt: skip
    t0 = time.perf_counter()
    result = log_likelihood(run, args.eval_samples, args.eval_items, show=True)
    eval_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    curve = []
    for epoch, state in sorted(snapshots.states.items()):
        run.vae.load_state_dict(state)
        r = log_likelihood(run, args.curve_samples, args.curve_items)
        curve.append({"epoch": epoch, "test_log_likelihood": r["test_log_likelihood"], "test_elbo": r["test_elbo"]})
        common.say(f"  epoch {epoch:4d}: log p(x) {r['test_log_likelihood']:8.2f} (curve: {args.curve_samples} "
                   f"samples, {args.curve_items} images)")  # fmt: skip
    curve_seconds = time.perf_counter() - t0

    elapsed, epochs = 0.0, []
    for m in run.metrics:
        elapsed += m["seconds"]
        epochs.append({"epoch": m["epoch"], "train_elbo": m["train_elbo"], "valid_elbo": m["valid_elbo"],
                       "seconds": elapsed})  # fmt: skip
    record = {
        "recipe": "examples/reproduce/mnist_recipe.py",
        "target": TARGET,
        "test_log_likelihood": result["test_log_likelihood"],
        "test_elbo": result["test_elbo"],
        "active_units": result["active_units"],
        "reached_target": result["test_log_likelihood"] >= TARGET,
        "best_epoch": run.final["best_epoch"],
        "best_valid_elbo": run.final["best_valid_elbo"],
        "eval_samples": result["samples"],
        "eval_items": result["items"],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "curve_seconds": curve_seconds,
        "settings": config.to_dict(),
        "epochs": epochs,
        "curve": curve,
        "machine": common.machine(),
        "run_dir": str(run.directory),
    }
    common.write_json(out / "recipe.json", record)
    (out / "recipe.md").write_text(markdown(record))
    plot(record, out / "recipe.png")
    print(markdown(record), end="")
    common.say(f"wrote recipe.png, recipe.md and recipe.json to {out}")


def markdown(r):
    verdict = "reached" if r["reached_target"] else "missed"
    return (
        "| test log p(x) | IS samples, test images | test ELBO | active units | best epoch | training | "
        "evaluation | target |\n|---:|---:|---:|---:|---:|---:|---:|---|\n"
        f"| {r['test_log_likelihood']:.2f} | {r['eval_samples']}, {r['eval_items']} | {r['test_elbo']:.2f} | "
        f"{r['active_units']} | {r['best_epoch']} of {r['settings']['epochs']} | {r['train_seconds'] / 60:.1f} min | "
        f"{r['eval_seconds'] / 60:.1f} min | {r['target']:.0f}: {verdict} |\n"
    )


def plot(r, path):
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    minutes = [e["seconds"] / 60 for e in r["epochs"]]
    ax.plot(minutes, [e["valid_elbo"] for e in r["epochs"]], "-", color="C0", label="validation ELBO")
    at = {e["epoch"]: e["seconds"] / 60 for e in r["epochs"]}
    if r["curve"]:
        ax.plot([at[c["epoch"]] for c in r["curve"]], [c["test_log_likelihood"] for c in r["curve"]], "o-",
                color="C1", ms=3, label="test log p(x), snapshots (1000 IS, 1000 images)")  # fmt: skip
    ax.plot([at[r["best_epoch"]]], [r["test_log_likelihood"]], "*", color="C3", ms=12,
            label=f"best.pt: test log p(x) {r['test_log_likelihood']:.2f} ({r['eval_samples']} IS, "
                  f"{r['eval_items']} images)")  # fmt: skip
    ax.axhline(r["target"], color="k", ls="--", lw=1, label=f"target {r['target']:.0f}")
    ax.axhline(BURDA_VAE, color="gray", ls=":", lw=1, label=f"Burda et al. VAE, 3280 passes ({BURDA_VAE})")
    values = [e["valid_elbo"] for e in r["epochs"][len(r["epochs"]) // 10 :]] + [r["test_log_likelihood"], BURDA_VAE]
    ax.set_ylim(min(values) - 2, max(values) + 1)
    ax.set_xlabel("training time, minutes (the epochs' seconds; validation not counted)")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("MNIST recipe: one-layer VAE, 784-512-512-50 ReLU, dynamic binarization", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    common.main_guard(main)
