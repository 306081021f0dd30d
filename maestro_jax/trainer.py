"""Train state, optimizer and schedules, and the one jitted train step (grad accumulation, EMA, NaN guard)."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from maestro_jax import partitioning
from maestro_jax.objectives import reductions


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; saved whole in checkpoints.

    step: i32[] batches consumed (skipped non-finite steps included, so data and rng stay in lockstep).
    params: the trained collection (fp32). model_state: other collections (e.g. "frozen"), carried unchanged.
    ema_params: exponential moving average of params, or None when EMA is off.
    rng: u32[2] base key; step keys are fold_in(rng, step) so a restored run draws the same randomness.
    skipped_steps / consecutive_skipped: i32[] counts of updates rejected by the non-finite guard.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    skipped_steps: jax.Array
    consecutive_skipped: jax.Array

    def variables(self, use_ema: bool = False) -> dict:
        """The variables dict for `model.apply`: {"params": ..., **model_state}."""
        return {"params": self.ema_params if use_ema else self.params, **self.model_state}


@gin.configurable
def make_learning_rate_schedule(
    *,
    peak_learning_rate: float = 1e-3,
    warmup_steps: int = 1000,
    decay: str = "inverse_sqrt",
    total_steps: int | None = None,
    final_learning_rate_fraction: float = 0.0,
    decay_fraction: float = 0.2,
) -> optax.Schedule:
    """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps` (optimizer updates), then a decay.

    decay: "inverse_sqrt" (peak * sqrt(warmup / step)), "cosine" (to final_learning_rate_fraction * peak at
    total_steps), "constant", or "wsd" (warmup-stable-decay: the peak until the last `decay_fraction` of
    total_steps, then linear to final_learning_rate_fraction * peak at total_steps; a short run keeps a high rate
    for longer than under cosine).
    """
    warmup_steps = max(int(warmup_steps), 1)
    if decay == "inverse_sqrt":

        def schedule(count):
            step = jnp.asarray(count, jnp.float32) + 1.0
            return peak_learning_rate * jnp.minimum(step / warmup_steps, jnp.sqrt(warmup_steps / step))

        return schedule
    warmup = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
    if decay in ("cosine", "wsd") and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(
            f"{decay} decay needs make_learning_rate_schedule.total_steps > warmup_steps ({warmup_steps}); "
            f"got {total_steps}."
        )
    if decay == "cosine":
        after = optax.cosine_decay_schedule(
            peak_learning_rate, total_steps - warmup_steps, final_learning_rate_fraction
        )
    elif decay == "wsd":
        if not 0.0 < decay_fraction <= 1.0:
            raise ValueError(f"make_learning_rate_schedule.decay_fraction={decay_fraction}; it must lie in (0, 1].")
        decay_steps = min(max(int(round(decay_fraction * total_steps)), 1), total_steps - warmup_steps)
        stable = optax.constant_schedule(peak_learning_rate)
        tail = optax.linear_schedule(peak_learning_rate, final_learning_rate_fraction * peak_learning_rate, decay_steps)
        after = optax.join_schedules([stable, tail], [total_steps - warmup_steps - decay_steps])
    elif decay == "constant":
        after = optax.constant_schedule(peak_learning_rate)
    else:
        raise ValueError(f"make_learning_rate_schedule.decay={decay!r}; choose inverse_sqrt, cosine, wsd or constant.")
    return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def make_optimizer(
    *,
    learning_rate: optax.Schedule | float | None = None,
    name: str = "adamw",
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping followed by Adam or AdamW; learning_rate defaults to make_learning_rate_schedule()."""
    if learning_rate is None:
        learning_rate = make_learning_rate_schedule()
    if name == "adam":
        core = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        core = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        raise ValueError(f"make_optimizer.name={name!r}; choose adam or adamw.")
    if max_grad_norm is None:
        return core
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), core)


def make_init_fn(
    model: nn.Module, optimizer: optax.GradientTransformation, *, use_ema: bool, init_hooks: Sequence[Callable] = ()
) -> Callable:
    """`init(rng, batch) -> TrainState` with params still boxed (logical axis metadata); unbox after sharding.

    init_hooks: functions variables -> variables applied after `model.init`, e.g. to add a frozen teacher collection
    read from a checkpoint (its arrays become constants of the init computation).
    """

    def init(rng, batch):
        init_rng, train_rng = jax.random.split(rng)
        variables = model.init(init_rng, batch, train=False)
        variables = dict(variables)
        for hook in init_hooks:
            variables = dict(hook(variables))
        params = variables.pop("params")
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero,
            params=params,
            model_state=variables,
            opt_state=optimizer.init(params),
            ema_params=params if use_ema else None,
            rng=train_rng,
            skipped_steps=zero,
            consecutive_skipped=zero,
        )

    return init


def split_microbatches(batch, num_microbatches: int):
    """[B, ...] leaves -> [M, B/M, ...]; microbatch m takes examples m, m+M, ... so every data shard contributes."""

    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}; "
                "change train.num_microbatches or the batch size."
            )
        x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _objective_loss(model: nn.Module, objective: Callable) -> Callable:
    """`loss_fn(params, model_state, batch, rng, step) -> (loss, metrics)`: the objective on {"params", **state}."""

    def loss_fn(params, model_state, batch, rng, step):
        return objective(model, {"params": params, **model_state}, batch, rng, step)

    return loss_fn


def make_count_fn(model: nn.Module, objective: Callable, *, num_microbatches: int) -> Callable:
    """`count_fn(params, model_state, batch, rng, step) -> tuple of f32[]`: the count behind each batch-level mean
    the objective makes (`objectives.reductions.batch_mean`, in call order), summed over the microbatches of `batch`.

    Microbatch m is `split_microbatches`'s and draws from fold_in(rng, m), as in `make_grad_fn`. Forward only, and
    only the counts are returned, so under jit XLA drops the model: what remains is length arithmetic and masks.
    """
    loss_fn = _objective_loss(model, objective)

    def count_fn(params, model_state, batch, rng, step):
        def count(carry, xs):
            index, microbatch = xs
            with reductions.counting() as counts:
                loss_fn(params, model_state, microbatch, jax.random.fold_in(rng, index), step)
            return carry, tuple(counts)

        micro = split_microbatches(batch, num_microbatches)
        _, counts = jax.lax.scan(count, None, (jnp.arange(num_microbatches), micro))
        return tuple(jnp.sum(c) for c in counts)

    return count_fn


def make_grad_fn(model: nn.Module, objective: Callable, *, num_microbatches: int = 1) -> Callable:
    """`grad_fn(params, model_state, batch, rng, step) -> (loss, metrics, grads)` of the whole batch.

    With M > 1 microbatches (`split_microbatches`; microbatch m draws from fold_in(rng, m)) the whole batch's count
    behind each of the objective's batch-level means (tokens, frames, examples) comes first (`make_count_fn`); every
    microbatch then divides its totals by those counts (`objectives.reductions`), so the mean over microbatches of
    the losses, gradients and metrics built from these reductions is the whole batch's to float error, however
    unequal the microbatches. Whatever an objective reduces otherwise (e.g. a plain jnp.mean) is the mean of its
    microbatch values, exact for equally weighted examples. M = 1 runs the objective once, with no counting.
    """
    loss_fn = _objective_loss(model, objective)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    count_fn = make_count_fn(model, objective, num_microbatches=num_microbatches)

    def grad_fn(params, model_state, batch, rng, step):
        if num_microbatches == 1:
            (loss, metrics), grads = value_and_grad(params, model_state, batch, rng, step)
            return loss, metrics, grads
        counts = count_fn(params, model_state, batch, rng, step)

        def microbatch_loss(params, microbatch, microbatch_rng):
            with reductions.accumulating(counts, num_microbatches):
                return loss_fn(params, model_state, microbatch, microbatch_rng, step)

        def accumulate(carry, xs):
            index, microbatch = xs
            (loss, metrics), grads = jax.value_and_grad(microbatch_loss, has_aux=True)(
                params, microbatch, jax.random.fold_in(rng, index)
            )
            return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

        micro = split_microbatches(batch, num_microbatches)
        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: value_and_grad(params, model_state, first, rng, step))
        (loss_shape, metrics_shape), grads_shape = shapes
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss_shape, metrics_shape, grads_shape))
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), micro))
        return jax.tree.map(lambda x: x / num_microbatches, total)

    return grad_fn


def make_train_step(
    model: nn.Module,
    objective: Callable,
    optimizer: optax.GradientTransformation,
    *,
    num_microbatches: int = 1,
    ema_decay: float | None = None,
    learning_rate_schedule: optax.Schedule | None = None,
) -> Callable:
    """`train_step(state, batch) -> (state, metrics)`; jit it with `jit_train_step`.

    A non-finite loss or gradient norm leaves params, optimizer state and EMA unchanged and increments
    skipped_steps and consecutive_skipped; the host loop stops after too many in a row.
    learning_rate_schedule (optional) is only evaluated for the "learning_rate" metric.
    """
    grad_fn = make_grad_fn(model, objective, num_microbatches=num_microbatches)

    def train_step(state: TrainState, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        loss, metrics, grads = grad_fn(state.params, state.model_state, batch, step_rng, state.step)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        skipped = jnp.where(finite, 0, 1).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            ema_params=keep_if_finite(ema_params, state.ema_params),
            skipped_steps=state.skipped_steps + skipped,
            consecutive_skipped=(state.consecutive_skipped + skipped) * skipped,
        )
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": optax.global_norm(new_state.params),
            "skipped_steps": new_state.skipped_steps,
            "consecutive_skipped": new_state.consecutive_skipped,
        }
        if learning_rate_schedule is not None:
            # optax counts applied updates only, so skipped steps do not advance the schedule.
            metrics["learning_rate"] = jnp.asarray(learning_rate_schedule(state.step - state.skipped_steps))
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, state_shardings, batch_sharding_tree, mesh) -> Callable:
    """One jax.jit with explicit in/out shardings; the state is donated so it updates in place."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding_tree),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def compile_ahead_of_time(jitted: Callable, abstract_state, abstract_batch, mesh, rules) -> tuple[Callable, dict]:
    """Lowers and compiles for the given abstract inputs; returns the executable and its memory and FLOP figures.

    Figures: flops (per device, from XLA cost analysis) and the argument/output/temp bytes per device.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = jitted.lower(abstract_state, abstract_batch).compile()
    figures = {}
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    if cost:
        figures["flops_per_step"] = float(cost.get("flops", 0.0))
    memory = compiled.memory_analysis()
    if memory is not None:
        for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes"):
            figures[name] = int(getattr(memory, name, 0))
    return compiled, figures


@jax.jit
def _all_finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
    """True when every floating leaf of `tree` is finite (checked on device, one bool to host)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(_all_finite(leaves)) if leaves else True


def abstract_and_shardings(init_fn: Callable, rng, abstract_batch, mesh, rules):
    """(abstract state with shardings, state shardings) for the current mesh, without materialising anything."""
    boxed = jax.eval_shape(init_fn, rng, abstract_batch)
    shardings = partitioning.state_shardings(boxed, mesh, rules)
    abstract = partitioning.with_shardings(nn.unbox(boxed), shardings)
    return abstract, shardings


def initialize_state(init_fn: Callable, rng, batch, shardings, mesh, rules) -> TrainState:
    """Runs `init_fn` under jit with out_shardings so every device creates only its own shards."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jax.jit(lambda r, b: nn.unbox(init_fn(r, b)), out_shardings=shardings)(rng, batch)


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """What a run builds its train step against, derived from one local batch (`setup_train_step`).

    abstract_batch / batch_shardings: the global batch on `mesh`; abstract_state / state_shardings: the TrainState.
    init_fn and rng initialise a fresh state (`initial_state`).
    """

    mesh: jax.sharding.Mesh
    rules: Any
    init_fn: Callable
    rng: jax.Array
    abstract_batch: Any
    batch_shardings: Any
    abstract_state: TrainState
    state_shardings: Any

    def initial_state(self, local_batch) -> TrainState:
        """A freshly initialised TrainState, sharded on the mesh (`initialize_state` on the global `local_batch`)."""
        batch = partitioning.global_batch(local_batch, self.mesh, self.rules)
        return initialize_state(self.init_fn, self.rng, batch, self.state_shardings, self.mesh, self.rules)

    def compile(self, train_step: Callable, local_batch=None) -> tuple[Callable, dict]:
        """`train_step` (from `make_train_step`) jitted with these shardings and compiled ahead of time for the
        shapes of `local_batch` (default: the batch this setup was made from); returns the executable and its figures
        (`compile_ahead_of_time`)."""
        jitted = jit_train_step(train_step, self.state_shardings, self.batch_shardings, self.mesh)
        abstract_batch = self.abstract_batch
        if local_batch is not None:
            abstract_batch = partitioning.abstract_global_batch(local_batch, self.mesh, self.rules)
        return compile_ahead_of_time(jitted, self.abstract_state, abstract_batch, self.mesh, self.rules)


def setup_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    local_batch,
    mesh,
    rules,
    *,
    seed: int,
    use_ema: bool,
    init_hooks: Sequence[Callable] = (),
) -> StepSetup:
    """The abstract batch and state and their shardings for `model` trained by `optimizer` on `mesh`, from one
    host-local batch (the shapes every later batch has); the training loop and bench/train_step.py both start here.

    seed: the init and step-rng seed. use_ema / init_hooks: as in `make_init_fn`.
    """
    abstract_batch = partitioning.abstract_global_batch(local_batch, mesh, rules)
    init_fn = make_init_fn(model, optimizer, use_ema=use_ema, init_hooks=init_hooks)
    rng = jax.random.PRNGKey(seed)
    abstract_state, state_shardings = abstract_and_shardings(init_fn, rng, abstract_batch, mesh, rules)
    return StepSetup(
        mesh=mesh,
        rules=rules,
        init_fn=init_fn,
        rng=rng,
        abstract_batch=abstract_batch,
        batch_shardings=jax.tree.map(lambda x: x.sharding, abstract_batch),
        abstract_state=abstract_state,
        state_shardings=state_shardings,
    )
