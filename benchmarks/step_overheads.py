"""Issue 24: the two candidates not built, bounded by measurement.

1. **uint8 data.** The minibatch of a step (gather ``batch`` rows of MNIST by index, then draw the dynamic
   binarization) with the training tensor kept as float32 (what pyro-vae does) against uint8 (k/255 formed
   after the gather). The gain of keeping uint8 cannot exceed the difference of these two.
2. **Several optimizer steps per compiled call.** What one call of a ``torch.compile``-d function costs beyond
   its kernels (Dynamo's guards and the dispatch into the compiled code): a compiled function of one tiny
   operation, timed per call, against the same operation run eagerly. Running k steps per compiled call saves
   at most (k - 1) / k of this per step.

Both are medians of interleaved blocks, wall-clock, on the CPU with the threads given.

Usage::

    python benchmarks/step_overheads.py [--threads 2] [--batch-size 128] [--out benchmarks/results]
"""

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import torch


def per_call(fn, calls, blocks):
    """Median over ``blocks`` of the mean wall-clock milliseconds of ``calls`` calls of ``fn``."""
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--items", type=int, default=60000)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (args.items, 784), generator=gen, dtype=torch.uint8)
    as_float = levels.float() / 255
    index = torch.randint(0, args.items, (args.batch_size,), generator=gen)

    def minibatch_float():
        return torch.bernoulli(as_float[index], generator=gen)

    def minibatch_uint8():
        return torch.bernoulli(levels[index].float().div_(255), generator=gen)

    x = torch.zeros(8)

    def tiny(t):
        return t + 1

    compiled = torch.compile(tiny)
    compiled(x)  # compile once, outside the timing
    assert torch.equal(compiled(x), tiny(x))

    gen.manual_seed(1)  # the same draws from the same levels, whichever storage
    a = minibatch_float()
    gen.manual_seed(1)
    b = minibatch_uint8()
    if not torch.equal(a, b):
        raise AssertionError("the uint8 minibatch differs from the float32 one: the comparison would not be fair")
    rows = {}
    for _ in range(2):  # interleaved: the second round's numbers are kept
        rows = {
            "minibatch, float32 data (ms)": per_call(minibatch_float, args.calls, args.blocks),
            "minibatch, uint8 data (ms)": per_call(minibatch_uint8, args.calls, args.blocks),
            "tiny op, eager (ms)": per_call(lambda: tiny(x), args.calls * 10, args.blocks),
            "tiny op, compiled call (ms)": per_call(lambda: compiled(x), args.calls * 10, args.blocks),
        }
    rows["uint8 saves per step (ms)"] = rows["minibatch, float32 data (ms)"] - rows["minibatch, uint8 data (ms)"]
    rows["compiled call overhead per call (ms)"] = rows["tiny op, compiled call (ms)"] - rows["tiny op, eager (ms)"]
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    record = {"batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__,
              "load_average": load, "ms": rows}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step-overheads.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"batch {args.batch_size}, {args.threads} torch threads, torch {torch.__version__}, load {load}", "",
             "| measurement | ms |", "|---|---:|"] + [f"| {k.replace(' (ms)', '')} | {v:.4f} |" for k, v in rows.items()]  # fmt: skip
    (out / "step-overheads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
