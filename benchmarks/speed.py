"""Training speed of pyro-vae against hand-written PyTorch and Pyro's example loop, in one run.

For each device (the CPU always, CUDA when there is a GPU), architecture (784-400-20 ReLU and the
IWAE paper's 784-200-200-50 tanh) and batch size (128 and 1024), the loops of
:mod:`benchmarks.loops` take the same number of steps on MNIST, interleaved: each round runs a block
of steps of every loop, in a rotating order, so a change in the machine's load hits all of them.
A block is timed between two device synchronizations (on CUDA; the CPU is synchronous), so no
loop is forced to synchronize per step. Reported: ms per step (median over the blocks after the
warm-up), items/s, s/epoch (``ceil(60000 / batch) x ms/step``), peak memory, and the ratios a/b
c/a, d/a and e/a (a0/a too: pyro-vae's loop before this work). (d) NumPyro and (e) pythae come from
the optional extra ``bench`` (``pip install -e .[bench]``) and are skipped, with the reason printed,
when it is not installed; (d)'s compile time is reported apart from its step times.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over a few steps of one loop alone; on
the CPU the peak resident set size of a fresh process running only that loop, minus its size
after imports (``--no-memory`` skips these probes).

Usage (``--data-dir``: the folder holding ``MNIST/``, read-only is fine; see ``docs/benchmarks.md``)::

    python benchmarks/speed.py --data-dir ~/data                 # JSON + markdown in benchmarks/results/
    python benchmarks/speed.py --data-dir ~/data --update-docs   # and the table in docs/benchmarks.md
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loops import LOOPS, ROOT, Unavailable, config_for

import pyro

DOCS = ROOT / "docs" / "benchmarks.md"
TRAIN_SIZE = {"mnist": 60_000, "digits": 1617}
#: the ratios reported, numerator/denominator loops: each is how many times slower the first is
RATIOS = (("a", "b"), ("c", "a"), ("d", "a"), ("e", "a"), ("a0", "a"), ("d", "ac"), ("d", "ah"), ("d", "ach"),
          ("d", "af"), ("d", "a1"), ("a", "ac"), ("a", "ah"), ("a", "ach"), ("a", "af"), ("a", "a1"))


def machine():
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def build(name, config, args):
    """The loop ``name`` for ``config``; raises :class:`loops.Unavailable` (with the reason) for a peer
    loop whose package is not installed or has no backend for the device."""
    cls = LOOPS[name]
    if name == "c":
        return cls(config, num_workers=args.c_workers)
    if name == "a" and args.experimental_cuda_graph and str(config.device).startswith("cuda"):
        from pyro_vae import Speed

        return cls(config, Speed(experimental_cuda_graph=True))
    return cls(config)


def time_loops(loops, steps, block, warmup, with_cpu=False):
    """Interleaved timing: ``steps // block`` rounds of one ``block`` per loop, in rotating order.

    Returns seconds per step of each block (wall-clock), and with ``with_cpu`` also the process's CPU
    seconds per step (all threads; unlike wall-clock time it does not count the time the scheduler
    gave the cores to other processes, so it is the steadier number on a shared machine).
    """
    for loop in loops.values():  # the warm-up's seconds (capture, compile) are kept as loop.startup_s
        t0 = time.perf_counter()
        loop.run(warmup)
        loop.sync()
        loop.startup_s = time.perf_counter() - t0
    times = {name: [] for name in loops}
    cpu_times = {name: [] for name in loops}
    names = list(loops)
    for r in range(max(1, steps // block)):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            loop = loops[name]
            loop.sync()
            c0, t0 = time.process_time(), time.perf_counter()
            loop.run(block)
            loop.sync()
            times[name].append((time.perf_counter() - t0) / block)
            cpu_times[name].append((time.process_time() - c0) / block)
    return (times, cpu_times) if with_cpu else times


def cuda_peak(name, config, args, steps=5):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loop = build(name, config, args)
    loop.run(steps)
    loop.sync()
    peak = torch.cuda.max_memory_allocated() - before
    del loop
    return peak / 2**20


def cpu_peak(name, arch, batch_size, args, steps=5):
    """Peak RSS of a fresh process that runs only this loop, above its RSS after imports (MiB)."""
    cmd = [sys.executable, __file__, "--probe", name, "--archs", arch, "--batch-sizes", str(batch_size),
           "--dataset", args.dataset, "--probe-steps", str(steps), "--threads", str(torch.get_num_threads())]  # fmt: skip
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def probe(args):
    """(child process) run one loop for a few steps; print its peak RSS above the RSS after imports."""
    import sklearn.datasets  # noqa: F401  everything a loop may import, before the baseline is taken
    import torch._dynamo  # noqa: F401  (imported by the first torch optimizer)
    import torchvision.datasets  # noqa: F401

    for peer in {"d": ("jax", "numpyro.infer"), "e": ("pythae.trainers",)}.get(args.probe, ()):
        __import__(peer)  # a peer's imports are not its training's memory either

    import pyro_vae.runs.fit  # noqa: F401

    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    config = config_for(args.archs[0], args.batch_sizes[0], "cpu", args.dataset, args.data_dir)
    loop = build(args.probe, config, args)
    loop.run(args.probe_steps)
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - base}))


def _status_mib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(key)


def measure(args):
    devices = ([] if args.cuda_only else ["cpu"]) + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    results = []
    for device in devices:
        for arch in args.archs:
            for batch_size in args.batch_sizes:
                config = config_for(arch, batch_size, device, args.dataset, args.data_dir)
                loops, skipped = {}, {}
                for name in args.loops:  # (a) first: it clears Pyro's store
                    try:
                        loops[name] = build(name, config, args)
                    except Unavailable as e:
                        skipped[name] = str(e)
                        print(f"skipping ({name}) {LOOPS[name].label} on {device}: {e}", flush=True)
                load = os.getloadavg()[0]
                times, cpu_times = time_loops(loops, args.steps, args.block, args.warmup, with_cpu=True)
                steps_per_epoch = math.ceil(TRAIN_SIZE[args.dataset] / batch_size)
                row = {"device": device, "arch": arch, "batch_size": batch_size, "load_1min": load, "loops": {},
                       "skipped": skipped}  # fmt: skip
                for name, ts in times.items():
                    ms = 1e3 * statistics.median(ts)
                    row["loops"][name] = {
                        "label": LOOPS[name].label,
                        "ms_per_step": ms,
                        "ms_per_step_quartiles": [
                            1e3 * q for q in statistics.quantiles(ts * 2, n=4, method="inclusive")
                        ],
                        "cpu_ms_per_step": 1e3 * statistics.median(cpu_times[name]),
                        "items_per_s": batch_size / ms * 1e3,
                        "s_per_epoch": steps_per_epoch * ms / 1e3,
                        "blocks": len(ts),
                    }
                    if hasattr(loops[name], "compile_s"):  # jitted loops: compile seconds, not in the step times
                        row["loops"][name]["compile_s"] = loops[name].compile_s
                    # the warm-up steps' seconds, capture and compile included: start-up ~ warm-up - its steps
                    row["loops"][name]["warmup_s"] = loops[name].startup_s
                    row["loops"][name]["startup_s"] = max(0.0, loops[name].startup_s - args.warmup * ms / 1e3)
                del loops
                for name in row["loops"]:
                    if args.memory:
                        peak = (
                            cuda_peak(name, config, args)
                            if device == "cuda"
                            else cpu_peak(name, arch, batch_size, args)
                        )
                        row["loops"][name]["peak_mib"] = peak
                row["ratios"], row["cpu_ratios"] = {}, {}
                for key, out in (("ms_per_step", row["ratios"]), ("cpu_ms_per_step", row["cpu_ratios"])):
                    ms = {k: v[key] for k, v in row["loops"].items()}
                    for num, den in RATIOS:
                        if num in ms and den in ms:
                            out[f"{num}/{den}"] = ms[num] / ms[den]
                results.append(row)
                print(_row_line(row), flush=True)
    return results


def _row_line(row):
    parts = [f"{row['device']:4s} {row['arch']:10s} B={row['batch_size']:<5d}"]
    parts += [f"{k} {v['ms_per_step']:7.2f} ms" for k, v in row["loops"].items()]
    parts += [f"{k} {v:.2f}" for k, v in row["ratios"].items()]
    return "  ".join(parts)


def markdown(report):
    m, r = report["machine"], report["results"]
    lines = [
        f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, "
        f"OMP_WAIT_POLICY {m.get('OMP_WAIT_POLICY', '(unset)')}"
        + (f"; GPU {m['gpu']}, CUDA {m['cuda']}" if "gpu" in m else "")
        + f"), Python {m['python']}, torch {m['torch']}, Pyro {m['pyro']}. "
        f"{report['settings']['steps']} timed steps per loop (blocks of {report['settings']['block']}, "
        f"after {report['settings']['warmup']} warm-up steps), interleaved; load average (1 min) "
        f"{report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after.",
        "",
        "| device | net | batch | loop | ms/step (median, IQR) | CPU ms/step | items/s | s/epoch | start-up s | "
        "peak MiB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r:
        for name, v in row["loops"].items():
            q = v["ms_per_step_quartiles"]
            peak = f"{v['peak_mib']:.0f}" if "peak_mib" in v else "-"
            lines.append(
                f"| {row['device']} | {row['arch']} | {row['batch_size']} | ({name}) {v['label']} | "
                f"{v['ms_per_step']:.2f} ({q[0]:.2f}-{q[2]:.2f}) | {v['cpu_ms_per_step']:.2f} | {v['items_per_s']:,.0f} | "
                f"{v['s_per_epoch']:.2f} | {_startup(v)} | {peak} |"
            )
    keys = [f"{n}/{d}" for n, d in RATIOS if any(f"{n}/{d}" in row["ratios"] for row in r)]
    if not keys:
        return "\n".join(lines) + "\n"
    lines += ["", "| device | net | batch | " + " | ".join(keys) + " | " + " | ".join(f"{k} (CPU time)" for k in keys)
              + " |", "|---|---|---:|" + "---:|" * (2 * len(keys))]  # fmt: skip
    for row in r:
        lines.append(f"| {row['device']} | {row['arch']} | {row['batch_size']} | "
                     + " | ".join(_ratio(row["ratios"], k) for k in keys) + " | "
                     + " | ".join(_ratio(row["cpu_ratios"], k) for k in keys) + " |")  # fmt: skip
    notes = []
    compiles = [f"{row['device']} {row['arch']} B={row['batch_size']}: {v['compile_s']:.1f} s"
                for row in r for name, v in row["loops"].items() if "compile_s" in v]  # fmt: skip
    if compiles:
        notes.append("(d) NumPyro's compile time (one jitted call per number of steps, not in its step times): "
                     + "; ".join(compiles) + ".")  # fmt: skip
    if any("startup_s" in v for row in r for v in row["loops"].values()):
        notes.append("start-up s: the warm-up's wall-clock seconds minus its steps at the median rate: (a)'s first "
                     "eager step and loss capture, (ac)'s inductor compile (one batch shape; an epoch has two), "
                     "(d)'s XLA compile of one program (an epoch compiles two).")  # fmt: skip
    if any("e" in row["loops"] for row in r):
        notes.append("(e) pythae trains on **statically** binarized data (binarized once, with a fixed seed): its "
                     "trainer iterates a fixed dataset and cannot binarize per batch. Its VAE also parameterizes "
                     "the log-variance and uses the closed-form KL, averaged over the batch.")  # fmt: skip
    skipped = {f"({name}) {LOOPS[name].label} on {row['device']}: {why}" for row in r
               for name, why in row.get("skipped", {}).items()}  # fmt: skip
    if skipped:
        notes.append("Skipped: " + "; ".join(sorted(skipped)) + ".")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def _startup(loop):
    """Seconds the warm-up took beyond its steps: the loss capture, compiles (for (d) its XLA compile
    of the warm-up's program, which speed.py's step times leave out)."""
    return f"{loop['startup_s']:.1f}" if "startup_s" in loop else "-"


def _ratio(ratios, key):
    return f"{ratios[key]:.2f}" if key in ratios else "-"


def write_report(out, stem, report, table):
    """``out/stem.json`` (the report) and ``out/stem.md`` (its table), and the table on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)


