"""A run folder: what it holds, how it is written, and the run as a Python object.

A run folder holds ``config.json`` (every setting, the data's shape and the package versions),
``metrics.jsonl`` (one JSON line per epoch: ``train_elbo``, ``valid_elbo``, ...), ``checkpoint.pt``
(the last epoch), ``best.pt`` (the epoch with the best validation ELBO), ``final.json`` (the test
ELBO, scored once at the end), pictures and the loggers' outputs (:data:`RUN_FILES`).
:class:`Run` is a trained VAE with its settings and metrics (load one with :func:`load_run`):
sample, reconstruct, evaluate.
"""

import contextlib
import errno
import json
import math
import os
import platform
import shlex
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import pyro

from . import latent, plots
from ..train.build import build_vae, prepare_data, resolve_device
from ..checkpoint import atomic_write_text, load_checkpoint, refuse_symlink
from ..config import Config, check_integer, check_path
from ..data.datasets import interpret_array
from ..errors import UserError
from ..vae.evaluation import evaluate_terms, summarize
from ..user_code import check_code_trusted, named_code

#: Files a run folder holds; ``--overwrite`` removes exactly these.
RUN_FILES = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png", "curves.png",
    "manifold.png", "evaluation.json", "best.pt", "final.json", "metrics.csv", "tensorboard", "mlruns",
)  # fmt: skip

#: ``load_run(checkpoint=...)`` / ``--checkpoint``: the file of each choice
CHECKPOINTS = {"best": "best.pt", "last": "checkpoint.pt"}


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


