r"""Which likelihood family fits the data? Train several with everything else equal, and score them fairly.

:func:`compare` trains one VAE per likelihood family and seed with the *same* data set, encoder,
decoder body, latent size, optimizer, learning rate, batch size, epochs and seeds (one
:class:`~pyro_vae.config.Config` in which only ``likelihood`` and ``seed`` vary), evaluates each
on the test set with :func:`pyro_vae.evaluation.summarize`, and writes into ``out``:

- ``<family>/seed-<s>/``: an ordinary run folder per family and seed (:func:`pyro_vae.fit`);
- ``comparison.md``, ``comparison.csv``, ``comparison.json``: the table, mean ± std over seeds;
- ``comparison.png``: bits/dim bars with error bars, and a row of samples and reconstructions per family.

**Fair scores.** A family's log-likelihood is a log-probability of some discrete data
(:meth:`~pyro_vae.likelihoods.Likelihood.scored_data`): the :math:`L` levels of the pixels for
the discretized logistic and for densities on dequantized data (lower bound
:math:`\log P(k) \ge \mathbb{E}_u \log p((k+u)/L) - D\log L`), but the *binarized* pixels for the
Bernoulli. Numbers about different data are not ranked against each other: the table groups
families by the data they are scored on and ranks (by bits per dimension) only within a group.
"""

import csv
import io
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import plots
from .build import make_config, resolve_device
from .checkpoint import atomic_write_text, load_checkpoint
from .config import Config
from .data import load_dataset
from .errors import UserError
from .likelihoods import LIKELIHOODS, build_likelihood, likelihood_options
from .run import load_run, write_evaluation
from .training import fit

#: numbers of a run's evaluation summarized over seeds, in the order of the table and the CSV
METRICS = (
    "elbo", "log_likelihood", "bits_per_dim", "elbo_bits_per_dim", "active_units", "seconds",
    "reconstruction", "kl", "density_elbo", "density_log_likelihood",
)  # fmt: skip

#: what each group of families is scored on, and why it is not ranked with the others
GROUP_TEXT = {
    "levels": (
        "Scored on the {L}-level pixels",
        "log P(x) of the {L}-level images, nats per image: exact for a pmf on the levels (discretized-logistic); "
        "for a density, trained and scored on dequantized pixels (k+u)/{L}, the density's score minus "
        "D log {L} = {offset:.1f} nats, a lower bound on log P(x). One scale: ranked by bits/dim (lower is better).",
    ),
    "binarized": (
        "Scored on binarized pixels",
        "log P(x) of *binarized* images ({how}). These are probabilities of different data, at most 1 bit per pixel "
        "instead of log2 {L} = {bits:.2f}, so they are not ranked with the {L}-level group: a smaller bits/dim here says "
        "nothing about modelling the gray levels.",
    ),
    "continuous": (
        "Densities on continuous data",
        "The data has no known quantization, so these are log-densities (nats per item) of the values as given: "
        "comparable with each other, but not probabilities, so no bits/dim.",
    ),
}


#: the numbers of ``comparison.md``'s table and their decimals
TABLE_COLUMNS = (("elbo", 2), ("log_likelihood", 2), ("bits_per_dim", 4), ("active_units", 1), ("seconds", 1))


def _cell(row, name, digits):
    """``mean`` or ``mean ± std`` (over several seeds) of a summary row's ``name``; a dash when undefined."""
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if row["seeds"] > 1 else "")


@dataclass
class FamilyRun:
    """One trained and evaluated run of a comparison."""

    family: str
    seed: int
    directory: Path
    result: dict
    seconds: float  # training time: the sum of the epochs' seconds
    eval_seconds: float
    reused: bool = False
    #: the trained :class:`~pyro_vae.run.Run` (not saved in ``comparison.json``)
    run: object = field(default=None, repr=False)

    def metrics(self):
        r = self.result
        on_levels = r["discrete_test_elbo"] is not None
        return {
            "elbo": r["discrete_test_elbo"] if on_levels else r["test_elbo"],
            "log_likelihood": r["discrete_test_log_likelihood"] if on_levels else r["test_log_likelihood"],
            "bits_per_dim": r["bits_per_dim"],
            "elbo_bits_per_dim": r["elbo_bits_per_dim"],
            "active_units": r["active_units"],
            "seconds": self.seconds,
            "reconstruction": r["reconstruction"],
            "kl": r["kl"],
            "density_elbo": r["test_elbo"],
            "density_log_likelihood": r["test_log_likelihood"],
        }


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


