"""The objectives' batch-level means and totals, exact under gradient accumulation.

Every batch-level mean of an objective is a ratio total / count: NLL over valid tokens (`common.per_token`), a loss
over valid or masked frames or over valid examples (`common.masked_mean`). The mean of M microbatch ratios is not the
whole batch's ratio when the microbatches hold different counts, so objectives reduce through `batch_mean` (and count
through `batch_total`), and the trainer (`trainer.make_grad_fn`, M > 1) calls the objective on each microbatch inside
one of two scopes:

    counting()                  forward only; records each batch_mean's count, in call order. Only the counts are
                                kept, so XLA drops the model from this pass: it costs the length arithmetic and masks.
    accumulating(counts, M)     counts[k] is the k-th batch_mean's count summed over the whole batch; batch_mean
                                returns M * total / counts[k] and batch_total returns M * total.

Each microbatch value is then M times its share of the whole batch's value, so the trainer's mean over microbatches
of every loss, gradient and metric that is linear in these reductions equals the whole-batch one (to float error).
Outside both scopes (one microbatch, evaluation, tests) batch_mean is total / max(count, 1) and batch_total the sum.

Counts are normalisers, never differentiated. Call these at the objective's own trace level (not inside a lax.scan or
vmap body within the objective), and keep the sequence of calls a function of shapes and settings only: the counting
and the accumulating traces must make the same calls in the same order.
"""

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class _Scope:
    """One objective call under the trainer's accumulation: counting (global_counts None) or accumulating."""

    num_microbatches: int
    global_counts: Sequence[jax.Array] | None
    recorded: list[jax.Array] = dataclasses.field(default_factory=list)
    used: int = 0


# Trace-time only (like flax's logical axis rules): the trainer enters a scope around one objective call.
_SCOPES: list[_Scope] = []


@contextlib.contextmanager
def _entered(scope: _Scope) -> Iterator[_Scope]:
    _SCOPES.append(scope)
    try:
        yield scope
    finally:
        _SCOPES.remove(scope)


@contextlib.contextmanager
def counting() -> Iterator[list[jax.Array]]:
    """Yields the list that receives the f32[] count of every batch_mean made inside, in call order."""
    with _entered(_Scope(num_microbatches=1, global_counts=None)) as scope:
        yield scope.recorded


@contextlib.contextmanager
def accumulating(global_counts: Sequence[jax.Array], num_microbatches: int) -> Iterator[None]:
    """batch_mean k divides by global_counts[k] (f32[], whole batch) and scales by num_microbatches; batch_total
    scales by num_microbatches. Raises if the calls inside do not use every count exactly once."""
    with _entered(_Scope(num_microbatches=num_microbatches, global_counts=tuple(global_counts))) as scope:
        yield
    if scope.used != len(scope.global_counts):
        raise RuntimeError(
            f"the objective made {scope.used} batch-level means while computing a microbatch's loss but "
            f"{len(scope.global_counts)} while counting; its reductions (objectives.reductions.batch_mean) must not "
            "depend on traced values. Set train.num_microbatches = 1 to train without accumulation."
        )


def batch_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / max(count, 1) in fp32 for f32[] total and count, with count summed over the whole batch under the
    trainer's accumulation (see the module docstring); the count gets no gradient."""
    total = jnp.asarray(total, jnp.float32)
    count = jax.lax.stop_gradient(jnp.asarray(count, jnp.float32))
    if total.shape or count.shape:
        raise ValueError(f"batch_mean takes scalar totals and counts; got shapes {total.shape} and {count.shape}.")
    scope = _SCOPES[-1] if _SCOPES else None
    if scope is None or scope.global_counts is None:
        if scope is not None:
            scope.recorded.append(count)
        return total / jnp.maximum(count, 1.0)
    if scope.used >= len(scope.global_counts):
        raise RuntimeError(
            f"the objective made more batch-level means while computing a microbatch's loss than the "
            f"{len(scope.global_counts)} it made while counting; its reductions must not depend on traced values. "
            "Set train.num_microbatches = 1 to train without accumulation."
        )
    global_count = scope.global_counts[scope.used]
    scope.used += 1
    return scope.num_microbatches * total / jnp.maximum(global_count, 1.0)


def batch_total(values: jax.Array) -> jax.Array:
    """Sum of `values` in fp32 (a count to log, e.g. valid examples), the whole batch's under accumulation."""
    total = jnp.sum(jnp.asarray(values).astype(jnp.float32))
    scope = _SCOPES[-1] if _SCOPES else None
    return total if scope is None or scope.global_counts is None else scope.num_microbatches * total
