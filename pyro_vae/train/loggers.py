r"""Experiment loggers (``--logger csv|tensorboard|mlflow``, repeatable) and the plain per-epoch line.

Each logger is one class in the :data:`LOGGERS` registry with four methods, called by training:

- :meth:`Logger.start` ``(run_dir, config_dict)`` once, before the first epoch (also on ``--resume``);
- :meth:`Logger.log_epoch` ``(record)`` after each epoch, with the record written to
  ``metrics.jsonl`` (``epoch`` and numbers: ``train_elbo``, the validation ELBO, ``seconds``, ...);
- :meth:`Logger.log_images` ``(epoch, name, images)`` with ``images`` a float tensor ``(N, C, H, W)``
  in :math:`[0, 1]` (decoder means for :math:`z \sim p(z)`, or test inputs above their reconstructions),
  on the epochs :meth:`Loggers.wants_images` selects (every ``image_every`` epochs and the last);
- :meth:`Logger.log_final` ``(final, run_dir)`` once after training, with ``final.json``'s numbers
  (the test ELBO of the best and the last epoch) and the finished run folder;
- :meth:`Logger.close` at the end (``failed=True`` after a diverged or interrupted run).

Built in:

- ``csv``: ``metrics.csv`` in the run folder, a header from the first record; a record with new
  keys rewrites the file with the wider header (earlier rows get empty cells); a record for an
  epoch already in the file (a resumed run) replaces that row and the ones after it. When the run
  folder has a ``metrics.jsonl`` (always, under ``fit``), :meth:`CSVLogger.start` rebuilds the rows
  from it, so a run killed between its checkpoint and the csv row loses no row once resumed.
- ``tensorboard``: a :class:`torch.utils.tensorboard.SummaryWriter` writing to
  ``RUN_DIR/tensorboard``: one scalar per number of the record (step = epoch), images as grids
  (:func:`torchvision.utils.make_grid`), the config as text (JSON) and as hyperparameters (the
  HParams plugin's session summaries, written into the same event file rather than the
  sub-folder :meth:`~torch.utils.tensorboard.SummaryWriter.add_hparams` makes), with the final
  test metrics (:data:`FINAL_METRICS`, tags ``final/test_elbo``, ...) as the hparams' metrics.
  ``tensorboard --logdir runs/`` shows every run. Needs the extra ``tensorboard`` (``pip install -e '.[tensorboard]'`` in a checkout).
- ``mlflow``: one MLflow run per run folder, in the tracking store of ``tracking_uri`` when given,
  else of ``$MLFLOW_TRACKING_URI`` (a shared store, e.g. ``sqlite:///path/mlflow.db``, which needs
  SQLAlchemy and Alembic beside ``mlflow-skinny``), else a local file store ``RUN_DIR/mlruns``; the
  experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``pyro-vae``. It logs the config as params (nested keys
  joined with dots), the record's numbers as metrics (step = epoch), images as PNG artifacts
  ``NAME/epoch_0001.png``, and at the end the final test metrics (``final.json``: ``test_elbo``, ...)
  and the run folder's files as artifacts under ``run/``. The MLflow run's id is recorded in
  ``RUN_DIR/mlflow.json``, so ``fit --resume`` continues the same MLflow run (its metric history
  covers every epoch once). The process-wide tracking URI is left alone (an
  :class:`mlflow.tracking.MlflowClient` is used). MLflow 3 keeps its file store in maintenance mode,
  behind ``MLFLOW_ALLOW_FILE_STORE=true``: the logger sets it for its process unless the user set it
  (set it too for ``mlflow ui``). Needs the extra ``mlflow`` (``pip install -e '.[mlflow]'`` in a checkout).

A missing optional package is a :class:`~pyro_vae.errors.UserError` naming the extra, raised when
the logger is built (before training). Add a logger with ``LOGGERS.register("name", MyLogger)``.
"""

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, refuse_symlink
from ..config import check_integer
from ..errors import UserError
from ..registry import Registry

LOGGERS = Registry("logger")

#: the numbers of ``final.json`` a logger records at the end (as ``final/<key>`` in TensorBoard)
FINAL_METRICS = ("test_elbo", "test_elbo_last", "best_valid_elbo", "best_epoch", "epochs")

#: the file of a run folder recording its MLflow run (``fit --resume`` continues that run)
MLFLOW_FILE = "mlflow.json"


def _require(module, extra, logger):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"the {logger} logger needs the optional package {extra}: pip install -e '.[{extra}]' in a checkout of "
            f"pyro-vae (pip install 'pyro-vae[{extra}]' once it is published)"
        ) from None


