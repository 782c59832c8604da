"""``fit``: train a VAE into a run folder, as its outline reads.

:func:`fit` checks the settings and decides where the training runs: in this process, or on N
data-parallel processes (``devices=N``, or as one rank under ``torchrun``/SLURM; the processes are
:mod:`pyro_vae.runs.launch`'s), each of which runs the same outline, :func:`_fit`. Open the run folder (:class:`~pyro_vae.runs.folder.RunFolder`: checks, lock, staging), build the trainer
(:class:`~pyro_vae.train.trainer.Trainer`: the model, data and SVI step in memory), run the epochs, each one
written through the folder (metrics, ``checkpoint.pt``, ``best.pt``), then score the test set once and write
``final.json`` and the pictures. The training loop itself is Algorithm 1 of Kingma & Welling (2013), in
:mod:`pyro_vae.train.trainer`.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import torch

from ..errors import TrainingDiverged, TrainingInterrupted, UserError
from ..speed.precision import check_precision
from ..train.build import make_config, resolve_device
from ..train.distributed import DistributedTrainer
from ..train.labelled import trainer_class
from ..train.loggers import Loggers, build_loggers, format_elbo
from ..train.progress import EpochDisplay, OnStep, chain
from . import launch
from .folder import RunFolder, check_out, io_error, new_run_dir, package_versions, read_metrics
from .run import Run, load_run, record_parts, use_best

if TYPE_CHECKING:  # the names of fit's annotations
    import os
    from typing import Any, Callable, Sequence

    from ..config import Config
    from ..speed import Speed
    from ..train.trainer import Step

__all__ = ["fit"]

#: the library's messages (warnings, the closing summary); the CLI prints them (see pyro_vae.cli)
log = logging.getLogger("pyro_vae")

#: a train or test ELBO beyond this many nats per item (in absolute value) is reported as absurd
ABSURD_ELBO = 1e7


def fit(config: Config | None = None, out: str | os.PathLike | None = None, *, devices: int = 1,
        precision: str = "fp32", resume: bool = False, overwrite: bool = False, quiet: bool = False,
        on_epoch: Callable[[dict[str, Any]], object] | None = None, on_step: Callable[[Step], object] | None = None,
        speed: Speed | None = None, loggers: Sequence[str] | Loggers | None = None, log_images_every: int = 5,
        checkpoint: str = "best", **settings: Any) -> Run | None:  # fmt: skip
    """Train a VAE as ``config`` (or keyword ``settings``) says and write a run folder.

    The run folder is locked while the run trains (``RUN/.lock``): a second ``fit`` or ``fit
    --resume`` on it is refused. ``metrics.jsonl``, ``config.json`` and ``checkpoint.pt`` are each
    written whole and atomically; temporary files a killed run left are removed. Pyro's global
    parameter store is neither cleared nor filled: the run keeps its parameters in a store of its
    own (see :class:`~pyro_vae.train.trainer.Trainer`), so a user's own Pyro parameters survive and a new
    model's ``pyro.module`` starts fresh.

    With ``epochs=0`` the run folder holds the untrained model (its checkpoint at epoch 0, pictures
    drawn from it) and empty metrics: a baseline that loads, evaluates and resumes like any run.

    :param Config config: the settings; keyword arguments override single fields.
    :param out: the run folder; default a new folder under ``runs/``.
    :param int devices: data-parallel processes on this node (:mod:`pyro_vae.runs.launch`): 1 trains
        in this process; N > 1 spawns N processes, one per GPU (NCCL) when the device is CUDA, else N
        CPU processes (gloo), and returns when all are done. Under ``torchrun`` or SLURM this process
        is one rank (``devices``, if not 1, must equal the launcher's processes per node) and ranks
        other than 0 return ``None``.
    :param str precision: ``"fp32"`` or ``"bf16"`` (the networks under autocast, on CUDA or a CPU with
        bfloat16 instructions; :class:`~pyro_vae.train.distributed.DistributedTrainer`).
    :param bool resume: continue the run in ``out`` from its checkpoint (settings other than
        ``epochs``, ``device`` and ``data_dir`` must match the saved ones, the data must be the same,
        by :meth:`~pyro_vae.data.dataset.Dataset.fingerprint`, and ``epochs`` at least those already run).
    :param bool overwrite: replace a run already in ``out``. The new settings are checked (names,
        data, guide, device) before anything in ``out`` is touched, and the old run's files are
        replaced only once the new run has written its first checkpoint (it trains in
        ``out/.staging`` until then): a refused or interrupted ``overwrite`` keeps the old run.
    :param bool quiet: no progress bar, no per-epoch lines and no summary line. When stderr is not a
        terminal (batch jobs, notebooks) each epoch prints one plain line there instead of a bar.
    :param on_epoch: optional callable receiving each epoch's metrics dict.
    :param on_step: optional callable receiving a :class:`~pyro_vae.train.trainer.Step` after every SVI step.
        A callback that draws random numbers (e.g. to evaluate the bound) changes the rest of the run unless
        it restores the generator state, e.g. inside :func:`torch.random.fork_rng`.
    :param Speed speed: how each step runs (see :class:`~pyro_vae.speed.Speed`; default the fastest).
        It does not change the numbers, so a run may be resumed with another.
    :param loggers: logger names (``["csv", "tensorboard", "mlflow"]``, see :mod:`pyro_vae.train.loggers`)
        or a :class:`~pyro_vae.train.loggers.Loggers`: each epoch's record, the config as hyperparameters,
        and images (samples, validation reconstructions) every ``log_images_every`` epochs and at the last.
    :param str checkpoint: which model the returned run holds: ``"best"`` (default; ``best.pt``, the
        epoch with the best validation ELBO, as :func:`~pyro_vae.runs.run.load_run` opens it) or
        ``"last"`` (the last epoch); ``run.checkpoint`` says which.
    :returns: the trained :class:`~pyro_vae.runs.run.Run` (``run.final`` holds what ``final.json`` holds).
        The summary line and warnings go to the ``logging`` logger ``"pyro_vae"``.
    :raises UserError: for bad settings, a folder in use, changed data, unwritable folders, more devices
        than GPUs, ``bf16`` where the device cannot run it, a rank that failed or died (one line).
    :raises TrainingDiverged: when a loss or a parameter becomes NaN or infinite; the message says
        whether a checkpoint is kept.
    :raises TrainingInterrupted: (a :class:`KeyboardInterrupt`) on Ctrl-C, saying which checkpoint is
        kept and how to resume.

    Each epoch records the validation ELBO (``valid_elbo``; the true ELBO whatever ``beta``) and
    keeps ``best.pt``, the state of the epoch with the best one so far, beside ``checkpoint.pt``
    (the last epoch). With ``config.early_stopping = P`` training stops after ``P`` epochs without a
    better validation ELBO. The test set is scored once, at the end: ``final.json`` holds
    ``test_elbo`` (of ``best.pt``), ``test_elbo_last``, ``best_epoch``, ``best_valid_elbo``,
    ``epochs`` (run) and ``stopped_early``.
    """
    config = make_config(config, **settings)
    check_out(out)
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    options = dict(resume=resume, overwrite=overwrite, quiet=quiet, on_epoch=on_epoch, on_step=on_step, speed=speed,
                   loggers=loggers, log_images_every=log_images_every, checkpoint=checkpoint)  # fmt: skip
    launched = _check_processes(config, devices, precision, options)
    if launched is not None:  # this process is one rank of torchrun's or SLURM's
        run = launch.run_launched(_fit, launched, config, out, precision, options)
        return run if launched["rank"] == 0 else None
    if devices == 1:  # this process
        trainer = None if precision == "fp32" else functools.partial(DistributedTrainer, precision=precision)
        return _fit(config, out, make_trainer=trainer, **options)
    out = new_run_dir(config) if out is None else out  # named here, so that every rank writes the same one
    launch.run_spawned(_fit, devices, config, out, precision, options)  # N processes on this node
    return load_run(out, checkpoint=checkpoint, trust_guide=True)  # the code it just ran


def _check_processes(config, devices, precision, options):
    """Check ``devices`` and ``precision`` against the config, the machine and a launcher; returns
    :func:`~pyro_vae.runs.launch.launcher_env`'s answer (``None``: not launched)."""
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise UserError(f"--devices must be a positive integer, got {devices!r}")
    device = resolve_device(config.device)
    check_precision(precision, device)
    launched = launch.launcher_env()
    if (config.conditional or config.semi_supervised) and (devices != 1 or precision != "fp32" or launched):
        flag = "--conditional" if config.conditional else "--semi-supervised"
        raise UserError(f"{flag} runs train in one process in fp32: leave --devices and --precision out")
    if launched is not None:
        if devices != 1 and launched["local_world_size"] not in (None, devices):
            raise UserError(f"--devices {devices} disagrees with the launcher's {launched['local_world_size']} "
                            "processes per node; leave --devices out under a launcher")  # fmt: skip
        return launched
    if devices > 1:
        if device.type == "cuda" and devices > torch.cuda.device_count():
            raise UserError(f"--devices {devices} asks for more GPUs than this node has ({torch.cuda.device_count()}); "
                            f"use --devices {torch.cuda.device_count()} or --device cpu")  # fmt: skip
        for name in ("on_epoch", "on_step"):
            if options[name] is not None:
                raise UserError(f"{name} callbacks do not cross into spawned processes; run under torchrun instead")
    return None


def _fit(config, out=None, *, resume=False, overwrite=False, quiet=False, on_epoch=None, on_step=None, speed=None,
         rank=0, make_trainer=None, loggers=None, log_images_every=5, checkpoint="best"):  # fmt: skip
    """The outline every process runs: open the run folder, build the trainer, run the epochs writing
    through the folder, finish. ``rank`` (only rank 0 writes the folder) and ``make_trainer``
    (``(config, speed=) -> Trainer``, e.g. a :class:`~pyro_vae.train.distributed.DistributedTrainer`)
    are the data-parallel hooks; the rest is :func:`fit`'s."""
    if not isinstance(loggers, Loggers):  # built first: a missing optional package fails before any work
        loggers = build_loggers(loggers or (), log_images_every)
    folder = RunFolder(new_run_dir(config) if out is None else out, lead=rank == 0)
    try:
        config, state = folder.open(config, resume=resume, overwrite=overwrite)
        # checks every setting, loads the data, builds the guide (the trainer of a model with labels for one)
        trainer = (make_trainer or trainer_class(config))(config, speed=speed)
        folder.claim(trainer.dataset.fingerprint())
        metrics = []
        if state is not None:
            trainer.load_state_dict(state, where=f"the checkpoint in {folder.out}")
            metrics = read_metrics(folder.out / "metrics.jsonl", trainer.epoch)  # skips a damaged line
        meta = _meta(trainer)
        if folder.lead:  # a guide, architecture or likelihood given as a file is copied into the folder
            meta.update(record_parts(trainer.config, folder.where, folder.saved_meta if resume else None))
        folder.start(trainer.config, meta, metrics)
        display = EpochDisplay(trainer.config.epochs, len(trainer.train), quiet=quiet, lead=folder.lead)
        loggers = _Loggers(loggers if folder.lead else None, folder, {**trainer.config.to_dict(), **meta})
        with loggers:
            best_state, stopped_early = _epochs(trainer, folder, metrics, display, loggers, on_epoch, on_step)
            run = _finish(trainer, folder, metrics, meta, best_state, stopped_early, loggers, quiet)
        if checkpoint == "best" and folder.lead:
            use_best(run, best_state)
        return run
    except OSError as e:  # a read-only folder, a full disk, a name too long
        raise io_error(e, folder.out, config) from None
    finally:
        folder.close()


def _meta(trainer):
    """What ``config.json`` records beside the settings: the data's shape and sizes, its fingerprint, versions."""
    dataset, n_valid = trainer.dataset, len(trainer.valid) if trainer.valid is not None else 0
    return {
        "x_dim": dataset.x_dim,
        "item_shape": list(dataset.item_shape),
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
        # the data's training split, as given: the validation items are carved from it (n_valid), so
        # training steps run on n_train - n_valid items (MNIST: 60000 and 5000)
        "n_train": len(trainer.train) + n_valid,
        "n_valid": n_valid,
        "n_test": len(trainer.test),
        "data_fingerprint": dataset.fingerprint(),
        "versions": package_versions(),
        **trainer.extra_meta(),
    }


class _Loggers:
    """The run's loggers (:mod:`pyro_vae.train.loggers`), started in the run folder at the first epoch's end (after a
    staged ``--overwrite`` has swapped its files in) and closed when the run ends, as failed if it ends by an error."""

    def __init__(self, loggers, folder, params):
        self.loggers, self.folder, self.params, self.started = loggers, folder, params, False

    def log_epoch(self, trainer, record):
        if not self.loggers:
            return
        if not self.started:
            self.loggers.start(self.folder.out, self.params)
            self.started = True
        self.loggers.log_epoch(record)
        if self.loggers.wants_images(record["epoch"], last=record["epoch"] == trainer.config.epochs):
            _log_images(trainer, self.loggers, record["epoch"])

    def log_final(self, final):
        if self.started:
            self.loggers.log_final(final, self.folder.out)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if self.started:
            self.loggers.close(failed=kind is not None)


def _epochs(trainer, folder, metrics, display, loggers, on_epoch, on_step):
    """Train the remaining epochs, each written through ``folder``; returns ``(best_state, stopped_early)``:
    the model state of the best epoch of this session (``None`` if it was in an earlier one)."""
    config, warned = trainer.config, False
    best, best_state = _best(metrics), None
    epoch = trainer.epoch
    try:
        for epoch in range(trainer.epoch + 1, config.epochs + 1):
            if config.early_stopping and best is not None and trainer.epoch - best["epoch"] >= config.early_stopping:
                break
            record = _train_epoch(trainer, folder, epoch, display, on_step)
            metrics.append(record)
            improved = best is None or _better(record["valid_elbo"], best["valid_elbo"])
            if improved:
                best = {"epoch": epoch, "valid_elbo": record["valid_elbo"]}
                best_state = {k: v.detach().clone() for k, v in trainer.vae.state_dict().items()}  # for final.json
            folder.save_epoch(metrics, trainer.state_dict() if folder.lead else None, improved)
            if folder.lead and not warned:
                warned = _warn_if_absurd(record)
            loggers.log_epoch(trainer, record)
            if on_epoch is not None:
                on_epoch(record)
            display.epoch_done(record)
    except KeyboardInterrupt as e:  # between epochs: while writing the checkpoint, metrics or in on_epoch
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(f"interrupted after epoch {epoch}'s training; {folder.kept(interrupted=True)}") from None
    return best_state, bool(config.early_stopping) and trainer.epoch < config.epochs


def _train_epoch(trainer, folder, epoch, display, on_step):
    """One epoch's training and validation: its metrics record. A divergence or Ctrl-C says what the folder keeps."""
    bar = display.bar(epoch)
    try:
        hook = OnStep(on_step, epoch, (epoch - 1) * len(trainer.train), trainer.vae) if on_step is not None else None
        trained = trainer.train_epoch(chain(display.step_callback(bar), hook))
        valid_elbo = trainer.valid_elbo()
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{e}; {folder.kept()}") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted in epoch {epoch}; {folder.kept(interrupted=True)}") from None
    finally:
        bar.close()
    trainer.end_epoch(valid_elbo)
    return {
        "epoch": epoch,
        "train_elbo": trained["train_elbo"],
        "valid_elbo": valid_elbo,
        "seconds": trained["seconds"],
        "items_per_s": trained["items_per_s"],
        **{k: trained[k] for k in ("lr", "kl_weight") if k in trained},
        **trainer.extra_metrics(),
    }