@dataclass
class Comparison:
    """The result of :func:`compare`: the runs, their summary per family, and writers for the outputs."""

    out: Path
    config: Config
    families: list
    seeds: list
    eval_samples: int
    eval_subset: int
    dataset: str
    x_dim: int
    levels: int
    runs: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    # Summaries --------------------------------------------------------------------------------
    def summary(self, family):
        """Mean and std over seeds of each of :data:`METRICS`, plus what the family was scored on."""
        runs = [r for r in self.runs if r.family == family]
        first = runs[0].result
        row = {
            "family": family,
            "scored_data": first["scored_data"],
            "representation": first["representation"],
            "seeds": len(runs),
            "items": first["items"],
            "samples": first["samples"],
        }
        for name in METRICS:
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([r.metrics()[name] for r in runs])
        return row

    def groups(self):
        """``[(scored_data, kind, [summary rows, best first])]``, the most informative data first."""
        rows = [self.summary(f) for f in self.families if any(r.family == f for r in self.runs)]
        by_key = {}
        for row in rows:
            by_key.setdefault(row["scored_data"], []).append(row)

        def kind(key):
            return "binarized" if key == "binarized" else "continuous" if key == "continuous" else "levels"

        def key_order(key):
            return {"levels": 0, "binarized": 1, "continuous": 2}[kind(key)], key

        out = []
        for key in sorted(by_key, key=key_order):
            members = by_key[key]
            if kind(key) == "continuous":
                members.sort(key=lambda r: -r["log_likelihood_mean"])
            else:
                members.sort(key=lambda r: r["bits_per_dim_mean"])
            for rank, row in enumerate(members, start=1):
                row["rank_in_group"] = rank
            out.append((key, kind(key), members))
        return out

    def _group_text(self, key, kind):
        levels = int(key.split()[0]) if kind == "levels" else (self.levels or 256)
        title, why = GROUP_TEXT[kind]
        how = {
            "dynamic": "each pixel drawn as Bernoulli(gray level), afresh for each training batch and once, with a "
            "fixed seed, for the test set",
            "threshold": "each pixel thresholded at gray level 0.5",
        }.get(self.config.likelihood_options.get("binarize", likelihood_options("bernoulli")["binarize"]),
              "the data as given")  # fmt: skip
        fmt = dict(L=levels, offset=self.x_dim * math.log(levels), bits=math.log2(levels), how=how)
        return title.format(**fmt), why.format(**fmt)

    # Writers ----------------------------------------------------------------------------------
    def to_dict(self):
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("likelihood", "seed")}
        groups = []
        for key, kind, rows in self.groups():
            title, why = self._group_text(key, kind)
            groups.append({"scored_data": key, "title": title, "why_not_ranked_with_others": why, "families": rows})
        return {
            "dataset": self.dataset,
            "x_dim": self.x_dim,
            "levels": self.levels,
            "settings": settings,
            "seeds": self.seeds,
            "evaluation": {"importance_samples": self.eval_samples, "test_items": self.eval_subset},
            "machine": self.machine,
            "groups": groups,
            "skipped": self.skipped,
            "runs": [
                {"family": r.family, "seed": r.seed, "directory": str(r.directory), "seconds": r.seconds,
                 "eval_seconds": r.eval_seconds, "reused": r.reused, **r.result}
                for r in self.runs
            ],  # fmt: skip
        }

    def csv_text(self):
        """One row per family: ``family``, what it is scored on, its rank in its group, means and stds."""
        columns = ["family", "scored_data", "representation", "rank_in_group", "seeds", "items", "samples"]
        columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for _, _, rows in self.groups():
            for row in rows:
                writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
        return buffer.getvalue()

    def markdown(self):
        """``comparison.md``: the settings, then one table per group of families scored on the same data."""
        c = self.config
        seeds = ", ".join(str(s) for s in self.seeds)
        items = self.eval_subset
        lines = [
            f"# Likelihood comparison on {self.dataset}",
            "",
            f"Same budget for every family: {c.epochs} epochs, batch {c.batch_size}, {c.optimizer} lr {c.lr:g}, "
            f"encoder and decoder MLP {self.x_dim}-{'-'.join(map(str, c.hidden))} ({c.activation}), "
            f"latent size {c.z_dim}, guide {c.guide}, objective {c.objective}; seeds {seeds}. "
            f"Test scores on {items} test items with {self.eval_samples} importance samples each. "
            f"Machine: {self.machine.get('summary', 'unknown')}.",
            "",
            "test ELBO and log p(x) are nats per image against the data named in each section (log p(x): "
            f"importance-sampled, K = {self.eval_samples}); bits/dim = -log p(x) / (D ln 2) with D = {self.x_dim}; "
            "active units: latent dimensions whose posterior mean varies over the test set (variance > 0.01, "
            "Burda et al. 2015); seconds: training time. Values are mean ± std over seeds.",
        ]
        for key, kind, rows in self.groups():
            title, why = self._group_text(key, kind)
            lines += ["", f"## {title}", "", why, ""]
            lines.append("| # | family | scored on | test ELBO | log p(x) | bits/dim | active units | seconds |")
            lines.append("|---:|---|---|---:|---:|---:|---:|---:|")
            for row in rows:
                cells = [_cell(row, name, digits) for name, digits in TABLE_COLUMNS]
                lines.append(f"| {row['rank_in_group']} | {row['family']} | {row['representation']} | {' | '.join(cells)} |")
        if self.skipped:
            lines += ["", "## Not run", ""]
            lines += [f"- {family}: {reason}" for family, reason in self.skipped.items()]
        lines += [
            "",
            "Run folders: `<family>/seed-<s>/`; per-run numbers (including the ELBO's reconstruction and KL terms "
            "and the density-scale scores) are in `comparison.json`, one row per family in `comparison.csv`.",
        ]
        return "\n".join(lines) + "\n"

    def save_chart(self, path):
        """``comparison.png``: bits/dim per family (error bars: std over seeds), then a row per family of
        prior samples and reconstructions of the same test images (from the first seed's run)."""
        groups = self.groups()
        bars = []
        for key, kind, rows in groups:
            if kind == "continuous":  # no bits/dim for a density on continuous data
                continue
            bars.append((self._group_text(key, kind)[0], [(r["family"], r["bits_per_dim_mean"], r["bits_per_dim_std"]) for r in rows]))
        strips = []
        dataset = load_dataset(self.config.dataset, self.config.data_dir, self.config.data, self.config.test_data,
                               self.config.layout, self.config.image_size)  # fmt: skip
        image_shape = dataset.image_shape
        n = 8
        originals = dataset.test[:n]
        for key, kind, rows in groups:
            for row in rows:
                first = next(r for r in self.runs if r.family == row["family"])
                run = first.run if first.run is not None else load_run(first.directory, device="cpu")
                x = run.test_data()[:n]
                strips.append((row["family"], run.sample(n, seed=0), run.reconstruct(x)))
        plots.save_comparison(bars, originals, strips, image_shape, path,
                              title=f"{self.dataset}: likelihood families at the same budget")  # fmt: skip

    def write(self):
        """Write ``comparison.md``, ``.csv``, ``.json`` and ``.png`` into :attr:`out`."""
        atomic_write_text(self.out / "comparison.md", self.markdown())
        atomic_write_text(self.out / "comparison.csv", self.csv_text())
        atomic_write_text(self.out / "comparison.json", json.dumps(self.to_dict(), indent=2) + "\n")
        self.save_chart(self.out / "comparison.png")


