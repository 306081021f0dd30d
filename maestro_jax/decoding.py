"""RNN-T and CTC decoding on padded batches: greedy and beam searches, jit-able with static shapes.

The RNN-T decoders drive the prediction network through the callables of docs/CONTRACTS.md:
  predictor_init(batch_size) -> carry               every carry leaf has leading axis batch_size
  predictor_step(carry, token i32[B]) -> (carry, pred_proj f32[B, J])    token blank_id starts a sequence
  joint_output_fn(joint_params, z f32[..., J]) -> logits f32[..., V]
so the logits at frame t after the prefix y are joint_output_fn(joint_params, enc_proj[:, t] + pred_proj(y)).
The functions are pure and built from lax control flow; jit them with the callables closed over, e.g.
`jax.jit(functools.partial(rnnt_greedy_decode, predictor_init=..., ...))` or a lambda over (enc_proj, enc_lengths).

Scores are natural-log probabilities in the standard RNN-T lattice (a label keeps the frame, a blank advances it), so
they are comparable with -rnnt_loss. Outputs are padded with 0 (the contract's pad id) beyond each length.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PredictorInit = Callable[[int], Any]
PredictorStep = Callable[[Any, jax.Array], tuple[Any, jax.Array]]
JointOutputFn = Callable[[Any, jax.Array], jax.Array]

NEG_INF = -jnp.inf


def _check_option(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"decoding option {name}={value} is invalid; it must be an integer >= {minimum}.")


def _check_blank(blank_id: int, vocab_size: int) -> None:
    if not 0 <= blank_id < vocab_size:
        raise ValueError(f"blank_id={blank_id} is outside the vocabulary [0, {vocab_size}); pass the model's blank id.")


def _check_batch(name: str, values: jax.Array, lengths: jax.Array) -> None:
    if values.ndim != 3 or lengths.shape != values.shape[:1]:
        raise ValueError(
            f"{name} must be [B, T, ...] with lengths [B]; got {name} {values.shape} and lengths {lengths.shape}."
        )


def _select_rows(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per-row choice between two pytrees whose leaves share the leading axis of `mask` (bool[R])."""

    def choose(n, o):
        return jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(choose, new, old)


def _start_predictor(predictor_init, predictor_step, rows: int, blank_id: int):
    """Carry and pred_proj f32[rows, J] after the start token: the predictor state of the empty prefix."""
    return predictor_step(predictor_init(rows), jnp.full((rows,), blank_id, jnp.int32))


class _GreedyState(NamedTuple):
    frame: jax.Array  # i32[B] frame each utterance stands at
    length: jax.Array  # i32[B] labels emitted so far
    symbols_at_frame: jax.Array  # i32[B] labels emitted at the current frame
    carry: Any
    pred_proj: jax.Array  # f32[B, J] predictor output for the emitted prefix
    tokens: jax.Array  # i32[B, L]
    logprob: jax.Array  # f32[B]


