import os
import shutil
from pathlib import Path

import pytest

import pyro

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """``shared/data`` beside the checkout (or $PYRO_VAE_SHARED_DATA), if it exists."""
    for candidate in (os.environ.get("PYRO_VAE_SHARED_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "README.md").exists():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def fresh_pyro(monkeypatch, tmp_path_factory):
    """Each test starts with an empty parameter store, validation on, a fixed seed, and no stray data dir."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def shared_copy(tmp_path_factory):
    """A function copying ``shared/data/<name>`` into a temp data root (shared/ is never written to)."""
    src = shared_data_dir()
    root = tmp_path_factory.mktemp("data")

    def copy(*names):
        if src is None:
            pytest.skip("shared/data is not beside this checkout (set PYRO_VAE_SHARED_DATA to run this test)")
        for name in names:
            if not (root / name).exists():
                shutil.copytree(src / name, root / name)
        return root

    return copy


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny-net tests (faster, and immune to a busy
    machine's thread contention); use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _devices():
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request):
    """``"cpu"``, and also ``"cuda"`` where CUDA is available: for device-independent numerical tests
    (``benchmarks/gpu_check.sh`` runs them on a GPU)."""
    return request.param


def run_cli(capsys, *args):
    """Run ``pyro-vae ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    from pyro_vae.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result, *fragments):
    """A :func:`run_cli` result that is a user's error: exit code 2 and exactly one ``error:`` line on
    stderr, holding each of ``fragments``; returns the message after ``error: ``."""
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0][len("error: "):]
