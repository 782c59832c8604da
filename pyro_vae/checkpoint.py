"""Checkpoints: written atomically (temp file, fsync, rename), so an interrupted write never
replaces the last good one; read back with clear errors for corrupt or foreign files."""

import os
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import UserError

FORMAT = "pyro-vae-checkpoint/1"
#: the entries every checkpoint holds (besides ``format``)
KEYS = ("config", "epoch", "model", "optimizer", "rng")


def usual_mode(mode: int = 0o666) -> int:
    """``mode`` less the process's umask: the permissions ``open`` would give a new file (``0o777`` for a folder).
    For files made by ``mkstemp``/``mkdtemp`` or libraries that write 0600 files."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def refuse_symlink(path):
    """:class:`UserError` when ``path`` is a symbolic link: files in a run folder are never written through one
    (a received run folder could point ``evaluation.json`` or a picture at any file of the user's)."""
    if os.path.islink(path):
        raise UserError(f"{path} is a symbolic link; pyro-vae does not write through links in a run folder "
                        "(remove the link and try again)")  # fmt: skip


def clean_temp_files(folder):
    """Remove temporary files an interrupted atomic write left in ``folder`` (``.NAME.*.tmp``).

    Call it only while holding the folder's lock (no other process is writing there).
    :returns: the number of files removed.
    """
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(path, write):
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``.

    The rename replaces ``path`` itself, never a file a link at ``path`` points to; a link there is
    refused (:func:`refuse_symlink`). An interrupted write leaves the old file and, at worst, a
    ``.NAME.*.tmp`` file (:func:`clean_temp_files`).
    """
    path = Path(path)
    refuse_symlink(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, usual_mode())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def rng_state():
    """The states of torch's random number generators (CPU, and every CUDA device when there is one)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore :func:`rng_state` output (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torch_load(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` without torch's own warnings: a raw pickle (not a torch zip
    file) of protocol 3 to 5 makes torch warn "Detected pickle protocol ..." before it refuses or reads
    the file, and the caller's one-line :class:`UserError` is all the user should see."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def save_checkpoint(path, state):
    """Save ``state`` (a dict of tensors, numbers and strings) atomically, tagged with the format."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint; :class:`UserError` when it is missing, corrupt or not a pyro-vae checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: nothing to resume or load (train first with pyro-vae fit)")
    try:
        state = torch_load(path, map_location=map_location)
    except Exception as e:  # pickle, zip and torch errors of every kind mean a damaged file
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); delete it or retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a pyro-vae checkpoint (expected format {FORMAT})")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise UserError(f"checkpoint {path} is damaged: it lacks {', '.join(missing)}; retrain the run")
    types = {"config": dict, "epoch": int, "model": dict, "optimizer": dict, "rng": dict}
    wrong = [k for k, t in types.items() if not isinstance(state[k], t)]
    if wrong or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise UserError(f"checkpoint {path} is damaged: its {', '.join(wrong) or 'model'} entry has the wrong type; "
                        "retrain the run")  # fmt: skip
    bad = [name for name, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"checkpoint {path} is damaged: parameter {bad[0]} holds NaN or infinite values; "
                        "retrain the run (with a smaller --lr if it diverged)")  # fmt: skip
    return state
