r"""Which likelihood family, guide, objective, latent size or network is better? Train a grid with everything
else equal, and score it fairly.

**Any axis.** :func:`compare` varies any of the settings in :data:`AXES` (``likelihood``, ``guide``,
``objective``, ``particles``, ``z_dim``, ``hidden``, ``arch``, ``beta`` and ``prior``):
``grid={"guide": ["diagonal", "iaf"], "objective": ["elbo", "iwae"]}`` trains every combination
(the CLI: repeat ``--guide`` and ``--objective``). A configuration is named by its varying values
(``iaf/iwae``) and its run folders are ``<values joined by _>/seed-<s>/``. With only likelihoods varying
(or nothing: every family that fits the data) it is the likelihood comparison described below, unchanged.

**Paired statistics.** Each run's per-item IS :math:`\log p(x)` is saved as ``log_px_per_item.npy``
beside its ``evaluation.json``. Within a group scored on the same data, every pair of configurations
gets :func:`pyro_vae.analysis.paired.paired_difference` over seeds and test items (mean, standard error
from seeds and items, a statement "A beats B by d ± se nats"), in ``comparison.md`` and
``comparison.json`` (``groups[i].pairs``). ``comparison-pareto.png`` plots log p(x) against
training seconds (one file per group: ``comparison-pareto-2.png``, ... for the further groups).

:func:`compare` trains one VAE per likelihood family and seed with the *same* data set, encoder,
decoder body, latent size, optimizer, learning rate, batch size, epochs and seeds (one
:class:`~pyro_vae.config.Config` in which only ``likelihood`` and ``seed`` vary), evaluates each
on the test set with :func:`pyro_vae.vae.evaluation.summarize`, and writes into ``out``:

- ``<family>/seed-<s>/``: an ordinary run folder per family and seed (:func:`pyro_vae.fit`);
- ``comparison.md``, ``comparison.csv``, ``comparison.json``: the table, mean ± std over seeds;
- ``comparison.png``: bits/dim bars with error bars, and a row of samples and reconstructions per family.

**Fair scores.** A family's log-likelihood is a log-probability of some discrete data
(:meth:`~pyro_vae.vae.likelihoods.Likelihood.scored_data`): the :math:`L` levels of the pixels for
the discretized logistic and for densities on dequantized data (lower bound
:math:`\log P(k) \ge \mathbb{E}_u \log p((k+u)/L) - D\log L`), but the *binarized* pixels for the
Bernoulli. Numbers about different data are not ranked against each other: the table groups
families by the data they are scored on and ranks (by bits per dimension) only within a group.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write, atomic_write_text, load_checkpoint
from ..config import Config, check_integer, check_path, parse_hidden
from ..data.load import load_dataset
from ..errors import UserError
from ..runs import fit as fitting
from ..runs import plots
from ..runs.folder import check_same_settings, saved_config
from ..runs.run import Run, load_run, write_evaluation
from ..train.build import check_names, make_config, resolve_device
from ..vae.evaluation import evaluate_terms, summarize
from ..vae.guides import guide_class
from ..vae.likelihoods import LIKELIHOODS, build_likelihood, likelihood_class, likelihood_options
from ..vae.objectives import OBJECTIVES
from ..vae.priors import prior_class
from .paired import all_pairs


@dataclass(frozen=True)
class Axis:
    """A setting :func:`compare` may vary: the :class:`Config` field (also the keyword of ``grid`` and,
    with ``-`` for ``_``, the CLI option that may be repeated) and how a value is written in labels."""

    field: str
    short: object = str  # value -> text, e.g. 5 -> "K5"
    parse: object = None  # value from the CLI/API -> the Config value (None: as given)


#: The settings ``compare`` can vary, in the order they appear in labels; adding one is one entry here
#: (an entry whose field :class:`Config` does not have yet is ignored until it does).
AXES = (
    Axis("likelihood"),
    Axis("guide"),
    Axis("objective"),
    Axis("particles", lambda v: f"K{v}", int),
    Axis("z_dim", lambda v: f"z{v}", int),
    Axis("hidden", lambda v: "h" + "-".join(map(str, parse_hidden(v))), parse_hidden),
    Axis("arch"),
    Axis("beta", lambda v: f"beta{v:g}", float),
    Axis("prior"),
)


def axes():
    """The :data:`AXES` that :class:`Config` has."""
    return [a for a in AXES if a.field in Config.__dataclass_fields__]


#: per-item IS log p(x) (nats, on the data as prepared) of a run's evaluation, beside ``evaluation.json``
ITEM_SCORES = "log_px_per_item.npy"


def _text(value):
    """A setting's value as text for tables: ``(32, 32)`` -> ``32,32``."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _folder_part(text):
    """A value as a safe folder name part (a user guide ``file.py:Class`` -> ``file.py_Class``)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(text)) or "_"

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
    result: dict[str, Any]
    seconds: float  # training time: the sum of the epochs' seconds
    eval_seconds: float
    reused: bool = False
    #: the trained :class:`~pyro_vae.runs.run.Run` (not saved in ``comparison.json``)
    run: Run | None = field(default=None, repr=False)
    #: the values of the varying settings, e.g. ``{"guide": "iaf", "objective": "iwae"}``
    configuration: dict[str, Any] = field(default_factory=dict)
    #: per-item IS log p(x) against the scored data (nats; ``log_px_per_item.npy`` minus the dequantization shift)
    item_scores: np.ndarray | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, Any]:
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
    families: list[str]
    seeds: list[int]
    eval_samples: int
    eval_subset: int
    dataset: str
    x_dim: int
    levels: int | None
    runs: list[FamilyRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    #: the fields of the settings that vary (``["likelihood"]`` for a likelihood comparison)
    varying: list[str] = field(default_factory=lambda: ["likelihood"])
    #: configuration label -> the values of the varying settings
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def column(self) -> str:
        """The name of the table's configuration column: ``family`` for a likelihood comparison."""
        return "family" if self.varying == ["likelihood"] else " / ".join(self.varying)

    # Summaries --------------------------------------------------------------------------------
    def summary(self, family: str) -> dict[str, Any]:
        """Mean and std over seeds of each of :data:`METRICS`, plus what the family was scored on."""
        runs = [r for r in self.runs if r.family == family]
        first = runs[0].result
        row = {
            "family": family,
            "configuration": dict(self.configurations.get(family, {})),
            "scored_data": first["scored_data"],
            "representation": first["representation"],
            "seeds": len(runs),
            "items": first["items"],
            "samples": first["samples"],
        }
        for name in METRICS:
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([r.metrics()[name] for r in runs])
        return row

    def groups(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """``[(scored_data, kind, [summary rows, best first])]``, the most informative data first."""
        rows = [self.summary(f) for f in self.families if any(r.family == f for r in self.runs)]
        by_key: dict[str, list[dict[str, Any]]] = {}
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

    def pairs(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Paired differences of per-item log p(x) (nats against the scored data) for every pair of the
        summary ``rows`` of one group (:func:`pyro_vae.analysis.paired.all_pairs`, best of each pair first).

        Scores are ``(seeds, items)`` arrays, seed ``s`` of A paired with seed ``s`` of B; ``[]`` when
        fewer than 2 configurations, fewer than 2 items, or a run without per-item scores.
        """
        scores = {}
        for row in rows:
            runs = sorted((r for r in self.runs if r.family == row["family"]), key=lambda r: r.seed)
            if any(r.item_scores is None for r in runs) or [r.seed for r in runs] != list(self.seeds):
                return []
            scores[row["family"]] = np.stack([np.asarray(r.item_scores, dtype=np.float64) for r in runs])
        shapes = {a.shape for a in scores.values()}
        if len(scores) < 2 or len(shapes) != 1 or next(iter(shapes))[1] < 2:
            return []
        return all_pairs(scores, unit="nats", higher_is_better=True)

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
    def to_dict(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("likelihood", "seed", *self.varying)}
        groups = []
        for key, kind, rows in self.groups():
            title, why = self._group_text(key, kind)
            groups.append({"scored_data": key, "title": title, "why_not_ranked_with_others": why, "families": rows,
                           "pairs": self.pairs(rows)})  # fmt: skip
        return {
            "varying": self.varying,
            "configurations": self.configurations,
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
                {"family": r.family, "configuration": r.configuration, "seed": r.seed, "directory": str(r.directory),
                 "seconds": r.seconds,
                 "eval_seconds": r.eval_seconds, "reused": r.reused, **r.result}
                for r in self.runs
            ],  # fmt: skip
        }

    def csv_text(self) -> str:
        """One row per family: ``family``, what it is scored on, its rank in its group, means and stds."""
        columns = ["family", *[f for f in self.varying if f != "likelihood" or self.varying != ["likelihood"]]]
        columns += ["scored_data", "representation", "rank_in_group", "seeds", "items", "samples"]
        columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for _, _, rows in self.groups():
            for row in rows:
                values = {**row, **{f: _text(v) for f, v in row["configuration"].items()}}
                writer.writerow({c: ("" if values.get(c) is None else values.get(c)) for c in columns})
        return buffer.getvalue()

    def markdown(self) -> str:
        """``comparison.md``: the settings, then one table per group of families scored on the same data."""
        c = self.config
        seeds = ", ".join(str(s) for s in self.seeds)
        items = self.eval_subset
        likelihoods_only = self.varying == ["likelihood"]
        vary = set(self.varying)
        fixed = []
        if not vary & {"arch", "hidden"}:
            net = "MLP" if c.arch == "mlp" else c.arch
            fixed.append(f"encoder and decoder {net} {self.x_dim}-{'-'.join(map(str, c.hidden))} ({c.activation})")
        fixed += [f"{name} {_text(getattr(c, f))}" for f, name in
                  (("likelihood", "likelihood"), ("z_dim", "latent size"), ("guide", "guide"), ("objective", "objective"),
                   ("particles", "particles K"), ("beta", "beta"), ("prior", "prior")) if f not in vary and hasattr(c, f)
                  and not (f == "prior" and c.prior == "standard")]  # fmt: skip
        if likelihoods_only:
            fixed = [f for f in fixed if not f.startswith("likelihood ")]
        varied = "; ".join(
            f"{f} ({', '.join(dict.fromkeys(_text(v[f]) for v in self.configurations.values()))})"
            for f in self.varying if not likelihoods_only
        )  # fmt: skip
        who = "every family" if likelihoods_only else "every configuration"
        lines = [
            f"# Likelihood comparison on {self.dataset}" if likelihoods_only
            else f"# Comparison of {' × '.join(self.varying)} on {self.dataset}",
            "",
            (f"Varying: {varied}. " if varied else "")
            + f"Same budget for {who}: {c.epochs} epochs, batch {c.batch_size}, {c.optimizer} lr {c.lr:g}, "
            f"{', '.join(fixed)}; seeds {seeds}. "
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
            lines.append(f"| # | {self.column} | scored on | test ELBO | log p(x) | bits/dim | active units | seconds |")
            lines.append("|---:|---|---|---:|---:|---:|---:|---:|")
            for row in rows:
                cells = [_cell(row, name, digits) for name, digits in TABLE_COLUMNS]
                lines.append(f"| {row['rank_in_group']} | {row['family']} | {row['representation']} | {' | '.join(cells)} |")
            pairs = self.pairs(rows)
            if pairs:
                lines += ["", "Paired differences of log p(x) on the same test items (mean ± 1 standard error, from "
                          "seeds and items; pyro_vae.analysis.paired; indistinguishable when within 2 SE):", ""]  # fmt: skip
                lines += [f"- {p['statement']}" for p in pairs]
        if self.skipped:
            lines += ["", "## Not run", ""]
            lines += [f"- {family}: {reason}" for family, reason in self.skipped.items()]
        lines += [
            "",
            f"Run folders: `<{'family' if likelihoods_only else '_'.join(self.varying)}>/seed-<s>/` (per-item log p(x) in "
            f"`{ITEM_SCORES}`); log p(x) against training seconds: `comparison-pareto.png`; per-run numbers (including the ELBO's reconstruction and KL terms "
            f"and the density-scale scores) are in `comparison.json`, one row per {'family' if likelihoods_only else 'configuration'} "
            "in `comparison.csv`.",
        ]
        return "\n".join(lines) + "\n"

    def save_chart(self, path: str | os.PathLike) -> None:
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
                run = first.run if first.run is not None else load_run(
                    first.directory, "cpu", guide=first.configuration.get("guide", self.config.guide),
                    arch=first.configuration.get("arch", self.config.arch))  # the code the user gave, see _open
                x = run.test_data()[:n]
                strips.append((row["family"], run.sample(n, seed=0), run.reconstruct(x)))
        what = "likelihood families" if self.varying == ["likelihood"] else " × ".join(self.varying)
        plots.save_comparison(bars, originals, strips, image_shape, path,
                              title=f"{self.dataset}: {what} at the same budget")  # fmt: skip

    def pareto_paths(self) -> list[Path]:
        """``comparison-pareto.png`` for the first group, ``comparison-pareto-<i>.png`` for group ``i >= 2``."""
        return [self.out / ("comparison-pareto.png" if i == 0 else f"comparison-pareto-{i + 1}.png")
                for i in range(len(self.groups()))]  # fmt: skip

    def save_pareto(self) -> list[Path]:
        """The Pareto charts: per group, log p(x) (nats against the scored data) against training seconds,
        mean ± std over seeds (:func:`pyro_vae.runs.plots.save_pareto`). Returns the paths written."""
        paths = []
        for path, (key, kind, rows) in zip(self.pareto_paths(), self.groups()):
            points = []
            for row in rows:
                runs = [r for r in self.runs if r.family == row["family"]]
                scores = [r.metrics()["log_likelihood"] for r in runs]
                points.append({"label": row["family"], "seconds": [r.seconds for r in runs], "score": scores})
            title = f"{self.dataset}, {self._group_text(key, kind)[0].lower()}: log p(x) against training time"
            plots.save_pareto(points, path, title=title, ylabel=f"test log p(x), nats per item (K = {self.eval_samples})")
            paths.append(path)
        return paths

    def write(self) -> None:
        """Write ``comparison.md``, ``.csv``, ``.json`` and ``.png`` into :attr:`out`."""
        atomic_write_text(self.out / "comparison.md", self.markdown())
        atomic_write_text(self.out / "comparison.csv", self.csv_text())
        atomic_write_text(self.out / "comparison.json", json.dumps(self.to_dict(), indent=2) + "\n")
        self.save_chart(self.out / "comparison.png")
        self.save_pareto()


def machine_info(device):
    cpu = platform.processor() or platform.machine()
    summary = f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.type == "cuda":
        summary += f", GPU {torch.cuda.get_device_name(device)}"
    return {"summary": summary, "device": str(device), "python": platform.python_version()}


def _train(config, directory, overwrite, loggers=(), devices=1):
    """Train ``config`` into ``directory``, reusing or extending a run already there with the same settings,
    with ``loggers`` (names, as ``fit --logger``) on ``devices`` data-parallel processes.

    Returns ``(run, reused)``, the run loaded from its ``best.pt`` (the best validation ELBO).
    """
    def fit(config, directory, **kwargs):
        return fitting.fit(config, directory, devices=devices, loggers=list(loggers or ()), **kwargs)

    checkpoint = directory / "checkpoint.pt"
    if not overwrite and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        saved = saved_config(state, directory)
        check_same_settings(saved, config.resumed_from(saved),
                            f"{directory} holds a run with other settings ({{changed}} differ); "
                            "pass --overwrite to replace it, or choose another --out")  # fmt: skip
        # the guide and prior code these runs name is what this comparison's own settings named (checked just
        # above): opening them runs nothing the user did not give
        if state["epoch"] == config.epochs:
            return load_run(directory, config.device, trust_guide=True), True  # the code the user named
        if state["epoch"] > config.epochs:
            raise UserError(
                f"{directory} holds a run of {state['epoch']} epochs, more than --epochs {config.epochs}; "
                "pass --overwrite to retrain it, or choose another --out"
            )
        run = fit(config, directory, resume=True, quiet=True)
    else:
        run = fit(config, directory, overwrite=True, quiet=True)
    # every family is scored with its best.pt (by validation ELBO), whether trained now or reused
    return (load_run(directory, config.device, trust_guide=True) if (directory / "best.pt").exists() else run), False


def compare(
    config: Config | None = None, out: str | os.PathLike = "comparison", likelihoods: Sequence[str] | None = None,
    seeds: int = 1, eval_samples: int = 100, eval_subset: int | None = None, overwrite: bool = False,
    progress: Callable[[str], object] | None = None,
    eval_progress: Callable[[int, str], ContextManager[Any]] | None = None,
    grid: dict[str, Sequence[Any]] | None = None, loggers: Sequence[str] | None = None, devices: int = 1,
    **settings: Any,
) -> Comparison:
    """Train and evaluate a grid of configurations with everything else equal; write the comparison.

    :param Config config: the shared settings (the varied fields and ``seed`` are replaced);
        keyword ``settings`` override single fields.
    :param out: the folder for the run folders and the comparison files.
    :param likelihoods: family names (the same as ``grid["likelihood"]``); when neither they nor any
        other axis varies: every registered family that can model the data (those that cannot,
        e.g. ``discretized-logistic`` on continuous data, are listed as not run). When another axis
        varies, the likelihood is ``config.likelihood`` unless given.
    :param dict grid: ``{field: [values]}`` for fields of :data:`AXES`, e.g.
        ``{"guide": ["diagonal", "iaf"], "objective": ["elbo", "iwae"]}``; every combination is
        trained. A field with one value just sets it.
    :param int seeds: how many seeds per configuration: ``config.seed``, ``config.seed + 1``, ...
    :param int eval_samples: importance samples :math:`K` per test item.
    :param int eval_subset: evaluate on the first ``eval_subset`` test items (default: all).
    :param bool overwrite: retrain runs already in ``out`` (by default a finished run with the same
        settings is reused and an unfinished one is resumed).
    :param progress: optional callable receiving one line of text per run (start and end).
    :param eval_progress: optional factory ``(total, description) -> context manager with update(n)``
        for a progress bar during evaluation.
    :param loggers: logger names for every run (``["csv", "tensorboard", "mlflow"]``, as ``fit --logger``).
    :param int devices: data-parallel processes per run (as ``fit --devices``, :func:`pyro_vae.fit`).
    :raises UserError: an axis that cannot be varied, a bad value or combination (checked for every
        configuration before anything is trained), a family that cannot model the data when named.
    :rtype: Comparison
    """
    config = make_config(config, **settings)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise UserError(f"--devices must be a positive integer, got {devices!r}")
    from ..train.loggers import build_loggers

    build_loggers(loggers or ())  # unknown names and missing extras fail before anything is trained
    seeds = check_integer(seeds, "--seeds", 1)
    eval_samples = check_integer(eval_samples, "--eval-samples", 1)
    eval_subset = None if eval_subset is None else check_integer(eval_subset, "--eval-subset", 1)
    out = check_path(out, "--out")
    values = _grid_values(grid, likelihoods)
    explicit = "likelihood" in values
    if not explicit and not any(len(v) > 1 for v in values.values()):
        values["likelihood"] = LIKELIHOODS.names()
    values = {a.field: values[a.field] for a in axes() if a.field in values}  # in the order of AXES
    families = values.get("likelihood", [config.likelihood])
    for family in families:
        likelihood_class(family)  # unknown names (and broken files) fail before anything is trained
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
    if "likelihood" in values:
        values["likelihood"] = runnable
    items = min(eval_subset or len(dataset.test), len(dataset.test))

    # The grid: the fields with several values vary; a field with one value is part of the shared settings.
    varying = [f for f, v in values.items() if len(v) > 1]
    if not varying:
        varying = ["likelihood"]
    for f, v in values.items():
        if f not in varying:
            config = _with(config, {f: v[0]})
    short = {a.field: a.short for a in axes()}
    points = [dict(zip(varying, combo)) for combo in itertools.product(*(values.get(f, [getattr(config, f)]) for f in varying))]
    configurations = {}
    for point in points:
        label = "/".join(short[f](v) for f, v in point.items())
        folder = "_".join(_folder_part(short[f](v)) for f, v in point.items())
        run_config = _with(config, point)
        check_names(run_config)
        OBJECTIVES.get(run_config.objective)(run_config.particles)  # e.g. iwae with one particle: refused now
        configurations[label] = (point, folder, run_config)

    device = resolve_device(config.device)
    comparison = Comparison(
        out=out, config=config, families=list(configurations), seeds=[config.seed + i for i in range(seeds)],
        eval_samples=eval_samples, eval_subset=items, dataset=dataset.name, x_dim=dataset.x_dim,
        levels=dataset.levels, skipped=skipped, machine=machine_info(device), varying=varying,
        configurations={label: {f: _jsonable(v) for f, v in p.items()} for label, (p, _, _) in configurations.items()},
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    total = len(configurations) * seeds
    jobs = ((label, s) for label in configurations for s in comparison.seeds)
    for i, (label, seed) in enumerate(jobs, start=1):
        point, folder, point_config = configurations[label]
        tag = f"[{i}/{total}] {label} (seed {seed})"
        say(f"{tag}: training {config.epochs} epochs on {dataset.name} ...")
        run_config = point_config.replace(seed=seed)
        directory = out / folder / f"seed-{seed}"
        run, reused = _train(run_config, directory, overwrite, loggers, devices)
        t0 = time.perf_counter()
        cached = _cached_evaluation(directory, eval_samples, items) if reused else None
        if cached is None:
            if eval_progress is not None:
                with eval_progress(items, f"evaluate {label}") as bar:
                    result, log_px = _evaluate(run, eval_samples, items, bar.update)
            else:
                result, log_px = _evaluate(run, eval_samples, items)
        else:
            result, log_px = cached
        eval_seconds = time.perf_counter() - t0
        seconds = sum(m["seconds"] for m in run.metrics)
        item_scores = log_px - (result.get("dequantization_nats") or 0.0)
        comparison.runs.append(FamilyRun(label, seed, directory, result, seconds, eval_seconds, reused, run,
                                         dict(comparison.configurations[label]), item_scores))  # fmt: skip
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


def _grid_values(grid, likelihoods):
    """``{field: [values, parsed, without repeats]}`` of the axes given (``likelihoods`` joins ``grid["likelihood"]``)."""
    known = {a.field: a for a in axes()}
    if grid is not None and not isinstance(grid, dict):
        raise UserError(f"grid must be a dict of setting names to lists of values, got {type(grid).__name__}")
    grid = dict(grid or {})
    unknown = [f for f in grid if f not in known]
    if unknown:
        raise UserError(f"compare cannot vary {', '.join(map(repr, unknown))}: the axes are {', '.join(known)}")
    if likelihoods:
        grid["likelihood"] = list(grid.get("likelihood") or []) + list(likelihoods)
    values = {}
    for f, given in grid.items():
        if given is None:
            continue
        if isinstance(given, (str, int, float)) or (f == "hidden" and isinstance(given, tuple)):
            given = [given]
        parsed = []
        for v in given:
            try:
                parsed.append(known[f].parse(v) if known[f].parse else v)
            except (TypeError, ValueError):
                raise UserError(f"--{f.replace('_', '-')} value {v!r} is not valid") from None
        if parsed:
            values[f] = list(dict.fromkeys(parsed))
    return values


def _with(config, point):
    """``config`` with the settings of ``point``; a new likelihood or guide keeps only the options it takes."""
    changes = dict(point)
    if "likelihood" in point:
        changes["likelihood_options"] = _options_for(point["likelihood"], config)
    if "guide" in point:
        changes["guide_options"] = _guide_options_for(point["guide"], config)
    if "prior" in point:
        changes["prior_options"] = _prior_options_for(point["prior"], config)
    return config.replace(**changes)


def _prior_options_for(prior, config):
    """The prior options of ``config`` that ``prior``'s constructor takes (``--prior-components`` goes to mog and
    vamp only, ``--prior-flow-steps`` to flow)."""
    cls = prior_class(prior)
    if not isinstance(cls, type):
        return dict(config.prior_options)
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(config.prior_options)
    return {k: v for k, v in config.prior_options.items() if k in params}


def _guide_options_for(guide, config):
    """The guide options of ``config`` that ``guide``'s constructor takes (``--flow-steps`` goes to flows only)."""
    cls = guide_class(guide)
    if not isinstance(cls, type):
        return dict(config.guide_options)
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(config.guide_options)
    return {k: v for k, v in config.guide_options.items() if k in params}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _evaluate(run, samples, items, progress=None):
    """Evaluate the first ``items`` test items with ``samples`` importance samples: ``(summary, per-item
    log p(x))``; writes ``evaluation.json`` and :data:`ITEM_SCORES` into the run folder."""
    x = run.test_data()[:items]
    scores = evaluate_terms(run.vae, x, num_samples=samples, progress=progress)
    result = summarize(scores, run.vae.likelihood, run.vae.x_dim)
    log_px = scores.log_px.detach().double().cpu().numpy()
    atomic_write(run.directory / ITEM_SCORES, lambda f: np.save(f, log_px))  # never through a link
    write_evaluation(run, result)
    return result, log_px


def _options_for(family, config):
    """The likelihood options of ``config`` that ``family`` takes (``--sigma`` goes to gaussian-fixed only)."""
    accepted = likelihood_options(family)
    return {k: v for k, v in config.likelihood_options.items() if k in accepted}


def _cached_evaluation(directory, samples, items):
    """``(evaluation.json, per-item log p(x))`` of a reused run when it was made with the same ``samples``
    and ``items`` and its per-item scores are there; else None (evaluate again)."""
    path = Path(directory) / "evaluation.json"
    try:
        result = json.loads(path.read_text())
        log_px = np.load(Path(directory) / ITEM_SCORES, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if result.get("samples") == samples and result.get("items") == items and "bits_per_dim" in result \
            and log_px.shape == (items,) and math.isclose(float(log_px.mean()), result["test_log_likelihood"],
                                                          rel_tol=1e-5, abs_tol=1e-6):  # fmt: skip
        return result, log_px.astype(np.float64)  # the per-item scores of this very evaluation
    return None
