"""Where the time of one training step goes, and what each speed switch gains, in one run.

1. **Phases** of a step, timed one by one on the same batches (median over rounds, interleaved):
   the minibatch (gather + binarization), the forward pass (the nets alone, then everything else:
   Pyro's tracing, the distributions' ``log_prob``, the ELBO sums), the backward pass, the optimizer,
   for (a0) pyro-vae before this work (``Trace_ELBO`` with validation and host reads; one
   ``torch.optim.Adam`` per parameter as ``pyro.optim.Adam`` keeps them, plus ``SVI.step``'s
   parameter capture), (a) pyro-vae now and (b) hand-written PyTorch.
2. **Ablation**: whole steps with the switches of :class:`pyro_vae.Speed` turned on one after the
   other (each row adds one), plus Pyro's ``JitTrace_ELBO`` and, with ``--compile``,
   ``torch.compile`` of the nets; interleaved like ``speed.py``.
3. With ``--cprofile``: the Python functions where the fast step spends its time.

Usage::

    python benchmarks/profile_step.py --data-dir /tmp/data [--arch relu400] [--batch-size 128] [--compile]
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyro
import pyro.optim
from loops import ROOT, TorchVAELoop, config_for, synchronize
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO
from pyro.infer.util import zero_grads

from pyro_vae import Speed, Trainer
from pyro_vae.engine import trace_elbo_loss


class Timer:
    def __init__(self, device):
        self.device, self.times = device, {}

    def __call__(self, key, fn):
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(self.device)
        self.times.setdefault(key, []).append(time.perf_counter() - t0)
        return out

    def median_ms(self, key, skip=3):
        return 1e3 * statistics.median(self.times[key][skip:])


def phases(config, rounds):
    """Phase times (ms) of loops a0, a and b on the same batches."""
    a = Trainer(config, speed=Speed())
    a.run_steps(3)  # builds the fused optimizer; validation off from here on
    vae, elbo, opt = a.vae, a.objective, a.step._torch_optim
    # a0: the same model, with Pyro's own ELBO code and per-parameter optimizers (its own copy of the weights)
    a0 = Trainer(config, speed=Speed.baseline())
    a0.run_steps(3)
    b = TorchVAELoop(config, train=a.train)
    b.run(3)
    t = Timer(a.device)
    order = torch.randperm(len(a.train), device=a.device)

    def nets(model):
        def run():
            loc, raw = model.encoder.net(x).chunk(2, dim=-1)
            return model.decoder(loc)

        return run

    for r in range(rounds):
        i = (r * config.batch_size) % (len(a.train) - config.batch_size)
        x = t("data", lambda: a._batch(order, i))
        # (a0) SVI.step as it runs: validation on, Trace_ELBO's own code (host reads), per-parameter Adam
        with poutine.trace(param_only=True) as capture:
            loss = t("a0 forward", lambda: a0.objective.differentiable_loss(a0.vae.model, a0.vae.guide, x))
            t("a0 backward", lambda: loss.backward())
        params = t("a0 parameter capture",
                   lambda: set(s["value"].unconstrained() for s in capture.trace.nodes.values()))  # fmt: skip
        t("a0 optimizer", lambda: (a0.optimizer(params), zero_grads(params)))
        t("a0 nets forward", nets(a0.vae))
        # (a) now: validation off, the sync-free Trace_ELBO sum, one fused Adam
        with pyro.validation_enabled(False):
            loss = t("a forward", lambda: trace_elbo_loss(elbo, vae.model, vae.guide, x))
        t("a backward", lambda: loss.backward())
        t("a optimizer", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        t("a nets forward", nets(vae))
        # (b) hand-written
        loss = t("b forward", lambda: b.vae.loss(x))
        t("b backward", lambda: loss.backward())
        t("b optimizer", lambda: (b.optimizer.step(), b.optimizer.zero_grad(set_to_none=True)))
        t("b nets forward", lambda: b.vae.decoder(b.vae.encoder(x).chunk(2, dim=-1)[0]))
    for model in (vae, a0.vae, b.vae):  # the nets-only passes left gradients nowhere; be tidy anyway
        model.zero_grad(set_to_none=True)
    rows = {}
    for loop in ("a0", "a", "b"):
        nets_ms = t.median_ms(f"{loop} nets forward")
        row = {
            "minibatch (gather + binarize)": t.median_ms("data"),
            "forward: nets": nets_ms,
            "forward: the rest (tracing, log_prob, sums)": t.median_ms(f"{loop} forward") - nets_ms,
            "backward": t.median_ms(f"{loop} backward"),
            "optimizer": t.median_ms(f"{loop} optimizer"),
        }
        if loop == "a0":
            row["SVI.step parameter capture"] = t.median_ms("a0 parameter capture")
        row["total"] = sum(row.values())
        rows[loop] = row
    return rows


class _StepLoop:
    def __init__(self, config, speed=None, jit=False):
        self.trainer = Trainer(config, speed=speed)
        if jit:  # Pyro's JIT ELBO through SVI.step (torch.jit.trace underneath)
            tr = self.trainer
            tr.step._svi = SVI(tr.vae.model, tr.vae.guide, tr.optimizer, JitTrace_ELBO(max_plate_nesting=1))

    def run(self, k):
        self.trainer.run_steps(k)

    def sync(self):
        synchronize(self.trainer.device)


def ablation(config, steps, block, warmup, compile_backend=None):
    from speed import time_loops

    base = Speed.baseline()
    variants = {
        "a0: SVI.step (validation, host read, per-parameter Adam)": base,
        "+ validation after the first step only": base.replace(validate_every_step=False),
        "+ one torch Adam over all parameters": base.replace(validate_every_step=False, optimizer="torch"),
        "+ fused Adam kernel": base.replace(validate_every_step=False, optimizer="fused"),
        "+ no host read per step (= a, the default)": Speed(),
    }
    if compile_backend:
        variants[f"+ torch.compile of the nets ({compile_backend})"] = Speed(compile=compile_backend)
    loops = {name: _StepLoop(config, speed) for name, speed in variants.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
        loops["Pyro's JitTrace_ELBO through SVI.step"] = _StepLoop(config, base, jit=True)
        loops["b: hand-written PyTorch (fused Adam)"] = TorchVAELoop(config)
        times = time_loops(loops, steps, block, warmup)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def cprofile_fast(config, steps=200):
    trainer = Trainer(config)
    trainer.run_steps(10)
    prof = cProfile.Profile()
    prof.enable()
    trainer.run_steps(steps)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--arch", default="relu400")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=40, help="phase-timing rounds")
    p.add_argument("--steps", type=int, default=60, help="ablation: timed steps per variant")
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--compile", nargs="?", const="inductor", default=None, help="also time torch.compile of the nets")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_for(args.arch, args.batch_size, args.device, args.dataset, args.data_dir)
    report = {"config": config.to_dict(), "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    report["phases_ms"] = phases(config, args.rounds)
    print(f"\nphases of one step, ms (median of {args.rounds - 3} rounds), {args.arch}, batch {args.batch_size}:")
    names = list(report["phases_ms"]["a0"])
    print(f"{'':46s}" + "".join(f"{k:>9s}" for k in ("a0", "a", "b")))
    for n in names:
        print(f"{n:46s}" + "".join(f"{report['phases_ms'][k].get(n, 0):9.2f}" for k in ("a0", "a", "b")))
    report["ablation_ms"] = ablation(config, args.steps, args.block, args.warmup, args.compile)
    base = next(iter(report["ablation_ms"].values()))
    print("\nablation: ms/step (median), speed-up over a0")
    for name, ms in report["ablation_ms"].items():
        print(f"  {name:62s} {ms:8.2f}  x{base / ms:.2f}")
    if args.cprofile:
        report["cprofile"] = cprofile_fast(config)
        print(report["cprofile"])
    report["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{args.arch}-{args.batch_size}-{args.device}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}; wrote {path}")


if __name__ == "__main__":
    main()
