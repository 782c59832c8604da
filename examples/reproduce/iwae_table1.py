#!/usr/bin/env python
"""Burda, Grosse & Salakhutdinov (2015), Table 1: test log-likelihood of VAE and IWAE on MNIST.

The setting of the paper's one-stochastic-layer rows:

- MNIST with dynamic binarization (each pixel a fresh Bernoulli draw whenever an image is used;
  the test set binarized once with a fixed seed);
- encoder and decoder 784-200-200-50 with tanh units, Bernoulli decoder;
- Adam (beta1 0.9, beta2 0.999, epsilon 1e-4), minibatches of 20, and the paper's schedule of
  3^i passes at learning rate 0.001 * 10^(-i/7) for i = 0..7 (3280 passes); with a smaller
  ``--passes`` budget the same 8 stages are shrunk in proportion;
- test log p(x) estimated with 5000 importance samples per image (``pyro_vae.evaluate``).

Models are given as ``objective:k``: ``vae:k`` trains the ELBO with k samples per datapoint
(``objective="elbo", particles=k``), ``iwae:k`` the importance-weighted bound
(``objective="iwae", particles=k``). The default compares the paper's headline rows, VAE k=1
(-86.76 nats) and IWAE k=50 (-84.78 nats), after one pass over the training set (5 minutes on a
shared 2-core CPU); ``--paper`` runs the full 3280 passes and evaluates all 10000 test images.
Writes ``table1.png``, ``table1.json`` and ``table1.md`` under ``--out``.

Example::

    python examples/reproduce/iwae_table1.py --data-dir ~/data
    python examples/reproduce/iwae_table1.py --data-dir ~/data --models vae:1,vae:50,iwae:50 --passes 10
"""

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _common as common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pyro.optim  # noqa: E402

import pyro_vae  # noqa: E402

#: Table 1 of Burda et al., one stochastic layer, MNIST: (objective, k) -> (test NLL in nats, active units)
PUBLISHED = {
    ("vae", 1): (86.76, 19), ("vae", 5): (86.47, 20), ("vae", 50): (86.35, 20),
    ("iwae", 1): (86.76, 19), ("iwae", 5): (85.54, 22), ("iwae", 50): (84.78, 25),
}  # fmt: skip
OBJECTIVE_OF = {"vae": "elbo", "iwae": "iwae"}
PAPER_PASSES = 3280
#: the paper's stages: 3^i passes each, i = 0..7
STAGES = [3**i for i in range(8)]


def arguments():
    p = common.parser(__doc__.split("\n")[0], "results/iwae_table1")
    p.add_argument("--models", default="vae:1,iwae:50", help="comma-separated objective:k (objective: vae or iwae)")
    p.add_argument("--passes", type=common.number, default=1, help=f"training passes (paper: {PAPER_PASSES})")
    p.add_argument("--paper", action="store_true", help=f"{PAPER_PASSES} passes, all 10000 test images")
    p.add_argument("--eval-samples", type=common.number, default=5000, help="importance samples per test image")
    p.add_argument("--eval-items", type=common.number, default=500, help="test images evaluated (paper: 10000)")
    p.add_argument("--batch-size", type=int, default=20)
    args = p.parse_args()
    if args.paper:
        args.passes, args.eval_items = PAPER_PASSES, 10_000
    if args.smoke:
        args.train_size, args.test_size, args.eval_items, args.eval_samples = 200, 50, 20, 20
    args.models = [parse_model(m, smoke=args.smoke) for m in args.models.split(",") if m]
    return args


def parse_model(text, smoke=False):
    name, _, k = text.partition(":")
    if name not in OBJECTIVE_OF or not k.isdigit() or int(k) < 1:
        raise pyro_vae.UserError(f"--models takes entries like vae:1 or iwae:50, got {text!r}")
    return name, min(int(k), 3) if smoke else int(k)


def milestones(passes):
    """The passes after which the learning rate drops by 10^(-1/7): Burda's 8 stages, shrunk to ``passes``."""
    ends, total = [], 0
    for length in STAGES[:-1]:
        total += length
        ends.append(round(passes * total / PAPER_PASSES))
    return [e for e in ends if 0 < e < passes]