def update_docs(table, section="speed-table"):
    """Replace the text between ``<!-- {section}:start -->`` and ``<!-- {section}:end -->`` in
    ``docs/benchmarks.md`` with ``table`` (appending the markers when they are not there yet)."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    DOCS.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding MNIST/raw (read-only is fine) [default: $PYRO_VAE_DATA]")
    p.add_argument("--dataset", default="mnist", choices=sorted(TRAIN_SIZE), help="digits: a quick smoke run")
    p.add_argument("--archs", default=["relu400", "tanh200x2"], type=lambda s: s.split(","))
    p.add_argument("--batch-sizes", default=[128, 1024], type=lambda s: [int(b) for b in s.split(",")])
    p.add_argument("--loops", default=["a", "b", "c", "d", "e", "a0"], type=lambda s: s.split(","),
                   help="a: pyro-vae, b: hand-written PyTorch, c: Pyro example loop, d: NumPyro (jitted epoch), "
                        "e: pythae (static binarization), a0: pyro-vae before; d and e need the extra [bench] "
                        "and are skipped, with the reason printed, without it; the variants of (a): ac (--compile), "
                        "ah (--precision bf16), ach (both), af (Speed(fast_bernoulli=True)), a1 (one torch thread)")  # fmt: skip
    p.add_argument("--steps", type=int, default=60, help="timed steps per loop and setting")
    p.add_argument("--block", type=int, default=5, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per loop first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    p.add_argument("--c-workers", type=int, default=0, help="DataLoader workers of loop (c)")
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even when there is a GPU")
    p.add_argument("--experimental-cuda-graph", action="store_true",
                   help="on CUDA, run loop (a) with Speed(experimental_cuda_graph=True) (not yet run on a GPU)")
    p.add_argument("--cuda-only", action="store_true", help="skip the CPU (benchmarks/gpu_check.sh)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="peak memory probes")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for speed.json / speed.md")
    p.add_argument("--update-docs", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--probe", choices=sorted(LOOPS), help=argparse.SUPPRESS)
    p.add_argument("--probe-steps", type=int, default=5, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir:
        os.environ["PYRO_VAE_DATA"] = args.data_dir
    if args.probe:
        return probe(args)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "block", "warmup", "archs", "batch_sizes", "loops", "c_workers", "dataset", "experimental_cuda_graph")
        },  # fmt: skip
        "load_before": os.getloadavg(),
    }
    report["results"] = measure(args)
    report["load_after"] = os.getloadavg()
    table = markdown(report)
    write_report(args.out, "speed", report, table)
    if args.update_docs:
        update_docs(table)
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()