class Run:
    """A trained VAE with its settings and metrics; returned by :func:`~pyro_vae.fit` and :func:`load_run`.

    :ivar Path directory: the run folder.
    :ivar Config config: the settings it was trained with.
    :ivar dict meta: ``config.json`` as saved (settings, data shape, package versions).
    :ivar vae: the :class:`~pyro_vae.vae.model.VAE`, in eval mode.
    :ivar list metrics: one dict per epoch, as in ``metrics.jsonl``.
    """

    def __init__(self, directory, config, meta, vae, metrics):
        self.directory = Path(directory)
        self.config, self.meta, self.vae, self.metrics = config, meta, vae.eval(), metrics
        #: ``final.json`` (test ELBO of best.pt and of the last epoch, best epoch), ``None`` if absent
        self.final = None
        #: which checkpoint the model is from: ``"best"`` or ``"last"``
        self.checkpoint = "last"

    @property
    def image_shape(self):
        return tuple(self.meta["image_shape"])

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def test_data(self):
        """The test set, prepared for the likelihood exactly as during training (same fixed draw).

        :raises UserError: when the run's data file (``config.json``'s ``data``/``test_data``) is
            gone, or now holds data of another width than the run was trained on.
        """
        for key in ("data", "test_data"):
            path = getattr(self.config, key)
            if path and not Path(path).exists():
                raise UserError(f"the run's data file {path} (recorded as {key} in {self.directory / 'config.json'}) "
                                "is missing; put it back there to evaluate the run")  # fmt: skip
        test = prepare_data(self.config, self.vae.likelihood, self.device)[2]
        if test[0].numel() != self.vae.x_dim:
            raise UserError(f"the run's data now has {test[0].numel()} values per item but the run was trained on "
                            f"{self.vae.x_dim}; the data file changed since training")  # fmt: skip
        return test

    def sample(self, n=64, seed=0):
        """Decoder means for ``n`` draws from the prior, shape ``(n, D)``, on the CPU.

        :raises UserError: unless ``n`` is a positive integer and ``seed`` an integer in ``[0, 2**64)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"the number of samples must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise UserError(f"the seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.vae.sample(n, generator=generator).cpu()

    def as_input(self, x):
        """``x`` as the encoder takes it: a float tensor ``(N, *item_shape)`` on the run's device.

        Accepts what training accepted: items in any layout whose values number ``D`` (``(N, D)``,
        ``(N, H, W)``, ``(N, C, H, W)``, ...). A NumPy array is read by the rules of ``--data``
        (:func:`~pyro_vae.data.datasets.interpret_array`: uint8 ``0..255`` scaled to ``[0, 1]``, 0/1
        integers as binary); a tensor of an integer dtype likewise; a float tensor is taken as it is
        (values as the run's prepared data, e.g. in ``[0, 1]``). One item may be given without the
        leading ``N``.

        :raises UserError: for another number of values per item, or values the rules refuse.
        """
        d = self.vae.x_dim
        shape = tuple(getattr(x, "shape", ()))
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            t = x.detach()
        else:
            array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if array.dtype.kind not in "biuf":
                raise UserError(f"the run takes numeric arrays, got dtype {array.dtype}")
            if array.ndim >= 1 and array.size == d and (array.ndim == 1 or array.shape[0] != 1):
                array = array[None]
            if array.ndim < 2 or array.shape[0] == 0:
                raise UserError(f"the run takes items of {d} values, shape (N, {d}) or (N, *{self.image_shape}); "
                                f"got shape {shape}")  # fmt: skip
            if array.dtype.kind == "f":
                t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            else:
                t = interpret_array(array, "input")[0]
        if t.dim() >= 1 and t.numel() == d and (t.dim() == 1 or t.shape[0] != 1):
            t = t.reshape(1, d)
        if t.dim() < 2 or t.shape[0] == 0 or t[0].numel() != d:
            raise UserError(f"the run takes items of {d} values, shape (N, {d}) or (N, *{self.image_shape}); "
                            f"got shape {shape}")  # fmt: skip
        return t.reshape(len(t), *self.vae.x_shape).to(device=self.device, dtype=torch.float32)

    def reconstruct(self, x):
        """Decoder means for one draw from :math:`q(z \\mid x)` for each item of ``x``, shape ``(N, D)``, on the CPU.

        ``x`` in any layout and dtype training accepts (see :meth:`as_input`).
        """
        return self.vae.reconstruct(self.as_input(x)).cpu()

    def evaluate(self, samples=1000, subset=None, progress=None, seed=None):
        """Test ELBO, its two terms, importance-sampled log-likelihood (nats per item), bits per
        dimension and active units (see :mod:`pyro_vae.vae.evaluation`).

        :param int samples: importance samples ``K`` per item.
        :param int subset: use only the first ``subset`` test items.
        :param int seed: seeds the draws of :math:`z` (the same seed gives the same numbers; the
            global random state is left as it was). ``None``: the current random state.
        :returns: dict with ``test_elbo``, ``test_log_likelihood``, ``samples``, ``items``,
            ``reconstruction``, ``kl``, ``bits_per_dim``, ``active_units`` and the other keys of
            :func:`~pyro_vae.vae.evaluation.summarize`.
        """
        samples = check_integer(samples, "--samples", 1)
        subset = None if subset is None else check_integer(subset, "--subset", 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
            raise UserError(f"--seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
        x = self.test_data()
        if subset is not None:
            x = x[:subset]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                pyro.set_rng_seed(seed)
            scores = evaluate_terms(self.vae, x, num_samples=samples, progress=progress)
        return summarize(scores, self.vae.likelihood, math.prod(x.shape[1:]))

    # Pictures ------------------------------------------------------------------------------------
    def _display_range(self):
        """[0, 1] for images; the data's own range for real-valued user data."""
        return (0.0, 1.0) if self.vae.likelihood.domain != "real" or not self.config.data else None

    def save_samples(self, path, n=64, seed=0):
        """Save ``n`` samples as a PNG grid at ``path``.

        :raises UserError: for a missing folder, a link at ``path``, or a write that fails.
        """
        images = self.sample(n, seed)
        parent = Path(path).parent
        if not parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {parent} does not exist")
        write_file_checked(Path(path), lambda p: plots.save_grid(images, self.image_shape, p,
                                                                  value_range=self._display_range()), "samples")

    def write_pictures(self, test):
        """``samples.png``, ``reconstructions.png``, ``curves.png`` and, for a 2-D latent space, ``manifold.png``."""
        d = self.directory
        torch.manual_seed(self.config.seed)
        self.save_samples(d / "samples.png")
        x = test[:16]
        pairs = torch.cat([x.cpu().reshape(len(x), -1), self.reconstruct(x)])
        title = "test inputs (top) and reconstructions (bottom)"
        write_file_checked(d / "reconstructions.png", lambda p: plots.save_grid(
            pairs, self.image_shape, p, ncol=len(x), title=title, value_range=self._display_range()), "picture")
        if self.metrics:
            curves_title = f"{self.config.likelihood} VAE on {self.config.dataset}"
            write_file_checked(d / "curves.png", lambda p: plots.save_curves(self.metrics, p, title=curves_title),
                               "picture")  # fmt: skip
        if self.config.z_dim == 2:
            z = plots.manifold_codes(20, device=self.device)
            write_file_checked(d / "manifold.png", lambda p: plots.save_grid(
                self.vae.decode(z), self.image_shape, p, ncol=20, value_range=self._display_range()), "picture")

    # The latent space (pyro_vae.runs.latent; the same as ``pyro-vae encode/reconstruct/interpolate/traverse/latents``)
    def encode(self, x=None, split="test", data=None, what="mean", samples=None, labels=None, path=None, seed=0):
        """Posterior codes of the items ``x`` (any layout and dtype training accepts, see :meth:`as_input`),
        or of a split's or ``data`` file's items.

        With ``x``: posterior means (``what``: ``mean``, ``scale`` or ``samples``), a tensor of shape
        ``(N, z_dim)`` (``(N, K, z_dim)`` for samples) on the CPU. Without: ``(codes, labels)`` as
        :func:`pyro_vae.runs.latent.encode_run` gives them (NumPy), also saved to ``path`` when given.
        """
        if x is not None:
            return torch.as_tensor(latent.encode(self.vae, self.as_input(x), what, samples=samples, seed=seed))
        return latent.encode_run(self, split, data, what, samples, labels, path, seed)

    def save_reconstructions(self, path, n=16, split="test", data=None, sample=False, seed=0):
        """Items above their reconstructions as a PNG: :func:`pyro_vae.runs.latent.save_reconstructions`."""
        return latent.save_reconstructions(self, path, n, split, data, sample, seed)

    def interpolate(self, i, j, steps=10, slerp=False, split="test", data=None, path=None, seed=0):
        """Decoded path between items ``i`` and ``j``: :func:`pyro_vae.runs.latent.interpolate_run`."""
        return latent.interpolate_run(self, i, j, steps, slerp, split, data, path, seed)

    def traverse(self, units=None, span=3.0, steps=9, item=None, top=None, split="test", data=None, path=None, seed=0):
        """One latent unit at a time, ordered by KL: :func:`pyro_vae.runs.latent.traverse_run`."""
        return latent.traverse_run(self, units, span, steps, item, top, split, data, path, seed)

    def latents(self, path, method="auto", split="test", data=None, labels=None, seed=0):
        """Scatter of the posterior means coloured by label: :func:`pyro_vae.runs.latent.latents_run`."""
        return latent.latents_run(self, path, method, split, data, labels, seed)


def check_guide_trusted(config, directory, trust_guide=False, guide=None, arch=None):
    """Refuse to run code a run folder names as its guide or architecture unless the user allows it.

    A guide or architecture given as ``file.py:Name`` or ``module:Name`` is Python code that runs when
    the model is built. A run folder received from someone else could name any file or module; opening
    it (:func:`load_run`, ``evaluate``, ``sample``, the latent commands) runs that code only when
    ``trust_guide`` is true or the user names the same code again (``guide``, ``arch``: ``--guide`` /
    ``--arch`` on the command line). The rule is :func:`pyro_vae.user_code.check_code_trusted`'s.

    :raises UserError: one line, saying how to allow it.
    """
    named = {k: v for k, v in (("guide", guide), ("arch", arch)) if v is not None}
    check_code_trusted(config, f"the run in {directory}", trust_guide, named)


def load_run(directory, device="auto", checkpoint="best", trust_guide=False, guide=None, arch=None):
    """Load the run in ``directory`` (its ``config.json`` and a checkpoint) onto ``device``.

    :param device: ``"auto"`` (CUDA when available, else the CPU, whatever the run was trained on),
        ``"cpu"`` or ``"cuda"``. Checkpoints are read onto that device, so a run trained on a GPU
        opens on a machine without one.
    :param str checkpoint: ``"best"`` (default): ``best.pt``, the epoch with the best validation
        ELBO; ``"last"``: ``checkpoint.pt``, the last epoch. A run written before ``best.pt``
        existed falls back to ``checkpoint.pt``.
    :param bool trust_guide: allow running the code a run names as its guide or architecture
        (``file.py:Name`` or ``module:Name``); see :func:`check_guide_trusted`. ``guide``, ``arch``:
        the same spec, named again.
    :raises UserError: for an unknown ``checkpoint``, a folder that is not a run, a damaged ``config.json`` or checkpoint, or
        an untrusted guide.
    """
    if not isinstance(checkpoint, str) or checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    directory = Path(check_path(directory, "the run folder"))
    if not (directory / "config.json").exists():
        raise UserError(f"{directory} is not a pyro-vae run folder (no config.json)")
    where = directory / "config.json"
    try:
        meta = json.loads(where.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
        config = Config.from_dict(meta)
        x_dim, n_test = int(meta["x_dim"]), int(meta["n_test"])
        item = tuple(int(v) for v in meta["item_shape"]) if meta.get("item_shape") else x_dim  # images keep their shape
        image_shape = [int(v) for v in meta["image_shape"]]
        levels = meta.get("levels")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
            raise ValueError(f"levels must be a whole number of at least 2 or null, got {levels!r}")
        if x_dim < 1 or n_test < 1 or int(np.prod(image_shape)) != x_dim:
            raise ValueError(f"image_shape {image_shape} does not hold x_dim = {x_dim} values")
    except OSError as e:
        raise UserError(f"cannot read {where}: {e.strerror or e}") from None
    except UserError as e:
        raise UserError(f"{where} is damaged ({e})") from None
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise UserError(f"{where} is damaged ({type(e).__name__}: {e}); retrain the run") from None
    check_guide_trusted(config, directory, trust_guide, guide, arch)
    device = resolve_device(device or "auto")
    path = directory / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.exists() and (directory / "checkpoint.pt").exists():
        path = directory / "checkpoint.pt"  # a run from before best.pt
    state = load_checkpoint(path, map_location=device)
    other = directory / ("checkpoint.pt" if path.name == "best.pt" else "best.pt")
    if other.exists():  # a damaged run folder is refused whole, even when the checkpoint used is intact
        load_checkpoint(other)
    try:
        saved = Config.from_dict(state["config"])
    except (UserError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"the checkpoint in {directory} is damaged (its config: {e}); retrain the run") from None
    if saved.differences(config):
        raise UserError(f"the checkpoint in {directory} is from another configuration than its config.json")
    vae = build_vae(config, item, levels).to(device)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"the checkpoint in {directory} does not fit the model its config.json describes") from None
    metrics = read_metrics(directory / "metrics.jsonl")
    run = Run(directory, config, meta, vae, metrics)
    run.checkpoint = "best" if path.name == "best.pt" else "last"
    if (directory / "final.json").exists():
        try:
            run.final = json.loads((directory / "final.json").read_text())
        except ValueError:
            raise UserError(f"{directory / 'final.json'} is damaged") from None
    return run


def write_evaluation(run, result):
    """Write ``evaluation.json`` into the run folder (atomically, never through a link).

    :raises UserError: when it cannot be written (a read-only folder, a full disk), one line.
    """
    path = run.directory / "evaluation.json"
    try:
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