class BurdaAdam:
    """An optimizer factory for the :data:`pyro_vae.OPTIMIZERS` registry: Adam with epsilon 1e-4 under
    the paper's step schedule. ``fit(on_epoch=...)`` advances the schedule with :meth:`step`.

    Adam's arguments are given per parameter (a callable), so that training keeps Pyro's
    per-parameter optimizers, which the scheduler drives; a training loop that fused them into one
    torch optimizer would bypass the schedule, and :meth:`step` then raises instead of training on
    silently at the first learning rate.
    """

    def __init__(self):
        self.milestones, self.scheduler, self.lrs = [], None, []

    def reset(self, passes):
        """Shrink the schedule to ``passes`` and forget the learning rates recorded so far."""
        self.milestones, self.scheduler, self.lrs = milestones(passes), None, []
        return self

    def __call__(self, args):
        def adam_args(param_name):
            return {"lr": args["lr"], "betas": (0.9, 0.999), "eps": 1e-4}

        self.scheduler = pyro.optim.MultiStepLR(
            {
                "optimizer": torch.optim.Adam,
                "optim_args": adam_args,
                "milestones": self.milestones,
                "gamma": 10 ** (-1 / 7),
            }
        )
        return self.scheduler

    def step(self, record):
        schedulers = list(self.scheduler.optim_objs.values())
        if not schedulers:
            raise RuntimeError("the learning-rate schedule is not in use: training bypassed the Pyro optimizer")
        self.lrs.append(schedulers[0].get_last_lr()[0])  # the rate of the epoch just trained
        self.scheduler.step()


@torch.no_grad()
def active_units(vae, x, threshold=1e-2):
    """Burda et al.'s activity statistic: the latent units u with Cov_x(E_q[u | x]) > ``threshold``."""
    q = vae.encoder(x)
    try:
        mean = q.mean
    except NotImplementedError:  # e.g. a flow guide: a Monte Carlo estimate of E_q[z | x]
        mean = q.sample((100,)).mean(0)
    return int((mean.var(0) > threshold).sum().item())