def rnnt_greedy_decode(
    enc_proj: jax.Array,
    enc_lengths: jax.Array,
    predictor_init: PredictorInit,
    predictor_step: PredictorStep,
    joint_output_fn: JointOutputFn,
    joint_params: Any,
    *,
    max_symbols_per_frame: int = 4,
    max_output_length: int,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched greedy RNN-T decoding: at each lattice node take the most probable of blank and the labels.

    One lax.while_loop step moves every unfinished utterance by one lattice arc, so utterances advance through their
    frames independently and stop at their own length. The predictor advances only on emitted labels. A label is
    allowed while fewer than `max_symbols_per_frame` labels were emitted at the current frame and fewer than
    `max_output_length` in total; otherwise the blank is taken (and scored), which moves to the next frame.

    Args:
      enc_proj: f32[B, T, J] encoder output projected to the joint dim; frames >= enc_lengths are ignored.
      enc_lengths: i32[B] valid frames per utterance (clipped to [0, T]).
      predictor_init, predictor_step, joint_output_fn, joint_params: the model callables (module docstring).
      max_symbols_per_frame: most labels emitted at one frame.
      max_output_length: L, the static length of the returned token buffer and the most labels per utterance.
      blank_id: vocabulary id of blank (also fed as the start token).

    Returns:
      tokens i32[B, L] (0 beyond lengths), lengths i32[B], logprob f32[B]: the log-probability of the decoded
      alignment path (labels and blanks), a lower bound on log P(tokens | x) = -rnnt_loss.
    """
    _check_batch("enc_proj", enc_proj, enc_lengths)
    _check_option("max_symbols_per_frame", max_symbols_per_frame, 1)
    _check_option("max_output_length", max_output_length, 1)
    batch, frames, _ = enc_proj.shape
    enc_lengths = jnp.clip(enc_lengths.astype(jnp.int32), 0, frames)
    rows = jnp.arange(batch)
    carry, pred_proj = _start_predictor(predictor_init, predictor_step, batch, blank_id)
    zeros = jnp.zeros((batch,), jnp.int32)
    state = _GreedyState(
        zeros, zeros, zeros, carry, pred_proj, jnp.zeros((batch, max_output_length), jnp.int32), jnp.zeros((batch,))
    )

    def unfinished(s: _GreedyState) -> jax.Array:
        return jnp.any(s.frame < enc_lengths)

    def advance_one_arc(s: _GreedyState) -> _GreedyState:
        active = s.frame < enc_lengths
        enc_t = enc_proj[rows, jnp.minimum(s.frame, frames - 1)]
        logits = joint_output_fn(joint_params, enc_t + s.pred_proj).astype(jnp.float32)
        _check_blank(blank_id, logits.shape[-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        may_emit = (s.length < max_output_length) & (s.symbols_at_frame < max_symbols_per_frame)
        is_blank = jnp.arange(log_probs.shape[-1]) == blank_id
        allowed = jnp.where(may_emit[:, None] | is_blank, log_probs, NEG_INF)
        symbol = jnp.argmax(allowed, axis=-1).astype(jnp.int32)
        emit = active & (symbol != blank_id)
        step_blank = active & (symbol == blank_id)

        tokens = s.tokens.at[rows, jnp.where(emit, s.length, max_output_length)].set(symbol, mode="drop")
        logprob = s.logprob + jnp.where(active, log_probs[rows, symbol], 0.0)

        def feed_labels(carry_and_pred):
            new = predictor_step(carry_and_pred[0], jnp.where(emit, symbol, blank_id))
            return _select_rows(emit, new, carry_and_pred)

        carry, pred = jax.lax.cond(jnp.any(emit), feed_labels, lambda cp: cp, (s.carry, s.pred_proj))
        return _GreedyState(
            frame=s.frame + step_blank,
            length=s.length + emit,
            symbols_at_frame=jnp.where(emit, s.symbols_at_frame + 1, jnp.where(step_blank, 0, s.symbols_at_frame)),
            carry=carry,
            pred_proj=pred,
            tokens=tokens,
            logprob=logprob,
        )

    final = jax.lax.while_loop(unfinished, advance_one_arc, state)
    return final.tokens, final.length, final.logprob


class _BeamState(NamedTuple):
    step: jax.Array  # i32[] alignment length i = frame + label count of every live hypothesis
    tokens: jax.Array  # i32[B, k, L]
    length: jax.Array  # i32[B, k]
    symbols_at_frame: jax.Array  # i32[B, k] labels emitted at the hypothesis's current frame
    score: jax.Array  # f32[B, k]; -inf marks an empty slot
    carry: Any  # leaves with leading axis B * k
    pred_proj: jax.Array  # f32[B * k, J]
    final_tokens: jax.Array  # i32[B, k, L] finished hypotheses, best first
    final_length: jax.Array  # i32[B, k]
    final_score: jax.Array  # f32[B, k]


def _extends_by_one(tokens: jax.Array, length: jax.Array, alive: jax.Array) -> jax.Array:
    """bool[B, k, k]: [b, j, m] is True when live prefix m equals live prefix j plus one label.

    Relies on tokens being 0 beyond each length. tokens i32[B, k, L], length i32[B, k], alive bool[B, k].
    """
    positions = jnp.arange(tokens.shape[-1])
    inside_j = positions[None, None, :] < length[:, :, None]  # [B, j, L]
    same = tokens[:, :, None, :] == tokens[:, None, :, :]  # [B, j, m, L]
    shared_prefix = jnp.all(same | ~inside_j[:, :, None, :], axis=-1)
    one_longer = length[:, None, :] == length[:, :, None] + 1
    return shared_prefix & one_longer & alive[:, :, None] & alive[:, None, :]


def _last_token(tokens: jax.Array, length: jax.Array) -> jax.Array:
    """i32[B, k] last label of each prefix; -1 for empty prefixes."""
    last = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(length > 0, last, -1)


def _merge_extensions(target_scores, extension_scores, tokens, length, alive):
    """Log-add each label extension that reproduces a live prefix into that prefix's score, and drop the extension.

    target_scores f32[B, k] per live prefix m; extension_scores f32[B, k, V] for prefix j extended by label c.
    Returns (target_scores, extension_scores) after merging.
    """
    vocab = extension_scores.shape[-1]
    extends = _extends_by_one(tokens, length, alive)  # [B, j, m]
    last = _last_token(tokens, length)  # [B, m]
    last_one_hot = jax.nn.one_hot(last, vocab, dtype=jnp.bool_)  # [B, m, V]; empty prefixes give all-False rows
    into_m = jnp.take_along_axis(extension_scores, jnp.maximum(last, 0)[:, None, :], axis=-1)  # [B, j, m]
    merged = jax.nn.logsumexp(jnp.where(extends, into_m, NEG_INF), axis=1)  # [B, m]
    target_scores = jnp.logaddexp(target_scores, merged)
    consumed = jnp.einsum("bjm,bmv->bjv", extends.astype(jnp.int32), last_one_hot.astype(jnp.int32)) > 0
    return target_scores, jnp.where(consumed, NEG_INF, extension_scores)


def _append(tokens: jax.Array, length: jax.Array, symbol: jax.Array, emit: jax.Array) -> jax.Array:
    """tokens i32[..., L] with symbol written at position length where emit (bool[...])."""
    positions = jnp.arange(tokens.shape[-1])
    write = emit[..., None] & (positions == length[..., None])
    return jnp.where(write, symbol[..., None], tokens)


def _top_k_pool(scores, tokens, length, k):
    """Keep the k best of a candidate pool. scores f32[B, P], tokens i32[B, P, L], length i32[B, P]."""
    best, index = jax.lax.top_k(scores, k)
    return best, jnp.take_along_axis(tokens, index[..., None], axis=1), jnp.take_along_axis(length, index, axis=1)


def rnnt_beam_search(
    enc_proj: jax.Array,
    enc_lengths: jax.Array,
    predictor_init: PredictorInit,
    predictor_step: PredictorStep,
    joint_output_fn: JointOutputFn,
    joint_params: Any,
    *,
    beam_size: int,
    max_symbols_per_frame: int = 4,
    max_output_length: int,
    blank_id: int = 0,
    nbest: bool = False,
    ilm_fusion_weight: float = 0.0,
    length_reward: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Alignment-length synchronous RNN-T beam search (Saon et al., ICASSP 2020) with prefix merging.

    Step i holds up to k hypotheses per utterance, all with frame + labels = i, so identical label prefixes stand on
    the same lattice node and merge exactly (log-add of their scores). Each step expands every hypothesis by blank
    (next frame) and by every label (same frame), and the k best candidates survive; a survivor that left the last frame
    by blank moves to an n-best pool of size k. Live hypotheses scoring below the pool's k-th entry are dropped, and
    the loop stops when none is left (at most T + L steps). The predictor runs once per step on the B * k flattened
    hypotheses. As in greedy decoding a hypothesis emits at most `max_symbols_per_frame` labels at
    one frame: without the cap, hypotheses that loop on labels look best at equal alignment length, crowd the beam
    and end at the length cap. With beam_size=1 this is rnnt_greedy_decode with the same options.

    Args:
      enc_proj: f32[B, T, J]; enc_lengths: i32[B] valid frames (clipped to [0, T]).
      predictor_init, predictor_step, joint_output_fn, joint_params: the model callables (module docstring).
      beam_size: k, hypotheses kept per utterance.
      max_symbols_per_frame: most labels a hypothesis emits at one frame (a merged hypothesis keeps the count of the
        path that arrived by blank, 0).
      max_output_length: L, the most labels per hypothesis (static token buffer length).
      blank_id: vocabulary id of blank (also fed as the start token).
      nbest: also return the k finished hypotheses instead of only the best.
      ilm_fusion_weight: lambda >= 0 of shallow fusion with the model's own internal LM: each label y_u adds
        lambda * log P_ILM(y_u | y_<u), where P_ILM is the joint fed with the prediction network alone, softmax over
        the labels without blank (the LM that `objectives.common.internal_lm_terms` trains on unspoken text). A
        hypothesis then scores log P(y | x) + lambda * log P_ILM(y); prefixes still merge exactly, since the LM term
        depends on the labels only. 0 (default): plain beam search.
      length_reward: beta, added to the score for each label: the fusion costs every label lambda * -log P_ILM (about
        lambda nats), which alone favours deletions. With beta > 0 a score can rise along a path, so live hypotheses are
        no longer dropped below a full n-best pool's last entry (the search keeps its k best per step either way).

    Returns:
      tokens i32[B, L], lengths i32[B], scores f32[B]: the best hypothesis and its log-probability summed over the
      alignments the search kept (<= log P(tokens | x); plus the fusion and length terms when set). With nbest=True
      the shapes are [B, k, L], [B, k], [B, k], best first; unused n-best entries score -inf.
    """
    _check_batch("enc_proj", enc_proj, enc_lengths)
    _check_option("beam_size", beam_size, 1)
    _check_option("max_symbols_per_frame", max_symbols_per_frame, 1)
    _check_option("max_output_length", max_output_length, 1)
    if not ilm_fusion_weight >= 0:
        raise ValueError(f"ilm_fusion_weight must be >= 0 (0 = no fusion), got {ilm_fusion_weight!r}.")
    if not length_reward >= 0:
        raise ValueError(f"length_reward must be >= 0 (0 = none), got {length_reward!r}.")
    batch, frames, joint_dim = enc_proj.shape
    k, out_len = beam_size, max_output_length
    enc_lengths = jnp.clip(enc_lengths.astype(jnp.int32), 0, frames)
    flat = batch * k
    carry, pred_proj = _start_predictor(predictor_init, predictor_step, flat, blank_id)

    empty_tokens = jnp.zeros((batch, k, out_len), jnp.int32)
    empty_length = jnp.zeros((batch, k), jnp.int32)
    first_slot = jnp.arange(k) == 0
    silent = enc_lengths[:, None] == 0  # an utterance without frames finishes at once with the empty output
    state = _BeamState(
        step=jnp.zeros((), jnp.int32),
        tokens=empty_tokens,
        length=empty_length,
        symbols_at_frame=empty_length,
        score=jnp.where(first_slot & ~silent, 0.0, NEG_INF),
        carry=carry,
        pred_proj=pred_proj,
        final_tokens=empty_tokens,
        final_length=empty_length,
        final_score=jnp.where(first_slot & silent, 0.0, NEG_INF),
    )

    def searching(s: _BeamState) -> jax.Array:
        return (s.step < frames + out_len) & jnp.any(s.score > NEG_INF)

    def expand(s: _BeamState) -> _BeamState:
        alive = s.score > NEG_INF
        frame = s.step - s.length  # [B, k]
        enc_t = enc_proj[jnp.arange(batch)[:, None], jnp.clip(frame, 0, frames - 1)]  # [B, k, J]
        logits = joint_output_fn(joint_params, enc_t + s.pred_proj.reshape(batch, k, joint_dim))
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, k, V]
        vocab = log_probs.shape[-1]
        _check_blank(blank_id, vocab)
        is_blank = jnp.arange(vocab) == blank_id

        blank_scores = s.score + log_probs[..., blank_id]
        label_scores = s.score[..., None] + log_probs
        if ilm_fusion_weight:
            lm_logits = joint_output_fn(joint_params, s.pred_proj.reshape(batch, k, joint_dim)).astype(jnp.float32)
            # Blank gets -inf here; its label score is masked below anyway.
            lm_log_probs = jax.nn.log_softmax(jnp.where(is_blank, NEG_INF, lm_logits), axis=-1)
            label_scores = label_scores + ilm_fusion_weight * lm_log_probs
        label_scores = label_scores + length_reward
        may_emit = (s.length < out_len) & (s.symbols_at_frame < max_symbols_per_frame)
        label_scores = jnp.where(is_blank | ~may_emit[..., None], NEG_INF, label_scores)
        blank_scores, label_scores = _merge_extensions(blank_scores, label_scores, s.tokens, s.length, alive)

        candidates = jnp.where(is_blank, blank_scores[..., None], label_scores)
        score, index = jax.lax.top_k(candidates.reshape(batch, k * vocab), k)
        parent, symbol = index // vocab, (index % vocab).astype(jnp.int32)
        emit = (symbol != blank_id) & (score > NEG_INF)
        parent_length = jnp.take_along_axis(s.length, parent, axis=1)
        tokens = _append(jnp.take_along_axis(s.tokens, parent[..., None], axis=1), parent_length, symbol, emit)

        # A blank out of the last frame finishes the hypothesis: it moves to the n-best pool and frees its slot.
        finished = (symbol == blank_id) & (jnp.take_along_axis(frame, parent, axis=1) + 1 >= enc_lengths[:, None])
        final_score, final_tokens, final_length = _top_k_pool(
            jnp.concatenate([s.final_score, jnp.where(finished, score, NEG_INF)], axis=1),
            jnp.concatenate([s.final_tokens, tokens], axis=1),
            jnp.concatenate([s.final_length, parent_length], axis=1),
            k,
        )
        score = jnp.where(finished, NEG_INF, score)
        symbols_at_frame = jnp.where(emit, jnp.take_along_axis(s.symbols_at_frame, parent, axis=1) + 1, 0)

        flat_parent = (jnp.arange(batch)[:, None] * k + parent).reshape(flat)
        parent_state = jax.tree.map(lambda x: x[flat_parent], (s.carry, s.pred_proj))
        fed = predictor_step(parent_state[0], jnp.where(emit, symbol, blank_id).reshape(flat))
        carry, pred = _select_rows(emit.reshape(flat), fed, parent_state)

        # Scores only fall along a path, so below a full pool's last entry a hypothesis could return only by a merge.
        if not length_reward:
            score = jnp.where(score < final_score[:, -1:], NEG_INF, score)
        return _BeamState(
            s.step + 1,
            tokens,
            parent_length + emit,
            symbols_at_frame,
            score,
            carry,
            pred,
            final_tokens,
            final_length,
            final_score,
        )

    final = jax.lax.while_loop(searching, expand, state)
    if nbest:
        return final.final_tokens, final.final_length, final.final_score
    return final.final_tokens[:, 0], final.final_length[:, 0], final.final_score[:, 0]


