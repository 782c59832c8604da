"""The phases of NumPyro's jitted step, timed piece by piece, for the phase table of ``profile_step.py``.

XLA compiles NumPyro's whole step into one program, so its phases cannot be timed from outside one
step. Instead each piece is jitted on its own, inside a ``jax.lax.fori_loop`` of ``block`` iterations
(as :class:`peers.NumPyroLoop` runs its steps), and the phases are differences of pieces:

- ``data``: gather a minibatch from the device-resident training set and binarize it
  (``jax.random.bernoulli``), as :class:`peers.NumPyroLoop` does inside its loop;
- ``nets``: the encoder, then the decoder on the encoder's mean (forward only, no ELBO);
- ``loss``: ``Trace_ELBO().loss``, the whole forward (nets, draws, log-densities, sums);
- ``grad``: ``jax.value_and_grad`` of that loss (forward and backward);
- ``update``: ``svi.update`` (forward, backward and the Adam step), what NumPyro's loop runs.

forward: the rest = loss - nets, backward = grad - loss, optimizer = update - grad. Each iteration
takes another of ``batches`` precomputed binarized batches and folds the iteration number into the
key, so XLA cannot hoist the work out of the loop; each piece's outputs (gradients included) are
summed into the loop's carry, so nothing is dead code. That sum, and the loop itself, are counted
in every piece; the differences cancel them. These are the same network, batch, data and
estimator as :class:`peers.NumPyroLoop`, whose whole ``fori_loop`` step is timed beside them
(``step``): ``data + update`` should be close to it, since XLA fuses across the pieces' boundaries
in the whole step.
"""

import statistics
import time


class NumPyroPhases:
    """The jitted pieces of :class:`peers.NumPyroLoop`'s step; :meth:`time_round` times each once."""

    def __init__(self, config, train, block=5, batches=8):
        from peers import NumPyroLoop, _stax_nets

        self.loop = NumPyroLoop(config, train=train)
        import jax
        import jax.numpy as jnp
        from numpyro.infer import Trace_ELBO

        loop, self.jax, self.block = self.loop, jax, block
        b, n = config.batch_size, loop.n
        key = jax.random.PRNGKey(1)
        idx = jax.random.permutation(key, n)[: batches * b].reshape(batches, b)
        xs = jax.random.bernoulli(key, loop.train[idx]).astype(jnp.float32)  # (batches, b, 784)
        (_, enc_apply), (_, dec_apply) = _stax_nets(loop.x_dim, config.z_dim, config.hidden, config.activation)
        svi, model, guide = loop.svi, loop.model, loop.guide
        elbo = Trace_ELBO()

        def over(piece):
            """``piece(i, x, key) -> scalar`` run ``block`` times in one fori_loop."""

            def run(state, key):
                def body(i, total):
                    x = jax.lax.dynamic_index_in_dim(xs, i % batches, keepdims=False)
                    return total + piece(state, x, jax.random.fold_in(key, i))

                return jax.lax.fori_loop(0, block, body, jnp.zeros((), jnp.float32))

            return jax.jit(run)

        order = jax.random.permutation(jax.random.PRNGKey(2), n)

        def data(state, x, k):  # as NumPyroLoop: a slice of a permutation, gathered, binarized
            start = jax.random.randint(k, (), 0, n - b)
            batch = loop.train[jax.lax.dynamic_slice(order, (start,), (b,))]
            return jax.random.bernoulli(k, batch).astype(jnp.float32).sum()

        def nets(state, x, k):
            params = svi.get_params(state)
            loc, _ = enc_apply(params["encoder$params"], x)
            return dec_apply(params["decoder$params"], loc).sum()

        def loss(state, x, k):
            return elbo.loss(k, svi.get_params(state), model, guide, x)

        def grad(state, x, k):
            value, grads = jax.value_and_grad(
                lambda p: elbo.loss(k, svi.constrain_fn(p), model, guide, x))(svi.optim.get_params(state.optim_state))  # fmt: skip
            return value + sum(g.sum() for g in jax.tree_util.tree_leaves(grads))

        def update(state, x, k):
            new, value = svi.update(state._replace(rng_key=k), x)
            return value + sum(p.sum() for p in jax.tree_util.tree_leaves(svi.optim.get_params(new.optim_state)))

        self.pieces = {name: over(fn) for name, fn in
                       (("data", data), ("nets", nets), ("loss", loss), ("grad", grad), ("update", update))}  # fmt: skip
        self.key = key
        self.times = {name: [] for name in (*self.pieces, "step")}
        self.cpu = {name: [] for name in (*self.pieces, "step")}
        self.compile_s = 0.0
        t0 = time.perf_counter()
        for fn in self.pieces.values():  # compile (and run once) before timing
            jax.block_until_ready(fn(loop.state, key))
        loop.run(block)
        loop.sync()
        self.compile_s = time.perf_counter() - t0

    def time_round(self):
        """Each piece once (``block`` iterations), and the whole step (``block`` steps of the loop)."""
        jax, state = self.jax, self.loop.state
        for name, fn in self.pieces.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(state, self.key))
            self.times[name].append((time.perf_counter() - t0) / self.block)
            self.cpu[name].append((time.process_time() - c0) / self.block)
        c0, t0 = time.process_time(), time.perf_counter()
        self.loop.run(self.block)
        self.loop.sync()
        self.times["step"].append((time.perf_counter() - t0) / self.block)
        self.cpu["step"].append((time.process_time() - c0) / self.block)

    def phases(self, cpu=True, skip=2):
        """ms per step of each phase (medians of the pieces; CPU time by default)."""
        source = self.cpu if cpu else self.times
        ms = {k: 1e3 * statistics.median(v[skip:] or v) for k, v in source.items()}
        row = {
            "minibatch (gather + binarize)": ms["data"],
            "forward: nets (no autograd)": ms["nets"],
            "forward: the rest (tracing, log_prob, sums, autograd records)": ms["loss"] - ms["nets"],
            "backward": ms["grad"] - ms["loss"],
            "optimizer": ms["update"] - ms["grad"],
        }
        row["total"] = sum(row.values())
        row["whole jitted step (fori_loop, fused across phases)"] = ms["step"]
        return row
