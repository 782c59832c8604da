"""The Python stages of ``benchmarks/gpu_check.sh`` and its report (see that script).

Subcommands (each writes ``RESULTS/<stage>.json``):

- ``engine``: ms per SVI step of the eager loss (Pyro's tracing every step), the captured loss and
  (CUDA) the CUDA-graph step, on the same trainer settings, each from the same seed; and the largest
  relative difference of their first losses from the eager ones (they take the same steps).
- ``precision``: fp32 against bf16 (autocast networks, :func:`pyro_vae.train.distributed.autocast_networks`):
  a few epochs each from the same seed, test ELBO and seconds per epoch.
- ``report``: the markdown section from every stage's results, written into a copy of
  ``docs/benchmarks.md`` (between ``<!-- gpu-check:start -->`` and ``<!-- gpu-check:end -->``).
"""

import argparse
import json
import re
import time
from pathlib import Path

import torch

import pyro

from pyro_vae.speed import Speed
from pyro_vae.train.build import make_config
from pyro_vae.train.distributed import autocast_networks
from pyro_vae.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def config(args, **changes):
    settings = dict(dataset=args.dataset, hidden=(400,), z_dim=20, batch_size=args.batch_size, device=args.device,
                    seed=0, **({"data_dir": args.data_dir} if args.data_dir else {}))  # fmt: skip
    return make_config(None, **{**settings, **changes})


def engine(args):
    speeds = {"eager": Speed(capture=False), "captured": Speed()}
    if torch.device(args.device).type == "cuda":
        speeds["cuda-graph"] = Speed(experimental_cuda_graph=True)
    results = {}
    for name, speed in speeds.items():
        pyro.clear_param_store()
        trainer = Trainer(config(args), speed=speed)
        first = trainer.run_steps(args.compare_steps).cpu()  # from the same seed: the same steps
        trainer.run_steps(args.warmup)
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.run_steps(args.steps)
        sync(trainer.device)
        results[name] = {"ms_per_step": 1000 * (time.perf_counter() - t0) / args.steps, "first_losses": first.tolist()}
    eager = torch.tensor(results["eager"]["first_losses"])
    for r in results.values():
        r["max_rel_diff_vs_eager"] = ((torch.tensor(r["first_losses"]) - eager).abs() / eager.abs()).max().item()
    return {"steps": args.steps, "batch_size": args.batch_size, "dataset": args.dataset, "results": results}


def precision(args):
    results = {}
    for name in ("fp32", "bf16"):
        pyro.clear_param_store()
        trainer = Trainer(config(args))
        if name == "bf16":
            autocast_networks(trainer.vae, trainer.device.type)
        seconds = 0.0
        for _ in range(args.epochs):
            seconds += trainer.train_epoch()["seconds"]
        results[name] = {"test_elbo": trainer.test_elbo(), "seconds_per_epoch": seconds / args.epochs}
    results["elbo_difference"] = results["bf16"]["test_elbo"] - results["fp32"]["test_elbo"]
    return {"epochs": args.epochs, "batch_size": args.batch_size, "dataset": args.dataset, "results": results}


def _load(results, stem):
    path = Path(results) / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(args):
    results = Path(args.results)
    env = _load(results, "environment") or {}
    stages = [line.split("\t") for line in (results / "stages.tsv").read_text().splitlines() if line.strip()]
    lines = [START, "", f"## GPU check ({'dry run on the CPU: tiny budgets, the numbers mean nothing' if args.dry_run else 'benchmarks/gpu_check.sh'})", "",
             f"{env.get('date', '?')}; device **{env.get('device', '?')}**, torch {env.get('torch', '?')}, "
             f"pyro {env.get('pyro', '?')}, Python {env.get('python', '?')}. Written by `bash benchmarks/gpu_check.sh"
             f"{' --dry-run' if args.dry_run else ''}`.", "",
             "| stage | exit code | seconds |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {rc}{' (timed out)' if rc in ('124', '137') else ''} | {secs} |" for name, rc, secs in stages]
    tests = results / "tests.log"
    if tests.exists():
        summary = [line for line in tests.read_text().splitlines() if re.search(r"\d+ (passed|failed)", line)]
        lines += ["", f"Test suite: `{summary[-1].strip('= ') if summary else 'no summary (see tests.log)'}`."]
    speed_md = results / "speed.md"
    if speed_md.exists():
        lines += ["", "### benchmarks/speed.py", "", speed_md.read_text().strip()]
    eng = _load(results, "engine")
    if eng:
        lines += ["", f"### Captured loss and CUDA-graph step against eager ({eng['dataset']}, batch {eng['batch_size']}, "
                      f"{eng['steps']} timed steps)", "", "| step | ms/step | speed-up over eager | max rel. diff. of the first losses |",
                  "|---|---|---|---|"]  # fmt: skip
        base = eng["results"]["eager"]["ms_per_step"]
        for name, r in eng["results"].items():
            lines.append(f"| {name} | {r['ms_per_step']:.3f} | {base / r['ms_per_step']:.2f}x | {r['max_rel_diff_vs_eager']:.1e} |")
    ttq = sorted(results.glob("time-to-quality-*.md"))
    if ttq:
        lines += ["", "### Time to quality", "", ttq[0].read_text().strip()]
    prec = _load(results, "precision")
    if prec:
        lines += ["", f"### bf16 against fp32 ({prec['dataset']}, batch {prec['batch_size']}, {prec['epochs']} epochs, "
                      "same seed)", "", "| precision | test ELBO | s/epoch |", "|---|---|---|"]  # fmt: skip
        for name in ("fp32", "bf16"):
            r = prec["results"][name]
            lines.append(f"| {name} | {r['test_elbo']:.3f} | {r['seconds_per_epoch']:.3f} |")
        lines += ["", f"bf16 − fp32 test ELBO: {prec['results']['elbo_difference']:+.3f} nats."]
    cli = results / "cli.log"
    if cli.exists():
        lines += ["", "### pyro-vae fit through the CLI", "", "```", *cli.read_text().strip().splitlines()[-12:], "```"]
    lines += ["", END]
    section = "\n".join(lines) + "\n"
    docs = Path(args.docs)
    text = docs.read_text() if docs.exists() else (ROOT / "docs" / "benchmarks.md").read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + section.rstrip("\n") + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    docs.write_text(text)
    (results / "gpu_check.md").write_text(section)
    print(section)


def environment(args):
    import platform
    from datetime import UTC, datetime

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": device, "torch": torch.__version__,
            "pyro": pyro.__version__, "python": platform.python_version()}  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["environment", "engine", "precision", "report"])
    p.add_argument("--results", required=True, help="folder of the stages' results")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="engine: timed steps per variant")
    p.add_argument("--warmup", type=int, default=20, help="engine: untimed steps after the compared ones")
    p.add_argument("--compare-steps", type=int, default=5, help="engine: first steps compared with eager")
    p.add_argument("--epochs", type=int, default=3, help="precision: epochs per precision")
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="report: the file whose section is replaced")
    p.add_argument("--dry-run", action="store_true", help="report: say that the numbers come from a dry run")
    args = p.parse_args(argv)
    if args.stage == "report":
        return report(args)
    result = {"environment": environment, "engine": engine, "precision": precision}[args.stage](args)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / f"{args.stage}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
