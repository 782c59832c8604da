"""``--precision bf16`` on the CPU (pyro_vae.speed.precision): detection, refusal, and what stays float32.

The correctness tests need a CPU with AVX512_BF16 or AMX (skipped elsewhere); the refusal tests
monkeypatch the detection, so they run everywhere.
"""

import pytest
import torch

from pyro_vae import fit
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.speed import precision
from pyro_vae.speed.precision import check_precision, cpu_bf16_features
from pyro_vae.train.build import make_config
from pyro_vae.train.distributed import DistributedTrainer
from pyro_vae.vae.nets import MLP

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", hidden=(32,), z_dim=4, batch_size=32, device="cpu", seed=0, binarize="threshold")
HAS_BF16 = bool(cpu_bf16_features())
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither AVX512_BF16 nor AMX")

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpuinfo_flags_are_read_from_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert precision._cpuinfo_flags(str(path)) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert precision._cpuinfo_flags(str(tmp_path / "missing")) is None
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert precision._cpuinfo_flags(str(tmp_path / "empty")) is None


@pytest.mark.parametrize(
    "cpuinfo,torch_flags,expected",
    [
        ({"avx2", "avx512_bf16"}, None, ["avx512_bf16"]),  # /proc/cpuinfo alone (torch without the check)
        ({"avx2", "amx_bf16", "amx_tile"}, set(), ["amx_bf16"]),
        (None, {"avx512_bf16"}, ["avx512_bf16"]),  # no /proc/cpuinfo: torch's CPUID check alone
        ({"avx2", "avx512f"}, set(), []),  # AVX-512 without BF16: refused
        (None, None, []),  # nothing readable: refused, not guessed
    ],
)
def test_features_come_from_cpuinfo_or_torchs_check(monkeypatch, cpuinfo, torch_flags, expected):
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda path="/proc/cpuinfo": cpuinfo)
    monkeypatch.setattr(precision, "_torch_flags", lambda: torch_flags)
    monkeypatch.setattr(precision.sys, "platform", "linux")
    assert cpu_bf16_features() == expected


def test_bf16_is_refused_with_one_line_on_a_cpu_without_bf16_instructions(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: [])
    message = "--precision bf16 on the CPU needs bfloat16 instructions (AVX512_BF16 or AMX)"
    with pytest.raises(UserError, match=r"^--precision bf16 on the CPU needs bfloat16 instructions \(AVX512_BF16 or AMX\)"):
        check_precision("bf16", "cpu")
    check_precision("fp32", "cpu")
    check_precision("bf16", torch.device("cuda"))  # CUDA is not refused here (its own checks run at training)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit(make_config(None, **TINY), tmp_path / "run", precision="bf16")
    with pytest.raises(UserError, match="needs bfloat16 instructions"):
        DistributedTrainer(make_config(None, **TINY), precision="bf16")
    assert not (tmp_path / "run").exists()
    code = main(["fit", "--dataset", "digits", "--hidden", "32", "--z-dim", "2", "--device", "cpu", "--epochs", "1",
                 "--precision", "bf16", "--out", str(tmp_path / "cli"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"error: {message}, which this CPU lacks: there bf16 would run slower "
                                        "than fp32; use --precision fp32"]  # fmt: skip


def test_bf16_is_refused_on_other_devices_and_unknown_precisions():
    with pytest.raises(UserError, match="^--precision bf16 runs on CUDA or on a CPU with AVX512_BF16 or AMX, not on meta"):
        check_precision("bf16", "meta")
    with pytest.raises(UserError, match="unknown precision 'fp16'; choose one of: fp32, bf16"):
        check_precision("fp16", "cpu")


@needs_bf16
def test_bf16_on_the_cpu_keeps_parameters_gradients_optimizer_and_elbo_in_float32():
    trainer = DistributedTrainer(make_config(None, **TINY), precision="bf16")
    outputs = []
    for m in trainer.vae.modules():
        if isinstance(m, MLP):
            m.register_forward_hook(lambda _, args, out: outputs.append((args[0].dtype, out.dtype)))
    losses = trainer.run_steps(3)
    assert losses.dtype == torch.float32 and trainer.step.captures
    # autocast_networks' hooks were registered first, so this one sees the output they cast back to float32
    assert outputs and all(out == torch.float32 for _, out in outputs)
    assert all(p.dtype == torch.float32 for p in trainer.vae.parameters())
    state = trainer.step.get_state()
    assert state and all(
        v.dtype == torch.float32 for s in state.values() for v in s["state"][0].values() if isinstance(v, torch.Tensor)
    )


@needs_bf16
def test_bf16_on_the_cpu_runs_the_products_in_bfloat16_and_stays_close_to_fp32():
    """Same seed, same batches: the per-step losses (sums over 32 items of 64 pixels, about 1400 nats)
    of 30 steps differ from fp32's by relative 2e-5 to 1e-4 (measured: largest 6e-5 on this CPU), since
    bfloat16 rounds each product's inputs to 8 bits of mantissa (relative 2^-9 = 2e-3) and oneDNN
    accumulates in float32. The tolerance, 1e-3 relative, is 10x the largest seen and half of one bf16
    rounding; the losses must differ (>1e-7: the products did run in bfloat16)."""
    runs = {}
    for name in ("fp32", "bf16"):
        trainer = DistributedTrainer(make_config(None, **TINY), precision=name)
        runs[name] = trainer.run_steps(30)
    relative = ((runs["bf16"] - runs["fp32"]) / runs["fp32"]).abs()
    assert relative.max() < 1e-3, relative.max()
    assert relative.max() > 1e-7  # not float32: the autocast did something


@needs_bf16
@pytest.mark.slow
def test_bf16_with_two_cpu_processes_trains_as_fp32_does(tmp_path):
    """--devices 2 (gloo) with bf16: every rank autocasts its networks; DDP all-reduces float32
    gradients. After 3 epochs on digits the test ELBO is within 1 nat of the fp32 two-process run's
    (the seed-to-seed spread of this setting is 0.27 nats at 10 epochs, test_distributed.py)."""
    settings = dict(TINY, epochs=3)
    bf16 = fit(make_config(None, **settings), tmp_path / "bf16", devices=2, precision="bf16", quiet=True)
    fp32 = fit(make_config(None, **settings), tmp_path / "fp32", devices=2, quiet=True)
    bf16_elbo, fp32_elbo = bf16.final["test_elbo_last"], fp32.final["test_elbo_last"]
    print(f"test ELBO after 3 epochs, 2 processes: bf16 {bf16_elbo:.5f}, fp32 {fp32_elbo:.5f}")
    assert bf16_elbo != fp32_elbo and abs(bf16_elbo - fp32_elbo) < 1.0
