"""Prototype (issue 16 section 2): compile pyro-vae's *whole* step, not the loss alone.

pyro-vae's default step replays the loss captured as a graph (``Speed()``); ``Speed(compile="inductor")``
compiles that loss graph alone. This prototype compiles, with ``torch.compile`` (inductor,
``fallback_random`` so the random draws stay PyTorch's own), one function doing

    batch indexing -> dynamic binarization -> the captured loss graph (Pyro's Trace_ELBO) -> backward

and the fused Adam step (``torch.compile`` of ``optimizer.step``), and runs it beside pyro-vae's current
step in the same process, interleaved. It reuses pyro-vae's own pieces of a :class:`pyro_vae.Trainer`
(its training tensor, order bookkeeping, captured graph and fused optimizer; private attributes,
because this is a prototype of a change to them), so the same seed must give the same losses: the
script checks that first (relative ``--rtol``; inductor may change float rounding).

Usage::

    python benchmarks/whole_step_prototype.py --data-dir ~/data [--arch relu400] [--batch-size 128]
"""

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed
from loops import ROOT, config_for

from pyro_vae import Speed, Trainer

OPTIONS = {"fallback_random": True}


class WholeStep:
    """pyro-vae's step with index + binarize + loss + backward compiled together, and a compiled fused Adam."""

    def __init__(self, trainer, compile_optimizer=True):
        self.tr = trainer
        trainer.run_steps(2)  # the first step (eager, validated) and the capture of the loss graph
        step = trainer.step
        self.opt = step._torch_optim
        captured = step._captured
        bs = trainer.config.batch_size
        (self.graph,) = [g for (shape, _, _), g in captured.graphs.items() if shape[0] == bs]
        train, prepare = trainer.train, trainer.vae.likelihood.prepare_batch

        def loss_and_backward(idx):
            loss = self.graph(prepare(train[idx]))
            loss.backward()
            return loss.detach()

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # backward() in the function: Dynamo compiles the forward with AOTAutograd (its backward is compiled
        # too, as one graph) and breaks the graph at .backward(); compiled autograd is not needed for this
        self.loss_and_backward = torch.compile(loss_and_backward, backend="inductor", options=OPTIONS)
        opt = self.opt

        def opt_step():
            opt.step()

        self.opt_step = torch.compile(opt_step, backend="inductor", options=OPTIONS) if compile_optimizer else opt_step

    def run(self, k):
        tr, bs, losses = self.tr, self.tr.config.batch_size, []
        with tr._own_params():
            for _ in range(k):
                if tr._order is None or tr._position >= len(tr.train):
                    tr._order, tr._position = torch.randperm(len(tr.train), device=tr.device), 0
                idx = tr._order[tr._position : tr._position + bs]
                tr._position += bs
                losses.append(self.loss_and_backward(idx))
                self.opt_step()
                self.opt.zero_grad(set_to_none=True)
        self.last = torch.stack(losses)

    def sync(self):
        if self.tr.device.type == "cuda":
            torch.cuda.synchronize()


class TrainerLoop:
    def __init__(self, trainer):
        self.tr = trainer
        trainer.run_steps(2)

    def run(self, k):
        self.last = self.tr.run_steps(k)

    def sync(self):
        if self.tr.device.type == "cuda":
            torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--arch", default="relu400")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--check-steps", type=int, default=20, help="seeded steps compared for equal losses")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--update-docs", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir:
        os.environ["PYRO_VAE_DATA"] = args.data_dir
    warnings.filterwarnings("ignore")
    config = config_for(args.arch, args.batch_size, args.device, args.dataset, args.data_dir)
    report = {"date": speed.datetime.now(speed.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": speed.machine(),
              "settings": vars(args), "load_before": os.getloadavg()}  # fmt: skip

    # 1. equality: the same seed, pyro-vae's step against the prototype, step by step
    ref = TrainerLoop(Trainer(config))  # its own seeded Trainer: 2 steps (eager, then capture)
    ref.run(args.check_steps)
    proto = WholeStep(Trainer(config))  # the same seed: the same 2 first steps
    t0 = time.perf_counter()
    proto.run(1)
    first = proto.last
    report["compile_s"] = time.perf_counter() - t0
    proto.run(args.check_steps - 1)
    ref_losses, proto_losses = ref.last.double(), torch.cat([first, proto.last]).double()
    rel = ((proto_losses - ref_losses).abs() / ref_losses.abs()).max().item()
    report["equality"] = {"steps": args.check_steps, "max_relative_difference": rel, "rtol": args.rtol,
                          "equal": rel <= args.rtol, "first_losses": [ref_losses[:3].tolist(), proto_losses[:3].tolist()]}  # fmt: skip
    print(f"losses over {args.check_steps} seeded steps: max relative difference {rel:.2e} "
          f"({'equal' if rel <= args.rtol else 'NOT equal'} within {args.rtol:g}); compile {report['compile_s']:.1f} s")  # fmt: skip

    # 2. speed, interleaved: (a) pyro-vae now, (a) with the loss graph compiled, the whole step compiled
    loops = {"(a) pyro-vae, Speed() (default)": ref,
             "(a) Speed(compile='inductor'): the loss graph compiled": TrainerLoop(Trainer(config, speed=Speed(compile="inductor"))),
             "prototype: whole step compiled (index, binarize, loss, backward; compiled fused Adam)": proto}  # fmt: skip
    bs, n = args.batch_size, speed.TRAIN_SIZE[args.dataset]
    for loop in loops.values():  # stay within full batches: the partial last batch would compile another shape
        loop.tr._order, loop.tr._position = None, 0
    times, cpu_times = {k: [] for k in loops}, {k: [] for k in loops}
    names = list(loops)
    for r in range(max(1, args.steps // args.block)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            loop = loops[name]
            if loop.tr._position + args.block * bs > n:
                loop.tr._order, loop.tr._position = None, 0
            c0, t0 = time.process_time(), time.perf_counter()
            loop.run(args.block)
            loop.sync()
            times[name].append((time.perf_counter() - t0) / args.block * 1e3)
            cpu_times[name].append((time.process_time() - c0) / args.block * 1e3)
    report["ms_per_step"] = {k: statistics.median(v) for k, v in times.items()}
    report["cpu_ms_per_step"] = {k: statistics.median(v) for k, v in cpu_times.items()}
    report["load_after"] = os.getloadavg()
    base, base_cpu = report["ms_per_step"][names[0]], report["cpu_ms_per_step"][names[0]]
    lines = [f"{args.arch}, batch {bs}, {args.device}, {torch.get_num_threads()} torch threads, {args.steps} timed "
             f"steps per variant in blocks of {args.block}, interleaved; load average {report['load_before'][0]:.2f} "
             f"before, {report['load_after'][0]:.2f} after. Compile of the prototype: {report['compile_s']:.1f} s. "
             f"Losses over {args.check_steps} seeded steps against (a): max relative difference {rel:.1e}.", "",
             "| variant | wall-clock ms/step | speed-up | CPU ms/step | speed-up |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name in names:
        w, c = report["ms_per_step"][name], report["cpu_ms_per_step"][name]
        lines.append(f"| {name} | {w:.2f} | x{base / w:.2f} | {c:.2f} | x{base_cpu / c:.2f} |")
    table = "\n".join(lines) + "\n"
    speed.write_report(args.out, f"whole-step-{args.arch}-{args.batch_size}-{args.device}", report, table)
    if args.update_docs:
        speed.update_docs(table, f"whole-step:{args.arch}-{args.batch_size}-{args.device}")
    return report


if __name__ == "__main__":
    main()
