"""Time to quality: wall seconds until the test ELBO first reaches each target, for pyro-vae (a),
hand-written PyTorch (b) and NumPyro (d).

All train the same VAE (``--arch``, ``--batch-size``, Adam ``--lr``) on MNIST, dynamically binarized,
and after every epoch compute the test ELBO exactly as ``pyro-vae fit`` records it in
``metrics.jsonl``: one draw of :math:`z` per test image, on the test set binarized once with a fixed
seed (the same tensor for every loop). Epochs of the loops alternate, so all see the same machine
load. Reported per loop and target (``--targets``, default -100 and -95 nats per image): the epoch at
which the test ELBO first reached it and the training wall time up to then, compile time included
((a) captures its loss graph in its first epoch, (d) compiles its jitted epoch in its first); or
"not reached within N epochs" when the budget (``--max-epochs``, ``--max-minutes``) ran out first.
Also the wall time with the per-epoch test evaluations, and the test ELBO curve. (d) needs the
extra ``bench`` (``pip install -e .[bench]``) and is skipped, with the reason, without it.

Usage::

    python benchmarks/time_to_quality.py --data-dir ~/data --targets -100,-95 --max-epochs 60 [--update-docs]
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
from loops import LOOPS, ROOT, NumPyroLoop, PyroVAELoop, TorchVAELoop, Unavailable, config_for
from speed import machine

LABELS = {"a": "pyro-vae", "b": "hand-written PyTorch", "d": "NumPyro (jit, fori_loop)"}
#: pyro-vae's variants (issue 24): their trainers' own train_epoch and test_elbo (the same test binarization)
VARIANTS = ("ac", "ah", "ach", "af")
LABELS.update({name: LOOPS[name].label for name in VARIANTS})


def run(args):
    config = config_for(args.arch, args.batch_size, args.device, args.dataset, args.data_dir, args.seed, args.lr)
    a = PyroVAELoop(config).trainer
    test = a.test  # the fixed test binarization pyro-vae records its test ELBO on
    built, skipped = {"a": a}, {}
    if "b" in args.loops:
        built["b"] = TorchVAELoop(config, train=a.train, seed=args.seed)
    if "d" in args.loops:
        try:
            built["d"] = NumPyroLoop(config, train=a.train.tensor().flatten(1).cpu(), seed=args.seed)
        except Unavailable as e:
            skipped["d"] = str(e)
            print(f"skipping (d) {LABELS['d']}: {e}", flush=True)
    epoch_fn = {"a": lambda: a.train_epoch()["train_elbo"]}
    test_fn = {"a": a.test_elbo}
    for name in VARIANTS:
        if name in args.loops:
            trainer = LOOPS[name](config).trainer
            built[name] = trainer
            epoch_fn[name] = lambda trainer=trainer: trainer.train_epoch()["train_elbo"]
            test_fn[name] = trainer.test_elbo
    if "b" in built:
        epoch_fn["b"], test_fn["b"] = built["b"].epoch, lambda: built["b"].vae.test_elbo(test)
    if "d" in built:
        epoch_fn["d"], test_fn["d"] = built["d"].epoch, lambda: built["d"].test_elbo(test)
    loops = {name: {"label": LABELS[name], "curve": [], "train_s": 0.0, "eval_s": 0.0,
                    "reached": {str(t): None for t in args.targets}} for name in built}  # fmt: skip
    top = max(args.targets)
    start = time.perf_counter()
    for epoch in range(1, args.max_epochs + 1):
        for name, state in loops.items():
            if state["reached"][str(top)] is not None:
                continue
            t0 = time.perf_counter()
            train_elbo = epoch_fn[name]()  # includes the capture (a) and the compile (d) in the first epochs
            t1 = time.perf_counter()
            test_elbo = test_fn[name]()
            t2 = time.perf_counter()
            state["train_s"] += t1 - t0
            state["eval_s"] += t2 - t1
            state["curve"].append({"epoch": epoch, "train_elbo": train_elbo, "test_elbo": test_elbo,
                                   "train_s": state["train_s"], "eval_s": state["eval_s"]})  # fmt: skip
            print(f"({name}) epoch {epoch:3d}  train {train_elbo:9.3f}  test {test_elbo:9.3f}  "
                  f"{state['train_s']:8.1f} s training", flush=True)  # fmt: skip
            for t in args.targets:
                if test_elbo >= t and state["reached"][str(t)] is None:
                    state["reached"][str(t)] = epoch
        if all(s["reached"][str(top)] is not None for s in loops.values()):
            break
        if (time.perf_counter() - start) / 60 > args.max_minutes:
            print(f"stopped after {args.max_minutes} minutes (epoch {epoch})")
            break
    if "d" in built:
        loops["d"]["compile_s"] = built["d"].compile_s
    return loops, skipped


def markdown(report):
    s, lines, m = report["settings"], [], report["machine"]
    targets = s["targets"]
    lines.append(
        f"Targets: test ELBO {', '.join(f'{t:g}' for t in targets)} nats per image; {s['arch']}, batch {s['batch_size']}, "
        f"Adam {s['lr']}, {s['device']}, at most {s['max_epochs']} epochs and {s['max_minutes']:g} minutes; measured "
        f"{report['date']} ({m['cpu']}, {m['torch_threads']} torch threads, OMP_WAIT_POLICY "
        f"{m.get('OMP_WAIT_POLICY', '(unset)')}; load average {report['load_before'][0]:.2f} before, "
        f"{report['load_after'][0]:.2f} after). Training seconds are wall-clock and include compiling "
        "((a)'s loss capture, (d)'s XLA compile) but not the per-epoch test ELBO."
    )
    lines += ["", "| loop | " + " | ".join(f"to >= {t:g}: epoch, training s" for t in targets)
              + " | epochs run | training s | training + test-ELBO s | training s/epoch | best test ELBO | "
              + " | ".join(f"first >= {m:g}: epoch, training s" for m in s["milestones"]) + " |",
              "|---|" + "---:|" * (len(targets) + 5 + len(s["milestones"]))]  # fmt: skip
    for name, st in report["loops"].items():
        best = max(c["test_elbo"] for c in st["curve"]) if st["curve"] else float("nan")
        last = st["curve"][-1] if st["curve"] else {"train_s": 0.0, "eval_s": 0.0, "epoch": 0}
        reached = []
        for t in targets:
            e = st["reached"][str(t)]
            reached.append(f"{e}, {st['curve'][e - 1]['train_s']:.1f}" if e else f"not reached within {last['epoch']} epochs")
        firsts = []
        for mark in s["milestones"]:
            hit = next((c for c in st["curve"] if c["test_elbo"] >= mark), None)
            firsts.append(f"{hit['epoch']}, {hit['train_s']:.1f}" if hit else "-")
        per_epoch = last["train_s"] / max(last["epoch"], 1)
        lines.append(f"| ({name}) {st['label']} | " + " | ".join(reached) + f" | {last['epoch']} | {last['train_s']:.1f} | "
                     f"{last['train_s'] + last['eval_s']:.1f} | {per_epoch:.2f} | {best:.2f} | "
                     + " | ".join(firsts) + " |")  # fmt: skip
    loops = report["loops"]
    notes = []
    if "d" in loops and "compile_s" in loops["d"]:
        notes.append(f"(d)'s XLA compile took {loops['d']['compile_s']:.1f} s of its first epoch.")
    a = loops["a"]
    for name in ("b", "d", *VARIANTS):
        if name in loops and a["curve"] and loops[name]["curve"]:
            n = min(len(a["curve"]), len(loops[name]["curve"]))
            ratio = loops[name]["curve"][n - 1]["train_s"] / a["curve"][n - 1]["train_s"]
            notes.append(f"Training time {name}/a over the first {n} epochs (the same work): {ratio:.2f}.")
    for name, why in report.get("skipped", {}).items():
        notes.append(f"({name}) {LABELS[name]} skipped: {why}.")
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines) + "\n"


def _floats(v):
    return [float(x) for x in v.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--targets", "--target", default=[-100.0, -95.0], type=_floats,
                   help="test ELBOs to reach, nats per image (a loop stops at the highest) [-100,-95]")  # fmt: skip
    p.add_argument("--loops", default=["a", "b", "d"], type=lambda v: v.split(","),
                   help="a: pyro-vae (always), b: hand-written PyTorch, d: NumPyro (extra [bench]; skipped without "
                        "it); pyro-vae's variants ac (--compile), ah (--precision bf16), ach (both), af (fast_bernoulli)")  # fmt: skip
    p.add_argument("--milestones", default=[-120.0, -110.0, -105.0], type=_floats,
                   help="also report when the test ELBO first reached these")  # fmt: skip
    p.add_argument("--arch", default="relu400")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-epochs", type=int, default=200, help="budget cap: epochs per loop")
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
                "targets",
                "loops",
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
    report["loops"], report["skipped"] = run(args)
    report["load_after"] = os.getloadavg()
    table = markdown(report)
    speed.write_report(args.out, f"time-to-quality-{args.arch}-{args.batch_size}-{args.device}", report, table)
    if args.update_docs:
        speed.update_docs(table, "quality-table")
        print(f"updated {speed.DOCS}")


if __name__ == "__main__":
    main()
