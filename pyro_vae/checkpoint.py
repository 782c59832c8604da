"""Checkpoints: written atomically (temp file, fsync, rename), so an interrupted write never
replaces the last good one; read back with clear errors for corrupt or foreign files."""

import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError

FORMAT = "pyro-vae-checkpoint/1"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
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


def save_checkpoint(path, state):
    """Save ``state`` (a dict of tensors, numbers and strings) atomically, tagged with the format."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint; :class:`UserError` when it is missing, corrupt or not a pyro-vae checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: nothing to resume or load (train first with pyro-vae fit)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and torch errors of every kind mean a damaged file
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); delete it or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a pyro-vae checkpoint (expected format {FORMAT})")
    return state
