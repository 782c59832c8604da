"""A run folder while a run trains in it: :class:`RunFolder`, and the files it holds.

A run folder holds ``config.json`` (every setting, the data's shape and the package versions),
``metrics.jsonl`` (one JSON line per epoch: ``train_elbo``, ``valid_elbo``, ...), ``checkpoint.pt``
(the last epoch), ``best.pt`` (the epoch with the best validation ELBO), ``final.json`` (the test
ELBO, scored once at the end), pictures and the loggers' outputs (:data:`RUN_FILES`).

The rules every writer of a run folder follows, kept here once:

- **one writer**: the folder is locked while a run trains in it (:class:`RunLock`);
- **atomic**: each file is written whole under a temporary name and renamed
  (:func:`~pyro_vae.checkpoint.atomic_write_text`, :func:`~pyro_vae.checkpoint.save_checkpoint`), never through
  a symbolic link; temporary files a killed run left are removed when the folder is opened again;
- **nothing lost**: ``--overwrite`` trains in ``RUN/.staging`` until its first checkpoint, then swaps
  its files in, so a refused or interrupted overwrite keeps the old run;
- **the same run**: ``--resume`` continues only a checkpoint saved with the same settings
  (:func:`check_same_settings`, also used by ``compare`` and :func:`~pyro_vae.runs.run.load_run`).
"""

import errno
import json
import logging
import os
import platform
import shlex
import shutil
from datetime import datetime
from pathlib import Path

import torch

import pyro

from ..checkpoint import atomic_write_text, clean_temp_files, load_checkpoint, refuse_symlink, save_checkpoint
from ..config import Config
from ..errors import UserError
from ..user_code import named_code

#: Files a run folder holds; ``--overwrite`` removes exactly these.
RUN_FILES = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png", "curves.png",
    "manifold.png", "pseudo_inputs.png", "evaluation.json", "best.pt", "final.json", "metrics.csv", "tensorboard", "mlruns", "mlflow.json",
    "guide_code.py", "arch_code.py", "likelihood_code.py",
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
    """The records of ``metrics.jsonl`` (those of epochs up to ``upto_epoch``), ``[]`` if there is none.

    Metrics are a record, not the model: a damaged file (a partial last line, which a full disk or
    a kill during an append by older versions leaves, or bytes that are not JSON) never blocks a
    run. Lines that are not a JSON object with an integer ``epoch`` are skipped, as are repeated
    and out-of-order epochs; :func:`write_metrics` then writes the repaired file.
    """
    path = Path(path)
    metrics = []
    if not path.exists():
        return metrics
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    for line in text.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if not (isinstance(m, dict) and type(m.get("epoch")) is int and m["epoch"] >= 1):
            continue
        if metrics and m["epoch"] <= metrics[-1]["epoch"]:
            continue
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
    """Append one epoch's record to ``metrics.jsonl``: the whole file is rewritten atomically with the
    new line, so a crash or a full disk never leaves a partial line."""
    write_metrics(out, [*read_metrics(Path(out) / "metrics.jsonl"), record])