def run_records(run_dir):
    """The epoch records of ``RUN_DIR/metrics.jsonl`` (the run's own record, written before any logger is
    called), or None when there is no such file. Lines that are not a JSON object with an integer
    ``epoch`` are skipped, as :func:`pyro_vae.runs.run.read_metrics` does."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    records, last = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > last:
                records.append(record)
                last = epoch
    return records


def numbers(record):
    """The entries of ``record`` that are finite-or-not real numbers (not bools), except ``epoch``."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def flatten(config, prefix=""):
    """A nested config dict as one level, keys joined with dots (``versions.torch``)."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def image_grid(images):
    """``(N, C, H, W)`` images in [0, 1] as one ``(3, H', W')`` grid, about square (:func:`torchvision.utils.make_grid`)."""
    from torchvision.utils import make_grid

    images = torch.as_tensor(images).detach().float().cpu()
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    return make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)


class Logger:
    """Base class: records a run's config, per-epoch numbers and images somewhere."""

    def start(self, run_dir, config):
        """Begin logging the run in ``run_dir`` whose settings are ``config`` (a dict, as in ``config.json``)."""

    def log_epoch(self, record):
        """Log one epoch's ``record`` (a dict with ``epoch`` and numbers)."""

    def log_images(self, epoch, name, images):
        """Log ``images``, a tensor ``(N, C, H, W)`` in [0, 1], as ``name`` at ``epoch``."""

    def log_final(self, final, run_dir):
        """Log the final test metrics ``final`` (``final.json``'s dict) of the finished run in ``run_dir``."""

    def close(self, failed=False):
        """Finish (``failed``: the run diverged or was interrupted)."""