def _finish(trainer, folder, metrics, meta, best_state, stopped_early, loggers, quiet):
    """Score the test set, write ``final.json`` and the pictures, print the summary; the trained :class:`Run`."""
    config = trainer.config
    run = Run(folder.out, config, {**config.to_dict(), **meta}, trainer.vae, metrics)
    if folder.lead:
        folder.save_untrained(trainer.state_dict())  # --epochs 0: the untrained model, at epoch 0
    run.final = final = _final(trainer, folder, metrics, stopped_early, best_state)  # every rank: collectives
    folder.finish(final)
    if not folder.lead:
        return run
    run.write_pictures(trainer.test, test_labels=getattr(trainer, "test_labels", None))
    loggers.log_final(final)
    if not quiet:
        summary = (
            f"test ELBO {format_elbo(final['test_elbo'])} nats/item (best epoch {final['best_epoch']} by validation; "
            f"last epoch {format_elbo(final['test_elbo_last'])}) after {final['epochs']} epochs"
            + (" (stopped early)" if stopped_early else "")
            if metrics and final["test_elbo"] is not None else "no epochs run" if not metrics else "no best.pt"
        )
        log.info(f"{config.likelihood} VAE on {trainer.dataset.name}: {summary}; run folder {folder.out}")
    return run


def _better(valid_elbo, best_valid_elbo):
    """Whether an epoch's validation ELBO improves on the best so far (without validation data, every epoch does)."""
    return valid_elbo is None or best_valid_elbo is None or valid_elbo > best_valid_elbo