def ctc_greedy_decode(logits: jax.Array, lengths: jax.Array, blank_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Best-path CTC decoding: per-frame argmax, collapse repeats, drop blanks.

    Args:
      logits: f32[B, T, V] (log-probabilities work too); frames >= lengths are ignored.
      lengths: i32[B] valid frames.
      blank_id: vocabulary id of blank.

    Returns:
      tokens i32[B, T] (0 beyond lengths), lengths i32[B].
    """
    _check_batch("logits", logits, lengths)
    _check_blank(blank_id, logits.shape[-1])
    batch, frames, _ = logits.shape
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    previous = jnp.concatenate([jnp.full((batch, 1), -1, jnp.int32), best[:, :-1]], axis=1)
    keep = (jnp.arange(frames) < lengths[:, None]) & (best != blank_id) & (best != previous)
    position = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, frames)
    tokens = jnp.zeros((batch, frames), jnp.int32).at[jnp.arange(batch)[:, None], position].set(best, mode="drop")
    return tokens, jnp.sum(keep, axis=1, dtype=jnp.int32)


class _PrefixBeam(NamedTuple):
    tokens: jax.Array  # i32[B, k, L]
    length: jax.Array  # i32[B, k]
    log_p_blank: jax.Array  # f32[B, k] log P(prefix, path ends in blank)
    log_p_label: jax.Array  # f32[B, k] log P(prefix, path ends in its last label)


def ctc_prefix_beam_search(
    logits: jax.Array,
    lengths: jax.Array,
    *,
    beam_size: int,
    blank_id: int = 0,
    max_output_length: int | None = None,
    nbest: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CTC prefix beam search with blank / non-blank prefix probabilities, one lax.scan step per frame.

    Each frame extends the k prefixes by blank, by a repeat of their last label (same prefix) and by every label
    (longer prefix); an extension that reproduces a kept prefix is log-added into it, then the k most probable
    prefixes survive. With beam_size >= the number of distinct prefixes this is exact.

    Args:
      logits: f32[B, T, V] (log_softmax is applied); frames >= lengths are ignored.
      lengths: i32[B] valid frames.
      beam_size: k, prefixes kept per utterance.
      blank_id: vocabulary id of blank.
      max_output_length: L, static length of the token buffer; defaults to T (the most a CTC path can emit).
      nbest: also return all k prefixes instead of only the best.

    Returns:
      tokens i32[B, L], lengths i32[B], scores f32[B] = log(P_blank + P_label) of the best prefix; with nbest=True
      shapes [B, k, L], [B, k], [B, k], best first (empty slots score -inf).
    """
    _check_batch("logits", logits, lengths)
    _check_option("beam_size", beam_size, 1)
    batch, frames, vocab = logits.shape
    _check_blank(blank_id, vocab)
    k = beam_size
    out_len = frames if max_output_length is None else max_output_length
    _check_option("max_output_length", out_len, 1)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    is_blank = jnp.arange(vocab) == blank_id
    first_slot = jnp.arange(k) == 0
    beam = _PrefixBeam(
        tokens=jnp.zeros((batch, k, out_len), jnp.int32),
        length=jnp.zeros((batch, k), jnp.int32),
        log_p_blank=jnp.broadcast_to(jnp.where(first_slot, 0.0, NEG_INF), (batch, k)),
        log_p_label=jnp.full((batch, k), NEG_INF),
    )

    def one_frame(beam: _PrefixBeam, frame_inputs):
        frame_log_probs, valid = frame_inputs  # [B, V], bool[B]
        total = jnp.logaddexp(beam.log_p_blank, beam.log_p_label)
        alive = total > NEG_INF
        last = _last_token(beam.tokens, beam.length)
        last_log_prob = jnp.take_along_axis(frame_log_probs, jnp.maximum(last, 0), axis=1)

        stay_blank = total + frame_log_probs[:, blank_id : blank_id + 1]
        stay_label = jnp.where(last >= 0, beam.log_p_label + last_log_prob, NEG_INF)
        # A repeated label only extends the prefix when a blank separates it from the previous one.
        repeat = jnp.arange(vocab) == last[..., None]
        reach = jnp.where(repeat, beam.log_p_blank[..., None], total[..., None])
        extend = reach + frame_log_probs[:, None, :]
        extend = jnp.where(is_blank | (beam.length[..., None] >= out_len), NEG_INF, extend)
        stay_label, extend = _merge_extensions(stay_label, extend, beam.tokens, beam.length, alive)

        candidates = jnp.concatenate([jnp.logaddexp(stay_blank, stay_label), extend.reshape(batch, k * vocab)], axis=1)
        _, index = jax.lax.top_k(candidates, k)
        is_extension = index >= k
        parent = jnp.where(is_extension, (index - k) // vocab, index)
        symbol = jnp.where(is_extension, (index - k) % vocab, 0).astype(jnp.int32)
        parent_length = jnp.take_along_axis(beam.length, parent, axis=1)
        new_beam = _PrefixBeam(
            tokens=_append(
                jnp.take_along_axis(beam.tokens, parent[..., None], axis=1), parent_length, symbol, is_extension
            ),
            length=parent_length + is_extension,
            log_p_blank=jnp.where(is_extension, NEG_INF, jnp.take_along_axis(stay_blank, parent, axis=1)),
            log_p_label=jnp.where(
                is_extension,
                jnp.take_along_axis(extend.reshape(batch, k * vocab), jnp.maximum(index - k, 0), axis=1),
                jnp.take_along_axis(stay_label, parent, axis=1),
            ),
        )
        return _select_rows(valid, new_beam, beam), None

    valid_frames = jnp.arange(frames)[:, None] < lengths[None, :]  # [T, B]
    beam, _ = jax.lax.scan(one_frame, beam, (jnp.swapaxes(log_probs, 0, 1), valid_frames))
    scores = jnp.logaddexp(beam.log_p_blank, beam.log_p_label)
    order = jnp.argsort(-scores, axis=1)
    scores = jnp.take_along_axis(scores, order, axis=1)
    tokens = jnp.take_along_axis(beam.tokens, order[..., None], axis=1)
    length = jnp.take_along_axis(beam.length, order, axis=1)
    if nbest:
        return tokens, length, scores
    return tokens[:, 0], length[:, 0], scores[:, 0]


def token_lists(tokens, lengths) -> list:
    """Strip padding: tokens [..., L] and lengths [...] (jax or numpy) -> nested Python lists of token ids.

    A [B, L] batch gives list[list[int]]; an n-best [B, k, L] batch gives list[list[list[int]]].
    """
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.shape[:-1] != lengths.shape:
        raise ValueError(f"tokens {tokens.shape} and lengths {lengths.shape} disagree; tokens must be lengths + [L].")
    if lengths.ndim == 0:
        return tokens[: int(lengths)].tolist()
    return [token_lists(t, n) for t, n in zip(tokens, lengths)]