@LOGGERS.register("csv")
class CSVLogger(Logger):
    """``metrics.csv`` in the run folder: one row per epoch, one column per key of the records."""

    def __init__(self, filename="metrics.csv"):
        self.filename = filename
        self.path, self.header, self.rows = None, None, []

    def start(self, run_dir, config):
        self.path = Path(run_dir) / self.filename
        self.header, self.rows = None, []
        records = run_records(run_dir)
        if records:  # the run's own record: the csv holds the same rows, also after a crash
            for record in records:
                self._add(record)
            self._write()
        elif self.path.exists():  # no metrics.jsonl: keep what is there
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.header = list(reader.fieldnames or []) or None
                self.rows = list(reader)

    @staticmethod
    def _cell(v):
        if v is None:
            return ""
        if isinstance(v, (dict, list, tuple)):
            return json.dumps(v)
        return repr(v) if isinstance(v, float) else str(v)

    def log_epoch(self, record):
        if self._add(record):
            self._write()
        else:
            refuse_symlink(self.path)
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.header, restval="", lineterminator="\n").writerow(self.rows[-1])

    def _write(self):
        out = io.StringIO()
        writer = csv.DictWriter(out, self.header or [], restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())

    def _add(self, record):
        """Add ``record``'s row; whether the file must be rewritten (a new header, a replaced row)."""
        row = {k: self._cell(v) for k, v in record.items()}
        rewrite = False
        if self.header is None:
            self.header = list(record)
            rewrite = True
        new = [k for k in record if k not in self.header]
        if new:
            self.header += new
            rewrite = True
        if "epoch" in record and any(r.get("epoch") not in (None, "") and float(r["epoch"]) >= record["epoch"]
                                     for r in self.rows):  # fmt: skip
            self.rows = [r for r in self.rows if float(r["epoch"]) < record["epoch"]]
            rewrite = True
        self.rows.append(row)
        return rewrite


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files in ``RUN_DIR/<subdir>``: scalars per epoch, image grids, the config."""

    def __init__(self, subdir="tensorboard"):
        _require("tensorboard", "tensorboard", "tensorboard")
        self.subdir = subdir
        self.writer, self._hparams, self._declared = None, None, False

    def start(self, run_dir, config):
        from torch.utils.tensorboard import SummaryWriter

        refuse_symlink(Path(run_dir) / self.subdir)  # a run folder is never written through a link
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / self.subdir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")
        self._hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()
        }
        self._declared = False

    def _declare_hparams(self, metric_names):
        """The HParams plugin's experiment and session-start summaries, with the record's numbers as metrics."""
        from torch.utils.tensorboard.summary import hparams

        names = [*metric_names, *(f"final/{k}" for k in FINAL_METRICS)]
        for summary in hparams(self._hparams, {name: None for name in names}):
            self.writer.file_writer.add_summary(summary)
        self._declared = True

    def log_epoch(self, record):
        values = numbers(record)
        if not self._declared:
            self._declare_hparams(values)
        epoch = int(record.get("epoch", 0))
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=epoch)
        self.writer.flush()

    def log_images(self, epoch, name, images):
        self.writer.add_image(name, image_grid(images), global_step=int(epoch))
        self.writer.flush()

    def log_final(self, final, run_dir):
        if self.writer is None:
            return
        if not self._declared:
            self._declare_hparams([])
        step = int(final.get("epochs") or 0)
        for k, v in numbers({k: final.get(k) for k in FINAL_METRICS}).items():
            self.writer.add_scalar(f"final/{k}", v, global_step=step)
        self.writer.flush()

    def close(self, failed=False):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@LOGGERS.register("mlflow")
class MLflowLogger(Logger):
    """One MLflow run per run folder: params = the config, metrics per epoch, image artifacts, and at
    the end the final test metrics and the run folder as artifacts.

    :param str tracking_uri: where to log; default ``$MLFLOW_TRACKING_URI``, else a local file store
        ``RUN_DIR/mlruns``.
    :param str experiment: the MLflow experiment's name; default ``$MLFLOW_EXPERIMENT_NAME``, else ``pyro-vae``.

    The run's id and tracking URI are written to ``RUN_DIR/mlflow.json``; starting again on the
    same folder (``fit --resume``) continues that MLflow run when it is in the same store.
    """

    #: files and folders of a run folder not logged as artifacts (locks, scratch, the local store itself)
    SKIP_ARTIFACTS = (".lock", ".staging", "mlruns")

    def __init__(self, tracking_uri=None, experiment=None):
        _require("mlflow", "mlflow", "mlflow")
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client, self.run_id, self.resumed = None, None, False

    def resolved_uri(self, run_dir):
        """The tracking URI used for ``run_dir``: the given one, ``$MLFLOW_TRACKING_URI``, or ``RUN_DIR/mlruns``."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        if uri is None:
            refuse_symlink(Path(run_dir) / "mlruns")  # a run folder is never written through a link
            uri = (Path(run_dir) / "mlruns").resolve().as_uri()
            # MLflow 3.x keeps the file store in maintenance mode and refuses it unless opted in;
            # the opt-in is per process, and the user's own setting wins
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri

    @staticmethod
    def recorded(run_dir):
        """``RUN_DIR/mlflow.json`` (``run_id``, ``tracking_uri``, ``experiment_id``), or ``None``."""
        path = Path(run_dir) / MLFLOW_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None

    def _existing_run(self, record, uri):
        if record is None or record.get("tracking_uri") != uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def start(self, run_dir, config):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        uri = self.resolved_uri(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        existing = self._existing_run(self.recorded(run_dir), uri)
        known = {}
        if existing is not None:  # fit --resume: the same MLflow run goes on
            self.run_id, self.resumed = existing.info.run_id, True
            self.client.update_run(self.run_id, status="RUNNING")
            known = existing.data.params
        else:
            name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pyro-vae"
            found = self.client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=run_dir.resolve().name,
                                         tags={"pyro_vae.run_dir": str(run_dir.resolve())})  # fmt: skip
            self.run_id, self.resumed = run.info.run_id, False
            record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id}
            atomic_write_text(run_dir / MLFLOW_FILE, json.dumps(record, indent=2) + "\n")
        # params are write-once in MLflow: a resumed run adds only new keys (its epochs differ: a tag says the total)
        values = {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(config).items()}
        params = [Param(k, v[:6000]) for k, v in values.items() if k not in known]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        if "epochs" in values:
            self.client.set_tag(self.run_id, "pyro_vae.epochs", values["epochs"])

    def log_epoch(self, record):
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(record.get("epoch", 0))
        metrics = [Metric(k, v, now, epoch) for k, v in numbers(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_images(self, epoch, name, images):
        grid = (image_grid(images).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        self.client.log_image(self.run_id, grid, artifact_file=f"{name}/epoch_{int(epoch):04d}.png")

    def log_final(self, final, run_dir):
        """The final test metrics (step = the epochs run) and the run folder's files as artifacts under ``run/``."""
        from mlflow.entities import Metric

        if self.client is None or self.run_id is None:
            return
        now, step = int(time.time() * 1000), int(final.get("epochs") or 0)
        values = numbers({k: final.get(k) for k in FINAL_METRICS if k != "epochs"})
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        for path in sorted(Path(run_dir).iterdir()):
            if path.name in self.SKIP_ARTIFACTS or path.is_symlink():
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=f"run/{path.name}")
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path="run")

    def close(self, failed=False):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            self.run_id = None


class Loggers(Logger):
    """Several loggers as one; also tells the caller on which epochs to make images.

    :param list loggers: :class:`Logger` instances.
    :param int image_every: images every this many epochs (and at the last epoch); 0: only the last.
    """

    def __init__(self, loggers, image_every=5):
        self.loggers = list(loggers)
        self.image_every = check_integer(image_every, "--log-images-every", 0)

    def __bool__(self):
        return bool(self.loggers)

    def wants_images(self, epoch, last=False):
        """Whether images should be made and logged at ``epoch`` (``last``: the run's final epoch)."""
        if not any(type(lg).log_images is not Logger.log_images for lg in self.loggers):
            return False
        return last or (self.image_every > 0 and epoch % self.image_every == 0)

    def start(self, run_dir, config):
        for lg in self.loggers:
            lg.start(run_dir, config)

    def log_epoch(self, record):
        for lg in self.loggers:
            lg.log_epoch(record)

    def log_images(self, epoch, name, images):
        for lg in self.loggers:
            lg.log_images(epoch, name, images)

    def log_final(self, final, run_dir):
        for lg in self.loggers:
            lg.log_final(final, run_dir)

    def close(self, failed=False):
        for lg in self.loggers:
            lg.close(failed=failed)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(failed=kind is not None)


def build_loggers(names, image_every=5, options=None):
    """:class:`Loggers` for the names given (``--logger``, repeatable; duplicates ignored).

    :param names: logger names, e.g. ``["csv", "tensorboard"]``.
    :param int image_every: epochs between image grids.
    :param dict options: per-name constructor keywords, e.g. ``{"mlflow": {"tracking_uri": "..."}}``.
    """
    options = options or {}
    if isinstance(names, str):
        names = [names]
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)):
        raise UserError(f"loggers must be a list of logger names ({', '.join(LOGGERS.names())}), got {names!r}")
    unique = list(dict.fromkeys(names or ()))
    return Loggers([LOGGERS.get(name)(**options.get(name, {})) for name in unique], image_every)