def _best(metrics):
    """``{"epoch", "valid_elbo"}`` of the best epoch in ``metrics`` so far (the last one when there is
    no validation set; ``None`` for no epochs)."""
    best = None
    for m in metrics:
        if best is None or _better(m.get("valid_elbo"), best["valid_elbo"]):
            best = {"epoch": m["epoch"], "valid_elbo": m.get("valid_elbo")}
    return best


def _warn_if_absurd(record):
    """Warn once when an ELBO is absurdly large (a scale or likelihood mistake); whether it warned."""
    valid_elbo = record["valid_elbo"]
    if max(abs(record["train_elbo"]), abs(valid_elbo or 0.0)) <= ABSURD_ELBO:
        return False
    log.warning(f"epoch {record['epoch']}'s ELBO is {format_elbo(record['train_elbo'])} nats per item (train), "
                f"{format_elbo(valid_elbo)} (validation): absurdly large; check the data's scale and the likelihood")
    return True


def _log_images(trainer, loggers, epoch):
    """Samples from the prior and validation items above their reconstructions, as ``(N, C, H, W)``
    in [0, 1]; the random generators are restored afterwards, so logging never changes the run."""
    image_shape = tuple(trainer.dataset.image_shape)
    vae, shape = trainer.vae, image_shape if len(image_shape) == 3 else (1, *image_shape)  # (C, H, W)
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), trainer._own_params(), torch.no_grad():
        vae.eval()
        generator = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed)
        samples = vae.sample(64, generator=generator)
        x = (trainer.valid if trainer.valid is not None else trainer.test)[:16]
        pairs = torch.cat([x.reshape(len(x), -1), vae.reconstruct(x)])
    for name, images in (("samples", samples), ("reconstructions", pairs)):
        loggers.log_images(epoch, name, images.float().cpu().clamp(0, 1).reshape(-1, *shape))


def _final(trainer, folder, metrics, stopped_early, best_state=None):
    """The test set scored once, with the best epoch's model (``best_state``, else ``best.pt``) and with
    the last epoch's: what ``final.json`` holds. Every process of a data-parallel run calls it (the test
    ELBO is then a collective operation)."""
    best = _best(metrics)
    final = {"epochs": trainer.epoch, "stopped_early": stopped_early, "best_epoch": None, "best_valid_elbo": None,
             "test_elbo": None, "test_elbo_last": None}  # fmt: skip
    if best is None or not (best_state is not None or best["epoch"] == trainer.epoch or (folder.out / "best.pt").exists()):
        return final
    final["test_elbo_last"] = trainer.test_elbo()
    final.update(best_epoch=best["epoch"], best_valid_elbo=best["valid_elbo"])
    # the order matters to a trainer with labels: extra_final reports the test error of the model scored last
    if best["epoch"] == trainer.epoch:
        final["test_elbo"] = final["test_elbo_last"]
    else:  # the best epoch's state: kept in memory, or from best.pt when it was in an earlier session of a resumed run
        final["test_elbo"] = trainer.test_elbo_of(best_state if best_state is not None else folder.best_state(trainer.device))
    final.update(trainer.extra_final())
    return final
