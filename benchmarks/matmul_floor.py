"""The nets alone, forward + backward, in PyTorch and in jax (XLA), interleaved: the floor under any VAE step.

784-400-20 ReLU (encoder 784-400-40, decoder 20-400-784), batch 128, float32, the loss a plain sum, so
only the matrix products, bias adds and activations (and their gradients) are timed. A PPL step cannot be
faster than its framework's version of this.

Usage::

    python benchmarks/matmul_floor.py [--batch-size 128] [--threads 2] [--compile]
"""

import argparse
import statistics
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor) the nets' forward+backward")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    b = args.batch_size
    sizes = [(784, 400), (400, 40), (20, 400), (400, 784)]
    torch.manual_seed(0)
    ws = [(torch.randn(i, o) * 0.05).requires_grad_() for i, o in sizes]
    bs = [torch.zeros(o, requires_grad=True) for _, o in sizes]
    x = torch.rand(b, 784)

    def forward(x):
        h = torch.relu(x @ ws[0] + bs[0])
        z = (h @ ws[1] + bs[1])[:, :20]
        h = torch.relu(z @ ws[2] + bs[2])
        return (h @ ws[3] + bs[3]).sum()

    def make_step(fwd):
        def step():
            fwd(x).backward()
            for t in ws + bs:
                t.grad = None

        return step

    fns = {"torch eager": make_step(forward)}
    if args.compile:  # inductor: the forward and (through AOTAutograd) the backward, compiled
        compiled = make_step(torch.compile(forward, backend="inductor"))
        t0 = time.perf_counter()
        compiled()
        print(f"torch.compile: {time.perf_counter() - t0:.1f} s")
        fns["torch.compile (inductor), fwd+bwd"] = compiled
    try:
        import jax
        import jax.numpy as jnp

        params = [(jnp.asarray(w.detach().numpy()), jnp.asarray(bb.detach().numpy())) for w, bb in zip(ws, bs)]
        xj = jnp.asarray(x.numpy())

        def loss(params, x):
            (w0, b0), (w1, b1), (w2, b2), (w3, b3) = params
            h = jax.nn.relu(x @ w0 + b0)
            z = (h @ w1 + b1)[:, :20]
            h = jax.nn.relu(z @ w2 + b2)
            return (h @ w3 + b3).sum()

        g = jax.jit(jax.grad(loss))
        jax.block_until_ready(g(params, xj))
        fns["jax jit (XLA)"] = lambda: jax.block_until_ready(g(params, xj))

        def k_steps(params, x):  # several in one call, as a fori_loop epoch does; each step updates the
            # parameters (plain SGD), so no step is loop-invariant and XLA cannot hoist it out of the loop
            def body(i, p):
                return jax.tree_util.tree_map(lambda a, gg: a - 1e-9 * gg, p, g(p, x))

            return jax.lax.fori_loop(0, args.block, body, params)

        kj = jax.jit(k_steps)
        jax.block_until_ready(kj(params, xj))
        fns["jax jit, fori_loop of the block"] = "block"
    except ImportError as e:
        print(f"jax skipped: {e}")
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            if fn == "block":
                jax.block_until_ready(kj(params, xj))
            else:
                for _ in range(args.block):
                    fn()
            wall[name].append((time.perf_counter() - t0) / args.block * 1e3)
            cpu[name].append((time.process_time() - c0) / args.block * 1e3)
    for name in fns:
        print(f"{name:34s} {statistics.median(wall[name]):7.3f} ms wall  {statistics.median(cpu[name]):7.3f} ms CPU per step")


if __name__ == "__main__":
    main()
