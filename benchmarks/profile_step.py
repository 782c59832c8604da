"""Where the time of one training step goes, and what each speed switch gains, in one run.

1. **Phases** of a step, timed one by one on the same batches (median over rounds, interleaved):
   the minibatch (gather + binarization), the forward pass (the nets alone, then everything else:
   Pyro's tracing, the distributions' ``log_prob``, the ELBO sums), the backward pass, the optimizer,
   for (a0) pyro-vae before this work (``Trace_ELBO`` with validation and host reads; one
   ``torch.optim.Adam`` per parameter as ``pyro.optim.Adam`` keeps them, plus ``SVI.step``'s
   parameter capture), (a) pyro-vae now and (b) hand-written PyTorch.
2. **Ablation**: whole steps with the switches of :class:`pyro_vae.Speed` turned on one after the
   other (each row adds one), plus Pyro's ``JitTrace_ELBO`` and, with ``--compile``,
   ``torch.compile`` of the captured loss graph; interleaved like ``speed.py``.
3. With ``--cprofile``: the Python functions where the fast step spends its time.
4. With ``--torch-profiler``: ``torch.profiler`` over whole steps of (a) ``Trainer.run_steps`` and (b),
   each step's time split into batch indexing + binarization, forward (ATen operators outside the
   backward and the optimizer), backward (the autograd engine's functions), optimizer (``Optimizer.step``
   and ``zero_grad``), and the rest: Python between the operators (Pyro's and pyro-vae's glue, the
   replay of the captured graph's Python, the profiler's own cost per event). Beside it, (d) NumPyro's
   ms per step when the extra ``bench`` is installed. ``--only-torch-profiler`` skips 1 and 2.

Usage::

    python benchmarks/profile_step.py --data-dir ~/data [--arch relu400] [--batch-size 128] [--compile]
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
import speed
from loops import ROOT, TorchVAELoop, config_for, synchronize

import pyro
import pyro.optim
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO
from pyro.infer.util import zero_grads

from pyro_vae import Speed, Trainer
from pyro_vae.speed import trace_elbo_loss


class Timer:
    """Times phases by the process's CPU time (all its threads): on a machine shared with other
    processes, wall-clock time also counts the moments the scheduler gave the cores to them. On CUDA
    it times wall-clock between synchronizations (the GPU's work is not CPU time)."""

    def __init__(self, device):
        self.device, self.times = device, {}
        self.clock = time.perf_counter if torch.device(device).type == "cuda" else time.process_time

    def __call__(self, key, fn):
        synchronize(self.device)
        t0 = self.clock()
        out = fn()
        synchronize(self.device)
        self.times.setdefault(key, []).append(self.clock() - t0)
        return out

    def median_ms(self, key, skip=10):
        return 1e3 * statistics.median(self.times[key][skip:])


def phases(config, rounds, block=5, numpyro=False):
    """Phase times (ms) of loops a0, a and b: blocks of ``block`` steps per loop, interleaved; with
    ``numpyro``, also (d) NumPyro's, from its jitted pieces (:mod:`numpyro_phases`), in the same rounds."""
    a = Trainer(config, speed=Speed())
    a.run_steps(3)  # builds the fused optimizer; validation is off from here on
    a0 = Trainer(config, speed=Speed.baseline())  # its own weights and parameter store
    a0.run_steps(3)
    b = TorchVAELoop(config, train=a.train)
    b.run(3)
    d = None
    if numpyro:
        from numpyro_phases import NumPyroPhases

        d = NumPyroPhases(config, train=a.train.tensor().flatten(1).cpu(), block=block)
    t = Timer(a.device)
    order = torch.randperm(len(a.train), device=a.device)
    position = [0]

    def batch():
        i = position[0] % (len(a.train) - config.batch_size)
        position[0] += config.batch_size
        return a._batch(order, i)

    def step_a0(x):
        # SVI.step as it ran before: validation on, Trace_ELBO's own code (host reads), per-parameter Adam
        with a0._own_params():
            with poutine.trace(param_only=True) as capture:
                loss = t("a0 forward", lambda: a0.step.loss.differentiable_loss(a0.vae.model, a0.vae.guide, x))
                t("a0 backward", loss.backward)
            params = t(
                "a0 parameter capture", lambda: {s["value"].unconstrained() for s in capture.trace.nodes.values()}
            )
            t("a0 optimizer", lambda: (a0.optimizer(params), zero_grads(params)))

    def step_a(x):
        # now: validation off, the sync-free Trace_ELBO sum replayed from its captured graph, one fused Adam
        opt, captured = a.step._torch_optim, a.step._captured
        with a._own_params(), pyro.validation_enabled(False):
            loss = t("a forward", lambda: captured(x) if a.step.captures else
                     trace_elbo_loss(a.step.loss, a.vae.model, a.vae.guide, x))  # fmt: skip
        t("a backward", loss.backward)
        t("a optimizer", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))

    def step_b(x):
        loss = t("b forward", lambda: b.vae.loss(x))
        t("b backward", loss.backward)
        t("b optimizer", lambda: (b.optimizer.step(), b.optimizer.zero_grad(set_to_none=True)))

    def nets(name, encoder, decoder, x):
        with torch.no_grad():  # forward only, for the share of the nets in the forward pass
            flat = x.reshape(len(x), -1)  # the MLPs take items (1, H, W) as vectors
            t(f"{name} nets forward", lambda: decoder(encoder(flat).chunk(2, dim=-1)[0]))

    loops = {
        "a0": (step_a0, a0.vae.encoder.net, a0.vae.decoder),
        "a": (step_a, a.vae.encoder.net, a.vae.decoder),
        "b": (step_b, b.vae.encoder, b.vae.decoder),
    }
    names = list(loops)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            step, encoder, decoder = loops[name]
            for _ in range(block):
                x = t("data", batch)
                step(x)
                nets(name, encoder, decoder, x)
        if d is not None:
            d.time_round()
    rows = {}
    for loop in names:
        # forward with autograd records the graph, the nets-only pass does not: "the rest" is an upper bound
        nets_ms = t.median_ms(f"{loop} nets forward")
        row = {
            "minibatch (gather + binarize)": t.median_ms("data"),
            "forward: nets (no autograd)": nets_ms,
            "forward: the rest (tracing, log_prob, sums, autograd records)": t.median_ms(f"{loop} forward") - nets_ms,
            "backward": t.median_ms(f"{loop} backward"),
            "optimizer": t.median_ms(f"{loop} optimizer"),
        }
        if loop == "a0":
            row["SVI.step parameter capture"] = t.median_ms("a0 parameter capture")
        row["total"] = sum(row.values())
        rows[loop] = row
    if d is not None:
        rows["d"] = d.phases()
        rows["d_compile_s"] = d.compile_s
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
    base = Speed.baseline()
    variants = {
        "a0: SVI.step (validation, host read, per-parameter Adam)": base,
        "+ validation after the first step only": base.replace(validate_every_step=False),
        "+ one torch Adam over all parameters": base.replace(validate_every_step=False, optimizer="torch"),
        "+ fused Adam kernel": base.replace(validate_every_step=False, optimizer="fused"),
        "+ no host read per step": Speed(capture=False),
        "+ loss captured as a graph (= a, the default)": Speed(),
    }
    if compile_backend:
        variants[f"+ torch.compile of the captured graph ({compile_backend})"] = Speed(compile=compile_backend)
    loops = {name: _StepLoop(config, speed) for name, speed in variants.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
        loops["Pyro's JitTrace_ELBO through SVI.step"] = _StepLoop(config, base, jit=True)
        loops["b: hand-written PyTorch (fused Adam)"] = TorchVAELoop(config)
        times, cpu_times = speed.time_loops(loops, steps, block, warmup, with_cpu=True)
    return {name: {"ms_per_step": 1e3 * statistics.median(ts), "cpu_ms_per_step": 1e3 * statistics.median(cpu_times[name])}
            for name, ts in times.items()}  # fmt: skip


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


DATA_OPS = {"aten::randperm", "aten::index", "aten::bernoulli", "aten::bernoulli_", "aten::to", "aten::_to_copy"}


def _categorize(events, steps, data_ops=DATA_OPS):
    """ms per step of each category over the top-level events of a torch.profiler trace."""
    out = {"batch indexing + binarization": 0.0, "forward (ATen ops)": 0.0, "backward (autograd engine)": 0.0,
           "optimizer (fused Adam + zero_grad)": 0.0}  # fmt: skip
    for e in events:
        if e.cpu_parent is not None:
            continue
        ms = e.cpu_time_total / 1e3
        if e.name.startswith("autograd::engine::evaluate_function"):
            out["backward (autograd engine)"] += ms
        elif e.name.startswith("Optimizer."):
            out["optimizer (fused Adam + zero_grad)"] += ms
        elif e.name in data_ops:
            out["batch indexing + binarization"] += ms
        elif e.name.startswith("aten::") or e.name.startswith("autograd::"):
            out["forward (ATen ops)"] += ms
    return {k: v / steps for k, v in out.items()}


def torch_profile(config, steps=100, block=20):
    """``torch.profiler`` breakdown of a step of (a) and (b), and (d)'s ms per step, in one run."""
    from torch.profiler import ProfilerActivity, profile

    a = Trainer(config)
    a.run_steps(20)  # past the first (eager, validated) step and the capture
    b = TorchVAELoop(config, train=a.train)
    b.run(20)
    loops = {"a": lambda k: a.run_steps(k), "b": b.run}
    try:
        from loops import NumPyroLoop, Unavailable

        d = NumPyroLoop(config, train=a.train.tensor().flatten(1).cpu())
        d.run(block)
        d.sync()
        loops["d"] = lambda k: (d.run(k), d.sync())
    except Unavailable as e:
        print(f"(d) skipped: {e}")
    # unprofiled ms per step, interleaved blocks (wall-clock and CPU)
    wall, cpu = {n: [] for n in loops}, {n: [] for n in loops}
    for r in range(max(1, steps // block)):
        for name, run in loops.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run(block)
            wall[name].append((time.perf_counter() - t0) / block * 1e3)
            cpu[name].append((time.process_time() - c0) / block * 1e3)
    result = {"steps": steps, "unprofiled_ms": {n: statistics.median(v) for n, v in wall.items()},
              "unprofiled_cpu_ms": {n: statistics.median(v) for n, v in cpu.items()}, "profiled": {}}  # fmt: skip
    # profiled: (a) and (b) alternate in windows, so a change in the machine's load hits both alike
    windows = 4
    events = {"a": [], "b": []}
    totals = {"a": 0.0, "b": 0.0}
    tables = {}
    for w in range(windows):
        for name in ("a", "b") if w % 2 == 0 else ("b", "a"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                loops[name](steps // windows)
                totals[name] += (time.perf_counter() - t0) * 1e3
            evs = list(prof.events())
            events[name].append(_categorize(evs, steps))
            top = [e for e in evs if e.cpu_parent is None]
            result.setdefault("top_level_ops_per_step", {}).setdefault(name, 0.0)
            result["top_level_ops_per_step"][name] += sum(1 for e in top if e.name.startswith("aten::")) / steps
            if w == windows - 1:
                tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    for name in ("a", "b"):
        cats = {k: sum(c[k] for c in events[name]) for k in events[name][0]}
        total = totals[name] / (windows * (steps // windows)) * 1.0
        cats["Python between operators (+ profiler cost)"] = total - sum(cats.values())
        cats["total (profiled)"] = total
        result["profiled"][name] = cats
    result["top_ops"] = tables
    return result


def torch_profile_markdown(tp, config):
    names = list(tp["profiled"]["a"])
    lines = [
        f"torch.profiler, {tp['steps']} steps per loop, 784-{'-'.join(map(str, config.hidden))}-{config.z_dim} "
        f"{config.activation}, batch {config.batch_size}, {config.device}, {torch.get_num_threads()} torch threads; "
        f"load average {os.getloadavg()[0]:.2f}.",
        "",
        "| ms per step | (a) pyro-vae | (b) hand-written | (a) - (b) |",
        "|---|---:|---:|---:|",
    ]
    pa, pb = tp["profiled"]["a"], tp["profiled"]["b"]
    for n in names:
        lines.append(f"| {n} | {pa[n]:.2f} | {pb[n]:.2f} | {pa[n] - pb[n]:+.2f} |")
    un, uc = tp["unprofiled_ms"], tp["unprofiled_cpu_ms"]
    ops = tp.get("top_level_ops_per_step", {})
    if ops:
        lines.append(f"| top-level ATen operators per step (count) | {ops['a']:.0f} | {ops['b']:.0f} | {ops['a'] - ops['b']:+.0f} |")
    lines.append("| whole step without the profiler: wall-clock (CPU) | "
                 f"{un['a']:.2f} ({uc['a']:.2f}) | {un['b']:.2f} ({uc['b']:.2f}) | {un['a'] - un['b']:+.2f} |")  # fmt: skip
    if "d" in un:
        lines += ["", f"(d) NumPyro, jitted, same run: {un['d']:.2f} ms per step wall-clock ({uc['d']:.2f} CPU); "
                  f"(a)/(d) = {un['a'] / un['d']:.2f} wall-clock, {uc['a'] / uc['d']:.2f} CPU."]  # fmt: skip
    return "\n".join(lines) + "\n"


def phases_markdown(report):
    """The phase table alone (``--phases-only``)."""
    return markdown({**report, "ablation_ms": {}})


def markdown(report):
    c, ph, ab = report["config"], report["phases_ms"], report["ablation_ms"]
    clock = "wall-clock" if c["device"].startswith("cuda") else "CPU"
    lines = [
        f"784-{'-'.join(map(str, c['hidden']))}-{c['z_dim']} {c['activation']}, batch {c['batch_size']}, {c['device']}, "
        f"{report['torch_threads']} torch threads, OMP_WAIT_POLICY {report.get('omp_wait_policy', '(unset)')}; "
        f"load average {report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after.",
        "",
        f"Phases of one step, {clock} ms per step (medians):",
        "",
        "| phase | (a0) before | (a) now | (b) hand-written |" + (" (d) NumPyro, jitted pieces | (a) - (d) |" if "d" in ph else ""),
        "|---|---:|---:|---:|" + ("---:|---:|" if "d" in ph else ""),
    ]
    keys = ("a0", "a", "b", "d") if "d" in ph else ("a0", "a", "b")
    names = list(ph["a0"]) + [n for n in ph.get("d", {}) if n not in ph["a0"]]
    for name in names:
        cells = [f"{ph[k][name]:.2f}" if name in ph[k] else "-" for k in keys]
        if "d" in ph:
            cells.append(f"{ph['a'][name] - ph['d'][name]:+.2f}" if name in ph["a"] and name in ph["d"] else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "d" in ph:
        lines += ["", "(d)'s phases are differences of jitted pieces, each run in its own `fori_loop` "
                  "(`benchmarks/numpyro_phases.py`): forward rest = loss - nets, backward = value_and_grad - loss, "
                  "optimizer = svi.update - value_and_grad; the whole jitted step, where XLA fuses across them, "
                  f"is the last row. Compiling the pieces took {ph.get('d_compile_s', 0):.1f} s."]  # fmt: skip
    if not ab:
        return "\n".join(lines) + "\n"
    base = next(iter(ab.values()))
    lines += ["", "Whole steps, each row adding one switch (interleaved; ms per step, medians):", "",
              "| variant | wall-clock ms | speed-up | CPU ms | speed-up |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, v in ab.items():
        lines.append(f"| {name} | {v['ms_per_step']:.2f} | x{base['ms_per_step'] / v['ms_per_step']:.2f} | "
                     f"{v['cpu_ms_per_step']:.2f} | x{base['cpu_ms_per_step'] / v['cpu_ms_per_step']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


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
    p.add_argument("--torch-profiler", action="store_true", help="torch.profiler breakdown of (a) and (b), and (d)")
    p.add_argument("--only-torch-profiler", action="store_true", help="only the torch.profiler breakdown")
    p.add_argument("--profiler-steps", type=int, default=100)
    p.add_argument("--numpyro", action="store_true", help="add (d) NumPyro's phases, from its jitted pieces")
    p.add_argument("--phases-only", action="store_true", help="only the phase table (no ablation)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--update-docs", action="store_true", help="write the tables into docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_for(args.arch, args.batch_size, args.device, args.dataset, args.data_dir)
    report = {"config": config.to_dict(), "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}  # fmt: skip
    if args.torch_profiler or args.only_torch_profiler:
        tp = torch_profile(config, args.profiler_steps)
        for name, table in tp.pop("top_ops").items():
            print(f"\n({name}) top operators by self CPU time:\n{table}")
        report["torch_profiler"] = tp
        table = torch_profile_markdown(tp, config)
        print(table)
        if args.only_torch_profiler:
            report["load_after"] = os.getloadavg()
            stem = f"torch-profile-{args.arch}-{args.batch_size}-{args.device}"
            speed.write_report(args.out, stem, report, table)
            if args.update_docs:
                speed.update_docs(table, f"torch-profile:{args.arch}-{args.batch_size}-{args.device}")
            return
    report["phases_ms"] = phases(config, args.rounds, numpyro=args.numpyro)
    clock = "wall-clock" if torch.device(args.device).type == "cuda" else "CPU"
    print(f"\nphases of one step, {clock} ms (medians), {args.arch}, batch {args.batch_size}:")
    names = list(report["phases_ms"]["a0"])
    keys = [k for k in ("a0", "a", "b", "d") if k in report["phases_ms"]]
    print(f"{'':64s}" + "".join(f"{k:>9s}" for k in keys))
    for n in names + [n for n in report["phases_ms"].get("d", {}) if n not in names]:
        print(f"{n:64s}" + "".join(f"{report['phases_ms'][k].get(n, 0):9.2f}" for k in keys))
    if args.phases_only:
        report["load_after"] = os.getloadavg()
        stem = f"profile-phases-{args.arch}-{args.batch_size}-{args.device}"
        speed.write_report(args.out, stem, report, phases_markdown(report))
        return report
    report["ablation_ms"] = ablation(config, args.steps, args.block, args.warmup, args.compile)
    base = next(iter(report["ablation_ms"].values()))
    print("\nablation: ms/step (median; wall-clock, CPU time), speed-up over a0")
    for name, ms in report["ablation_ms"].items():
        wall, cpu = ms["ms_per_step"], ms["cpu_ms_per_step"]
        print(
            f"  {name:62s} {wall:8.2f} x{base['ms_per_step'] / wall:.2f}  {cpu:8.2f} x{base['cpu_ms_per_step'] / cpu:.2f}"
        )
    if args.cprofile:
        report["cprofile"] = cprofile_fast(config)
        print(report["cprofile"])
    report["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{args.arch}-{args.batch_size}-{args.device}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}; wrote {path}")
    if args.update_docs:
        speed.update_docs(markdown(report), f"profile-table:{args.arch}-{args.batch_size}-{args.device}")


if __name__ == "__main__":
    main()