def train(args, label, objective, k, settings, schedule, out):
    curve = []

    def on_step(step):  # the minibatch's training objective (summed over its datapoints)
        curve.append((step.samples, -step.loss))

    config = pyro_vae.Config(
        likelihood="bernoulli",
        likelihood_options={"binarize": "dynamic"},
        hidden=(200, 200),
        activation="tanh",
        z_dim=50,
        optimizer="burda-adam",
        lr=1e-3,
        batch_size=args.batch_size,
        epochs=args.passes,
        objective=objective,
        particles=k,
        seed=args.seed,
        device=args.device,
        **settings,
    )
    schedule.reset(args.passes)
    t0 = time.perf_counter()
    run = pyro_vae.fit(
        config, out / "runs" / f"{label}-k{k}", overwrite=True, quiet=True, on_step=on_step, on_epoch=schedule.step
    )
    train_seconds = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    result = run.evaluate(samples=args.eval_samples, subset=args.eval_items)
    eval_seconds = time.perf_counter() - t0
    x = run.test_data()[: args.eval_items]
    published, published_au = PUBLISHED.get((label, k), (None, None))
    record = {
        "model": f"{label.upper()} k={k}",
        "objective": objective,
        "k": k,
        "test_log_likelihood": result["test_log_likelihood"],
        "test_elbo": result["test_elbo"],
        "active_units": active_units(run.vae, x),
        "published_log_likelihood": -published if published else None,
        "published_active_units": published_au,
        "gap_nats": result["test_log_likelihood"] + published if published else None,
        "passes": args.passes,
        "learning_rates": schedule.lrs,
        "eval_samples": result["samples"],
        "eval_items": result["items"],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "epoch_metrics": run.metrics,
        "run_dir": str(run.directory),
    }
    n = run.meta["n_train"] - run.meta.get("n_valid", 0)  # the items trained on
    chunk = max(1, n // 10)  # a point per tenth of a pass: (samples, mean objective per datapoint)
    points, total, items, previous = [], 0.0, 0, 0
    for samples, value in curve:
        total, items, previous = total + value, items + samples - previous, samples
        if items >= chunk:
            points.append({"samples": samples, "train_objective": total / items})
            total, items = 0.0, 0
    record["train_curve"] = points
    record["n_train"] = n
    gap = f", {record['gap_nats']:+.2f} nats from the paper's {-published:.2f}" if published else ""
    common.say(
        f"{record['model']:10s} log p(x) {record['test_log_likelihood']:8.2f}  ELBO {record['test_elbo']:8.2f}  "
        f"active units {record['active_units']:2d}{gap} ({train_seconds:.0f} s training, "
        f"{eval_seconds:.0f} s evaluating)"
    )
    return record


def markdown(records, args):
    lines = [
        (
            f"| model | passes | test log p(x), {args.eval_samples} IS (nats) | test ELBO | active units "
            "| paper log p(x) | paper AU | gap (nats) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        paper = f"{r['published_log_likelihood']:.2f}" if r["published_log_likelihood"] is not None else "n/a"
        gap = f"{r['gap_nats']:+.2f}" if r["gap_nats"] is not None else "n/a"
        lines.append(
            f"| {r['model']} | {r['passes']} | {r['test_log_likelihood']:.2f} | {r['test_elbo']:.2f} | "
            f"{r['active_units']} | {paper} | {r['published_active_units'] or 'n/a'} | {gap} |"
        )
    return "\n".join(lines) + "\n"


def plot(records, path, args):
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for i, r in enumerate(records):
        color = f"C{i}"
        passes = [p["samples"] / r["n_train"] for p in r["train_curve"]]
        ax.plot(
            passes,
            [p["train_objective"] for p in r["train_curve"]],
            "-",
            color=color,
            alpha=0.6,
            label=f"{r['model']}: training objective",
        )
        ax.plot([args.passes], [r["test_log_likelihood"]], "o", color=color, label=f"{r['model']}: test log p(x)")
        if r["published_log_likelihood"] is not None:
            ax.axhline(
                r["published_log_likelihood"],
                color=color,
                ls="--",
                lw=1,
                label=f"{r['model']}: paper, {PAPER_PASSES} passes",
            )
    ax.set_xlabel("training passes")
    ax.set_ylabel("nats per image")
    if args.passes > 10:
        ax.set_xscale("log")
    # the test estimates, the published values and the later 80% of each training curve
    values = [r["test_log_likelihood"] for r in records] + [-87.0, -84.0]
    values += [p["train_objective"] for r in records for p in r["train_curve"][len(r["train_curve"]) // 5 :]]
    ax.set_ylim(min(values) - 5, max(values) + 3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Burda et al. (2015) Table 1 setting, {args.passes} of {PAPER_PASSES} passes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "burda-adam" not in pyro_vae.OPTIMIZERS:
        pyro_vae.OPTIMIZERS.register("burda-adam", BurdaAdam())
    schedule = pyro_vae.OPTIMIZERS.get("burda-adam")
    settings = common.data_settings("mnist", args.data_dir, out / "data", args.train_size, args.test_size)
    t0 = time.perf_counter()
    results = {
        "table": "Burda et al. (2015), Table 1, one stochastic layer, MNIST",
        "source": common.BURDA,
        "budget": {
            "passes": args.passes,
            "paper_passes": PAPER_PASSES,
            "eval_samples": args.eval_samples,
            "eval_items": args.eval_items,
            "lr_milestones": schedule.milestones,
        },
        "settings": {
            "architecture": "784-200-200-50-200-200-784, tanh",
            "binarize": "dynamic",
            "optimizer": "Adam(0.9, 0.999, eps=1e-4)",
            "lr": "1e-3 * 10^(-i/7) in stage i",
            "batch_size": args.batch_size,
            **settings,
        },
        "models": [],
        "skipped": [],
        "machine": common.machine(),
    }
    for label, k in args.models:
        objective = OBJECTIVE_OF[label]
        if objective not in pyro_vae.OBJECTIVES:
            common.say(
                f"{label.upper()} k={k}: objective {objective!r} is not registered in this pyro_vae (have: "
                f"{', '.join(pyro_vae.OBJECTIVES.names())}); skipping it"
            )
            results["skipped"].append(f"{label}:{k}")
            continue
        results["models"].append(train(args, label, objective, k, settings, schedule, out))
        common.write_json(out / "table1.json", results)
    results["seconds"] = time.perf_counter() - t0
    common.write_json(out / "table1.json", results)
    if results["models"]:
        (out / "table1.md").write_text(markdown(results["models"], args))
        plot(results["models"], out / "table1.png", args)
        print(markdown(results["models"], args), end="")
    common.say(f"wrote table1.png, table1.md and table1.json to {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    common.main_guard(main)
