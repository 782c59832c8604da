"""Time to quality: train until the test ELBO first reaches a target, for pyro-vae (a) and hand-written PyTorch (b).

Both train the same VAE (``--arch``, ``--batch-size``, Adam ``--lr``) on MNIST, dynamically binarized,
and after every epoch compute the test ELBO exactly as ``pyro-vae fit`` records it in
``metrics.jsonl``: one draw of :math:`z` per test image, on the test set binarized once with a fixed
seed (the same tensor for both loops). Epochs of (a) and (b) alternate, so both see the same machine
load. Reported per loop: the epoch at which the test ELBO first reached ``--target`` (nats per image),
the wall time up to then (training alone, and training plus the per-epoch test evaluations), and the
test ELBO curve.

Usage::

    python benchmarks/time_to_quality.py --data-dir /tmp/data --target -100 --max-minutes 15 [--update-docs]
"""

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed
from loops import ROOT, PyroVAELoop, TorchVAELoop, config_for
from speed import machine


def run(args):
    config = config_for(args.arch, args.batch_size, args.device, args.dataset, args.data_dir, args.seed, args.lr)
    a = PyroVAELoop(config).trainer
    b = TorchVAELoop(config, train=a.train, seed=args.seed)
    test = a.test  # the fixed test binarization pyro-vae records its test ELBO on
    loops = {
        "a": {"label": "pyro-vae", "curve": [], "train_s": 0.0, "eval_s": 0.0, "reached": None},
        "b": {"label": "hand-written PyTorch", "curve": [], "train_s": 0.0, "eval_s": 0.0, "reached": None},
    }
    start = time.perf_counter()
    for epoch in range(1, args.max_epochs + 1):
        for name, state in loops.items():
            if state["reached"] is not None:
                continue
            t0 = time.perf_counter()
            if name == "a":
                train_elbo = a.train_epoch()["train_elbo"]
            else:
                train_elbo = b.epoch()
            t1 = time.perf_counter()
            test_elbo = a.test_elbo() if name == "a" else b.vae.test_elbo(test)
            t2 = time.perf_counter()
            state["train_s"] += t1 - t0
            state["eval_s"] += t2 - t1
            state["curve"].append({"epoch": epoch, "train_elbo": train_elbo, "test_elbo": test_elbo,
                                   "train_s": state["train_s"], "eval_s": state["eval_s"]})  # fmt: skip
            print(f"({name}) epoch {epoch:3d}  train {train_elbo:9.3f}  test {test_elbo:9.3f}  "
                  f"{state['train_s']:8.1f} s training", flush=True)  # fmt: skip
            if test_elbo >= args.target:
                state["reached"] = epoch
        if all(s["reached"] is not None for s in loops.values()):
            break
        if (time.perf_counter() - start) / 60 > args.max_minutes:
            print(f"stopped after {args.max_minutes} minutes")
            break
    return loops


def markdown(report):
    s, lines = report["settings"], []
    lines.append(
        f"Target test ELBO {s['target']} nats per image; {s['arch']}, batch {s['batch_size']}, Adam {s['lr']}, "
        f"{s['device']}, measured {report['date']} ({report['machine']['cpu']}, {report['machine']['torch_threads']} "
        f"torch threads, OMP_WAIT_POLICY {report['machine'].get('OMP_WAIT_POLICY', '(unset)')}; load average {report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after)."
    )
    lines += ["", "| loop | reached at epoch | training s | training + test-ELBO s | training s/epoch | best test ELBO | "
              + " | ".join(f"first >= {m:g}: epoch, training s" for m in s["milestones"]) + " |",
              "|---|---:|---:|---:|---:|---:|" + "---:|" * len(s["milestones"])]  # fmt: skip
    for name, st in report["loops"].items():
        best = max(c["test_elbo"] for c in st["curve"]) if st["curve"] else float("nan")
        last = st["curve"][-1] if st["curve"] else {"train_s": 0.0, "eval_s": 0.0, "epoch": 0}
        reached = st["reached"] if st["reached"] is not None else f"not in {last['epoch']} epochs"
        firsts = []
        for m in s["milestones"]:
            hit = next((c for c in st["curve"] if c["test_elbo"] >= m), None)
            firsts.append(f"{hit['epoch']}, {hit['train_s']:.1f}" if hit else "-")
        per_epoch = last["train_s"] / max(last["epoch"], 1)
        lines.append(f"| ({name}) {st['label']} | {reached} | {last['train_s']:.1f} | "
                     f"{last['train_s'] + last['eval_s']:.1f} | {per_epoch:.2f} | {best:.2f} | "
                     + " | ".join(firsts) + " |")  # fmt: skip
    a, b = report["loops"]["a"], report["loops"]["b"]
    if a["curve"] and b["curve"]:
        n = min(len(a["curve"]), len(b["curve"]))
        per_epoch = a["curve"][n - 1]["train_s"] / b["curve"][n - 1]["train_s"]
        lines += ["", f"Training time a/b over the first {n} epochs (the same work): {per_epoch:.2f}."]
    if a["reached"] and b["reached"]:
        ratio = a["curve"][-1]["train_s"] / b["curve"][-1]["train_s"]
        lines[-1] += f" Wall-time a/b to the target (training only; the epochs needed differ by chance): {ratio:.2f}."
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--target", type=float, default=-100.0, help="test ELBO to reach, nats per image")
    p.add_argument("--milestones", default=[-120.0, -110.0, -105.0], type=lambda v: [float(m) for m in v.split(",")],
                   help="also report when the test ELBO first reached these")  # fmt: skip
    p.add_argument("--arch", default="relu400")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=15.0, help="stop (and report) after this much wall time")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--update-docs", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir:
        os.environ["PYRO_VAE_DATA"] = args.data_dir
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "target",
                "milestones",
                "arch",
                "batch_size",
                "lr",
                "seed",
                "device",
                "dataset",
                "max_epochs",
                "max_minutes",
            )
        },  # fmt: skip
        "load_before": os.getloadavg(),
    }
    report["loops"] = run(args)
    report["load_after"] = os.getloadavg()
    table = markdown(report)
    speed.write_report(args.out, f"time-to-quality-{args.arch}-{args.batch_size}-{args.device}", report, table)
    if args.update_docs:
        speed.update_docs(table, "quality-table")
        print(f"updated {speed.DOCS}")


if __name__ == "__main__":
    main()