class RunLock:
    """An exclusive lock on a run folder (``RUN/.lock``, :func:`fcntl.flock`), held while a run trains.

    A second ``fit`` or ``fit --resume`` on the same folder is refused while the first holds it. The
    operating system releases the lock when its process ends, however it ends, so a lock file left
    by a killed process is stale and taken over (the file itself stays; it holds the holder's pid).

    :raises UserError: when another process holds the lock.
    """

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self._fd = None

    def acquire(self):
        import fcntl

        refuse_symlink(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (process {holder})" if holder else ""
                raise UserError(f"{self.path.parent} is in use by another pyro-vae run{who}; wait for it to finish "
                                "or choose another --out") from None  # fmt: skip
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def resume_command(out, config=None):
    """The command that continues the run in ``out`` (for messages); with ``--trust-guide`` when the
    run's ``config`` names code (:func:`~pyro_vae.user_code.check_code_trusted`), which ``--resume`` asks for."""
    trust = " --trust-guide" if config is not None and named_code(config) else ""
    return f"pyro-vae fit --out {shlex.quote(str(out))} --resume{trust}"


#: the per-component options that have a flag of ``pyro-vae fit`` (the others are set in Python only)
OPTION_FLAGS = {"likelihood_options": ("binarize", "min_scale", "sigma", "mixtures"), "guide_options": ("flow_steps",)}


def fit_command(config, out, overwrite=False):
    """The ``pyro-vae fit`` command that trains ``config`` into ``out`` (for messages): a flag for each
    setting that differs from its default, or None when a setting has no flag (an option of a user's
    own part). ``--trust-guide`` is not needed: the command names the code itself.
    """
    default = Config().to_dict()
    words = ["pyro-vae", "fit"]
    for name, value in config.to_dict().items():
        if name in OPTION_FLAGS:
            if any(k not in OPTION_FLAGS[name] for k in value):
                return None
            words += [w for k, v in value.items() for w in (f"--{k.replace('_', '-')}", str(v))]
            continue
        if value == default[name] or value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            words += [flag] if value else []
        elif isinstance(value, list):
            words += [flag, ",".join(str(v) for v in value)]
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    words += ["--out", str(out)] + (["--overwrite"] if overwrite else [])
    return " ".join(shlex.quote(w) for w in words)


def write_file_checked(path, write, what):
    """Write a file of a run folder, refusing links; an :class:`OSError` (read-only folder, full disk)
    becomes a one-line :class:`UserError` naming ``what``."""
    refuse_symlink(path)
    try:
        write(path)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def saved_config(state, where):
    """The :class:`~pyro_vae.config.Config` a checkpoint ``state`` was saved with.

    :raises UserError: when the checkpoint's config is damaged (one line naming ``where``).
    """
    try:
        return Config.from_dict(state["config"])
    except (UserError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"the checkpoint in {where} is damaged (its config: {e}); retrain the run") from None


#: What ``fit --resume`` may change beyond :attr:`Config.RESUMABLE <pyro_vae.config.Config.RESUMABLE>`: a new
#: ``--lr`` applies from the next step on (the base rate of a schedule); ``config.json`` records it.
RESUME_MAY_CHANGE = Config.RESUMABLE + ("lr",)


def check_same_settings(saved, config, message, ignore=Config.RESUMABLE):
    """``config``, or a :class:`UserError` when a setting that shapes the run differs from ``saved`` (the
    config a checkpoint was saved with; the settings a resumed run may change are not compared:
    ``Config.RESUMABLE``). For a continuation, pass ``config.resumed_from(saved)``.

    :param str message: the error's text, with ``{changed}`` for the names of the settings that differ.
    """
    changed = saved.differences(config, ignore=ignore)
    if changed:
        raise UserError(message.format(changed=", ".join(changed)))
    return config


def io_error(e, out, config=None):
    """An :class:`OSError` while writing the run folder ``out`` as one line. A full disk says how to go on with a
    command that works: ``--resume`` once there is a checkpoint to resume from; before the first one, the
    ``fit`` command of ``config`` again (:func:`fit_command`; with ``--overwrite`` where the folder holds a run)."""
    out = Path(out)
    if e.errno == errno.ENOSPC:
        staged = (out / ".staging").is_dir()  # an --overwrite that had not replaced the old run yet
        if (out / "checkpoint.pt").exists() and not staged:
            return UserError(f"the disk is full (writing to {out}); free space and continue with: "
                             f"{resume_command(out, config)}")  # fmt: skip
        shutil.rmtree(out / ".staging", ignore_errors=True)
        again = fit_command(config, out, overwrite=staged or holds_run(out)) if config is not None else None
        advice = f"continue with: {again}" if again else "run the same command again" + (
            " with --overwrite" if holds_run(out) and not staged else "")
        return UserError(f"the disk is full (writing to {out}) before the first checkpoint; free space and {advice}")
    where = e.filename or out
    return UserError(f"cannot write to the run folder {out}: {e.strerror or e} ({where})")


def check_out(out):
    """Check a run folder's name as given (``None``: a new folder under ``runs/``).

    :raises UserError: for something that is not a path, or an empty name."""
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out must be a path (a str or pathlib.Path), got {out!r}")
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; give the run folder a name (or leave --out out for a new one under runs/)")


class RunFolder:
    """One run folder, from the moment ``fit`` opens it to the moment it is finished.

    ``fit`` reads as the life of this object::

        folder = RunFolder(out, lead=rank == 0)
        config, state = folder.open(config, resume=..., overwrite=...)   # checks, nothing written yet
        trainer = Trainer(config)                                        # builds and checks everything
        folder.claim(trainer.dataset.fingerprint(), ...)                 # lock, staging, config.json
        folder.save_epoch(metrics, trainer.state_dict(), improved)       # metrics, checkpoint.pt, best.pt
        folder.finish(final)                                             # final.json
        folder.close()                                                   # the lock is released

    Only the lead process of a data-parallel run (``lead=True``, rank 0) writes; the others go through
    the same calls, which then check and read only.

    :param out: the folder (a :class:`~pathlib.Path` or string; created by :meth:`claim`).
    :param bool lead: whether this process writes the folder.
    :raises UserError: every error a user can cause (a folder in use, another configuration, changed data,
        an unwritable folder, a full disk) as one line.
    """

    def __init__(self, out, lead=True):
        check_out(out)
        #: the run folder
        self.out = Path(out)
        #: where the files are written now: ``out``, or ``out/.staging`` until an overwrite's first checkpoint
        self.where = self.out
        self.lead = lead
        self.resume = self.replacing = False
        self.saved_meta = {}
        self._locks = []

    # Opening ------------------------------------------------------------------------------------------
    def open(self, config, resume=False, overwrite=False):
        """Check that ``config`` may train in this folder, before anything is built or written.

        :returns: ``(config, state)``: with ``resume``, the config continued from the checkpoint's and the
            checkpoint's state; else ``config`` and ``None``.
        """
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        self.resume, self.overwrite, out = resume, overwrite, self.out
        if not resume:
            if out.exists() and holds_run(out):
                if not overwrite:
                    raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
                self.replacing = True
            return config, None
        if not (out / "checkpoint.pt").exists():
            load_checkpoint(out / "checkpoint.pt")  # raises the message
        self._lock()
        state = load_checkpoint(out / "checkpoint.pt")
        saved = saved_config(state, out)
        config = check_same_settings(
            saved, config.resumed_from(saved),
            f"the checkpoint in {out} is from another configuration ({{changed}} differ); resume with the run's own "
            "settings, or start a new run", ignore=RESUME_MAY_CHANGE,
        )  # fmt: skip
        if config.lr != saved.lr:  # allowed, never silent (a Python caller may have left lr at its default)
            logging.getLogger("pyro_vae").warning(
                f"resuming the run in {out} with lr {config.lr:g} (it trained with {saved.lr:g}): the new rate "
                "applies from the next step")  # fmt: skip
        if config.epochs < state["epoch"]:
            raise UserError(f"the run in {out} has run {state['epoch']} epochs; --epochs is the total, so give at "
                            f"least {state['epoch']} to continue it")  # fmt: skip
        try:
            meta = json.loads((out / "config.json").read_text())
            self.saved_meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            self.saved_meta = {}
        return config, state

    def claim(self, fingerprint):
        """Take the folder for the run once its trainer is built: check the data against a resumed run's,
        create and lock the folder, and (for an overwrite) start the staging folder."""
        out = self.out
        if self.resume and self.saved_meta.get("data_fingerprint") not in (None, fingerprint):
            raise UserError(f"the data differs from the data the run in {out} was trained on (its fingerprint "
                            "changed); resume with the same data, or start a new run")  # fmt: skip
        if self.resume or not self.lead:
            return
        _make_folder(out)
        self._lock()
        if holds_run(out) and not self.overwrite:  # another run finished there while this one was being built
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        self.replacing = self.replacing or holds_run(out)
        if self.replacing:  # train beside the old run until the first checkpoint
            self.where = out / ".staging"
            shutil.rmtree(self.where, ignore_errors=True)
            self.where.mkdir()

    def _lock(self):
        if self.lead and not self._locks:
            self._locks.append(RunLock(self.out).acquire())
            clean_temp_files(self.out)

    def close(self):
        """Release the folder's lock (whatever happened)."""
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    # Writing ------------------------------------------------------------------------------------------
    def start(self, config, meta, metrics):
        """Write ``config.json`` (settings and ``meta``) and ``metrics.jsonl`` (the epochs kept so far)."""
        if self.lead:
            write_config(self.where, config, meta)
            write_metrics(self.where, metrics)

    def save_epoch(self, metrics, state, improved):
        """After an epoch: ``metrics.jsonl``, ``checkpoint.pt`` and, when ``improved``, ``best.pt``; the first
        checkpoint of an overwrite swaps the new run's files in."""
        if not self.lead:
            return
        write_metrics(self.where, metrics)
        save_checkpoint(self.where / "checkpoint.pt", state)
        if improved:
            save_checkpoint(self.where / "best.pt", state)
        self._swap_in()

    def save_untrained(self, state):
        """``--epochs 0``: the untrained model's checkpoint, at epoch 0."""
        if self.lead and not (self.where / "checkpoint.pt").exists():
            save_checkpoint(self.where / "checkpoint.pt", state)
        self._swap_in()

    def finish(self, final):
        """Write ``final.json``."""
        if self.lead:
            atomic_write_text(self.out / "final.json", json.dumps(final, indent=2) + "\n")

    def best_state(self, device):
        """The model state of ``best.pt`` (for a best epoch of an earlier session of a resumed run)."""
        return load_checkpoint(self.out / "best.pt", map_location=device)["model"]

    def _swap_in(self):
        """Replace the run files in ``out`` by those in the staging folder (each by an atomic rename)."""
        if not self.lead or self.where == self.out:
            return
        staging, out = self.where, self.out
        for name in RUN_FILES:
            if not (staging / name).exists():
                if (out / name).is_dir() and not (out / name).is_symlink():  # logger folders (tensorboard, mlruns)
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink(missing_ok=True)
        for name in RUN_FILES:
            if (staging / name).exists():
                (staging / name).replace(out / name)
        shutil.rmtree(staging, ignore_errors=True)
        self.where = out

    # Messages -----------------------------------------------------------------------------------------
    def kept(self, interrupted=False):
        """What a stopped run leaves: the checkpoint kept (and how to resume), or that none was written."""
        out = self.out
        if self.where == out and (out / "checkpoint.pt").exists():
            try:
                state = load_checkpoint(out / "checkpoint.pt")
                epoch, config = state["epoch"], Config.from_dict(state["config"])
            except (UserError, ValueError, TypeError, KeyError):
                epoch, config = "?", None
            if interrupted:
                return f"the checkpoint of epoch {epoch} in {out} is kept; continue with: {resume_command(out, config)}"
            return f"the last good checkpoint, of epoch {epoch}, in {out} is kept"
        old = " (the previous run in it is unchanged)" if self.where != out else ""
        shutil.rmtree(out / ".staging", ignore_errors=True)
        if interrupted:
            return f"no checkpoint was written{old}; start again"
        return f"no checkpoint was written{old}; start again with --overwrite and a smaller --lr"


def _make_folder(out):
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create the run folder {out}: a file of that name (or of a parent's) exists") from None
    except OSError as e:
        raise UserError(f"cannot create the run folder {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise UserError(f"cannot create the run folder {out}: a file of that name exists")
