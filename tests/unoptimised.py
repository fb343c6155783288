"""Compiling without XLA's optimisation passes, for tests that check results, not speed: a
network's initialiser compiles in 2 s rather than 9 s on 2 CPU cores (a forward pass gains less),
and the numbers agree within float rounding."""

import jax


def unoptimised(fn, *args):
    """fn(*args), jit-compiled with xla_backend_optimization_level 0."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)