# The plain per-epoch line ---------------------------------------------------------------------
#: how the keys of an epoch record are shown, in this order; other numbers follow as ``key value``
_LABELS = {
    "train_elbo": ("train ELBO", "{:9.3f}"),
    "valid_elbo": ("valid ELBO", "{:9.3f}"),
    "validation_elbo": ("validation ELBO", "{:9.3f}"),
    "test_elbo": ("test ELBO", "{:9.3f}"),
    "kl_weight": ("KL weight", "{:.3g}"),
    "lr": ("lr", "{:.3g}"),
    "seconds": (None, "{:6.2f} s"),
    "items_per_s": (None, "{:8.0f} items/s"),
}


def format_elbo(value, digits=3):
    """An ELBO (or any score in nats) for people: ``-104.212``; ``-1.235e+12`` beyond a million in
    absolute value; ``-inf``, ``inf``, ``nan`` for a diverged one; ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.{digits}e}" if abs(value) >= 1e6 else f"{value:.{digits}f}"


def format_epoch_line(record, epochs=None):
    """One plain line for an epoch's ``record``: ``epoch   3/10  train ELBO  -104.212  ...  1.52 s  8123 items/s``."""
    epoch = record.get("epoch")
    parts = [f"epoch {epoch:3d}" + (f"/{epochs}" if epochs else "")] if epoch is not None else []
    values = numbers(record)
    for key, (label, fmt) in _LABELS.items():
        if key == "train_elbo" and "kl_weight" in values:
            label = "train objective"  # with --beta, --kl-warmup or --free-bits it is not the ELBO
        if key in values:
            value = values.pop(key)
            text = f"{format_elbo(value):>9}" if key.endswith("_elbo") else fmt.format(value)
            parts.append((f"{label} " if label else "") + text)
    parts += [f"{k} {v:.6g}" for k, v in values.items()]
    return "  ".join(parts)


def interactive(stream=None):
    """Whether progress bars are drawn on ``stream`` (default ``sys.stderr``): a terminal, or a Jupyter
    kernel's output (there ``tqdm.auto`` draws a notebook widget, or a text bar without ipywidgets)."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return True
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return stream is sys.stderr and shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class PlainProgress:
    """Prints :func:`format_epoch_line` for each epoch record, one line, flushed (for logs, not terminals).

    :param stream: where to print (default ``sys.stderr`` at call time).
    :param int epochs: the total, shown as ``3/10``.
    """

    def __init__(self, stream=None, epochs=None):
        self.stream, self.epochs = stream, epochs

    @staticmethod
    def wanted(quiet=False, stream=None):
        """Whether ``fit`` should print plain lines: not ``--quiet`` and no progress bar on ``stream`` (stderr is
        neither a terminal nor a Jupyter kernel's, see :func:`interactive`)."""
        return not quiet and not interactive(stream)

    def __call__(self, record):
        stream = self.stream or sys.stderr
        stream.write(format_epoch_line(record, self.epochs) + "\n")
        stream.flush()