def machine_info(device):
    cpu = platform.processor() or platform.machine()
    summary = f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.type == "cuda":
        summary += f", GPU {torch.cuda.get_device_name(device)}"
    return {"summary": summary, "device": str(device), "python": platform.python_version()}


def _train(config, directory, overwrite):
    """Train ``config`` into ``directory``, reusing or extending a run already there with the same settings.

    Returns ``(run, reused)``.
    """
    checkpoint = directory / "checkpoint.pt"
    if not overwrite and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        saved = Config.from_dict(state["config"])
        changed = saved.differences(config.resumed_from(saved))
        if changed:
            raise UserError(
                f"{directory} holds a run with other settings ({', '.join(changed)} differ); "
                "pass --overwrite to replace it, or choose another --out"
            )
        if state["epoch"] == config.epochs:
            return load_run(directory, config.device), True
        if state["epoch"] > config.epochs:
            raise UserError(
                f"{directory} holds a run of {state['epoch']} epochs, more than --epochs {config.epochs}; "
                "pass --overwrite to retrain it, or choose another --out"
            )
        return fit(config, directory, resume=True, quiet=True), False
    return fit(config, directory, overwrite=True, quiet=True), False


def compare(config=None, out="comparison", likelihoods=None, seeds=1, eval_samples=100, eval_subset=None,
            overwrite=False, progress=None, eval_progress=None, **settings):  # fmt: skip
    """Train and evaluate each likelihood family with everything else equal; write the comparison.

    :param Config config: the shared settings (its ``likelihood`` and ``seed`` are replaced);
        keyword ``settings`` override single fields.
    :param out: the folder for the run folders and the comparison files.
    :param likelihoods: family names; default every registered family that can model the data
        (those that cannot, e.g. ``discretized-logistic`` on continuous data, are listed as not run).
    :param int seeds: how many seeds per family: ``config.seed``, ``config.seed + 1``, ...
    :param int eval_samples: importance samples :math:`K` per test item.
    :param int eval_subset: evaluate on the first ``eval_subset`` test items (default: all).
    :param bool overwrite: retrain runs already in ``out`` (by default a finished run with the same
        settings is reused and an unfinished one is resumed).
    :param progress: optional callable receiving one line of text per family run (start and end).
    :param eval_progress: optional factory ``(total, description) -> context manager with update(n)``
        for a progress bar during evaluation.
    :rtype: Comparison
    """
    config = make_config(config, **settings)
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {eval_samples}")
    if eval_subset is not None and eval_subset < 1:
        raise UserError(f"--eval-subset must be at least 1, got {eval_subset}")
    explicit = bool(likelihoods)
    families = list(dict.fromkeys(likelihoods)) if likelihoods else LIKELIHOODS.names()
    for family in families:
        LIKELIHOODS.get(family)  # unknown names fail before anything is trained
    out = Path(out)
    say = progress or (lambda line: None)

    # Check every family against the data before training any of them.
    dataset = load_dataset(config.dataset, config.data_dir, config.data, config.test_data, config.layout,
                           config.image_size)  # fmt: skip
    skipped, runnable = {}, []
    for family in families:
        likelihood = build_likelihood(family, levels=dataset.levels, **_options_for(family, config))
        try:
            likelihood.check_data(dataset.train, "the training data")
            likelihood.check_data(dataset.test, "the test data")
        except UserError as e:
            if explicit:
                raise UserError(f"cannot compare {family}: {e}") from None
            skipped[family] = str(e)
            continue
        runnable.append(family)
    if not runnable:
        raise UserError("no likelihood family can model this data: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    items = min(eval_subset or len(dataset.test), len(dataset.test))

    device = resolve_device(config.device)
    comparison = Comparison(
        out=out, config=config, families=runnable, seeds=[config.seed + i for i in range(seeds)],
        eval_samples=eval_samples, eval_subset=items, dataset=dataset.name, x_dim=dataset.x_dim,
        levels=dataset.levels, skipped=skipped, machine=machine_info(device),
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    total = len(runnable) * seeds
    for i, (family, seed) in enumerate(((f, s) for f in runnable for s in comparison.seeds), start=1):
        tag = f"[{i}/{total}] {family} (seed {seed})"
        say(f"{tag}: training {config.epochs} epochs on {dataset.name} ...")
        run_config = config.replace(likelihood=family, likelihood_options=_options_for(family, config), seed=seed)
        directory = out / family / f"seed-{seed}"
        run, reused = _train(run_config, directory, overwrite)
        t0 = time.perf_counter()
        result = _cached_evaluation(directory, eval_samples, items) if reused else None
        if result is None:
            if eval_progress is not None:
                with eval_progress(items, f"evaluate {family}") as bar:
                    result = run.evaluate(samples=eval_samples, subset=items, progress=bar.update)
            else:
                result = run.evaluate(samples=eval_samples, subset=items)
            write_evaluation(run, result)
        eval_seconds = time.perf_counter() - t0
        seconds = sum(m["seconds"] for m in run.metrics)
        comparison.runs.append(FamilyRun(family, seed, directory, result, seconds, eval_seconds, reused, run))
        score = (
            f"{result['bits_per_dim']:.4f} bits/dim" if result["bits_per_dim"] is not None
            else f"log p(x) {result['test_log_likelihood']:.2f} nats"
        )  # fmt: skip
        say(
            f"{tag}: {score} on {result['representation']}, test ELBO {result['test_elbo']:.2f}, "
            f"{result['active_units']} active units; {'reused, ' if reused else ''}trained {seconds:.1f} s, "
            f"evaluated {eval_seconds:.1f} s"
        )
    comparison.write()
    return comparison


def _options_for(family, config):
    """The likelihood options of ``config`` that ``family`` takes (``--sigma`` goes to gaussian-fixed only)."""
    accepted = likelihood_options(family)
    return {k: v for k, v in config.likelihood_options.items() if k in accepted}


def _cached_evaluation(directory, samples, items):
    """The ``evaluation.json`` of a reused run when it was made with the same ``samples`` and ``items``."""
    path = Path(directory) / "evaluation.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("samples") == samples and result.get("items") == items and "bits_per_dim" in result:
        return result
    return None
