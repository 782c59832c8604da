"""``--precision bf16`` against fp32 on the CPU: seconds per epoch and test ELBO after the same budget.

For each architecture, batch size and seed, an fp32 :class:`pyro_vae.Trainer` and a bf16
:class:`pyro_vae.train.distributed.DistributedTrainer` (the networks under ``torch.autocast("cpu",
torch.bfloat16)``, the ELBO, gradients and Adam state in float32) start from the same seed and train
``--epochs`` epochs on MNIST, their epochs alternating so both see the same machine load. After each
epoch both record the test ELBO as ``pyro-vae fit`` does (one draw of z per test image, the same
fixed test binarization; the bf16 run evaluates with its networks in bf16, as its run folder would).

Reported per setting: the median seconds per epoch after the first (the first includes the loss
capture), the ratio fp32/bf16, the final test ELBOs, their difference bf16 - fp32 for each seed,
and the seed spread (the fp32 runs' range over the seeds): a difference inside the spread is not
a loss of quality this budget can see.

Usage::

    python benchmarks/bf16_cpu.py --data-dir ~/data --epochs 3 --seeds 0,1
"""

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed
from loops import ROOT, config_for
from speed import machine

from pyro_vae import Speed, Trainer
from pyro_vae.train.distributed import DistributedTrainer


def run_setting(arch, batch_size, seed, args):
    config = config_for(arch, batch_size, "cpu", args.dataset, args.data_dir, seed)
    trainers = {"fp32": Trainer(config, speed=Speed()),
                "bf16": DistributedTrainer(config, Speed(), precision="bf16")}  # fmt: skip
    out = {name: {"epoch_s": [], "test_elbo": []} for name in trainers}
    for epoch in range(args.epochs):
        names = list(trainers) if epoch % 2 == 0 else list(trainers)[::-1]
        for name in names:
            t0 = time.perf_counter()
            trainers[name].train_epoch()
            out[name]["epoch_s"].append(time.perf_counter() - t0)
            out[name]["test_elbo"].append(trainers[name].test_elbo())
    for name, r in out.items():
        r["s_per_epoch"] = statistics.median(r["epoch_s"][1:] or r["epoch_s"])
        print(f"{arch} B={batch_size} seed {seed} {name}: {r['s_per_epoch']:.2f} s/epoch, "
              f"test ELBO {r['test_elbo'][-1]:.3f}", flush=True)  # fmt: skip
    return out


def markdown(report):
    m, s = report["machine"], report["settings"]
    lines = [
        f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), torch "
        f"{m['torch']}; {s['dataset']}, {s['epochs']} epochs per run, seeds {', '.join(map(str, s['seeds']))}, "
        f"epochs of the two precisions alternating; load average {report['load_before'][0]:.2f} before, "
        f"{report['load_after'][0]:.2f} after.",
        "",
        "| net | batch | fp32 s/epoch | bf16 s/epoch | fp32/bf16 | fp32 test ELBO | bf16 test ELBO | bf16 - fp32 (per seed) "
        "| seed spread (fp32) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["results"]:
        runs = row["runs"]
        fp = [r["fp32"]["s_per_epoch"] for r in runs.values()]
        bf = [r["bf16"]["s_per_epoch"] for r in runs.values()]
        ef = [r["fp32"]["test_elbo"][-1] for r in runs.values()]
        eb = [r["bf16"]["test_elbo"][-1] for r in runs.values()]
        diffs = ", ".join(f"{b - f:+.2f}" for f, b in zip(ef, eb))
        spread = max(ef) - min(ef) if len(ef) > 1 else float("nan")
        lines.append(f"| {row['arch']} | {row['batch_size']} | {statistics.mean(fp):.2f} | {statistics.mean(bf):.2f} | "
                     f"{statistics.mean(fp) / statistics.mean(bf):.2f} | {statistics.mean(ef):.2f} | "
                     f"{statistics.mean(eb):.2f} | {diffs} | {spread:.2f} |")  # fmt: skip
    lines += ["", "s/epoch: the median over the epochs after the first (which includes the loss capture), averaged over "
              "the seeds. Test ELBO: after the last epoch, averaged over the seeds; the bf16 run evaluates with its "
              "networks in bf16."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--archs", default=["relu400", "tanh200x2"], type=lambda v: v.split(","))
    p.add_argument("--batch-sizes", default=[128, 1024], type=lambda v: [int(b) for b in v.split(",")])
    p.add_argument("--seeds", default=[0, 1], type=lambda v: [int(b) for b in v.split(",")])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--stem", default="bf16-cpu")
    p.add_argument("--update-docs", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir:
        os.environ["PYRO_VAE_DATA"] = args.data_dir
    report = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "settings": {k: getattr(args, k) for k in ("archs", "batch_sizes", "seeds", "epochs", "dataset")},
              "load_before": os.getloadavg(), "results": []}  # fmt: skip
    for arch in args.archs:
        for batch_size in args.batch_sizes:
            runs = {str(seed): run_setting(arch, batch_size, seed, args) for seed in args.seeds}
            report["results"].append({"arch": arch, "batch_size": batch_size, "runs": runs})
    report["load_after"] = os.getloadavg()
    table = markdown(report)
    speed.write_report(args.out, args.stem, report, table)
    if args.update_docs:
        speed.update_docs(table, "bf16-cpu-table")


if __name__ == "__main__":
    main()
