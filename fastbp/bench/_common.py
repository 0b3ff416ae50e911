"""Pieces the bench commands share: the default thread count, a timed epoch, JAX's SGD step."""
import os
import time


def usable_cores():
    """The cores this process may run on: the default ``--threads``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def timed(epoch, X, y):
    """Wall-clock seconds of one ``epoch(X, y)``."""
    start = time.perf_counter()
    epoch(X, y)
    return time.perf_counter() - start


def jax_sgd_step(loss, lr):
    """``step(params, x, t)``, jitted: every parameter ``p - lr * d loss(params, x, t) / d p``."""
    import jax

    @jax.jit
    def step(params, x, t):
        grads = jax.grad(loss)(params, x, t)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)

    return step
