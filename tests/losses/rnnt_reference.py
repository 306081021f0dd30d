"""NumPy references for the transducer tests: brute force over all paths and a naive alpha recursion."""

import itertools

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def all_paths(frames: int, num_labels: int):
    """Every path as the list of arcs [(t, u, is_label)], final blank included."""
    for label_steps in itertools.combinations(range(frames + num_labels - 1), num_labels):
        t = u = 0
        arcs = []
        for step in range(frames + num_labels - 1):
            is_label = step in label_steps
            arcs.append((t, u, is_label))
            u, t = (u + 1, t) if is_label else (u, t + 1)
        arcs.append((t, u, False))
        yield arcs


def path_log_probs(log_probs: np.ndarray, labels: np.ndarray, frames: int, num_labels: int, blank_id: int = 0):
    """log_probs [T, U+1, V] of one example -> list of (arcs, log-prob) for every path."""
    out = []
    for arcs in all_paths(frames, num_labels):
        score = sum(log_probs[t, u, labels[u] if is_label else blank_id] for t, u, is_label in arcs)
        out.append((arcs, score))
    return out


def brute_force_nll(logits, labels, frames, num_labels, blank_id=0) -> float:
    scores = [s for _, s in path_log_probs(log_softmax(logits), labels, frames, num_labels, blank_id)]
    return -float(np.logaddexp.reduce(scores))


def naive_alpha_nll(logits, labels, frames, num_labels, blank_id=0) -> float:
    """Textbook double loop over (t, u) in float64."""
    log_probs = log_softmax(logits)
    alpha = np.full((frames, num_labels + 1), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(frames):
        for u in range(num_labels + 1):
            if t > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t - 1, u] + log_probs[t - 1, u, blank_id])
            if u > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t, u - 1] + log_probs[t, u - 1, labels[u - 1]])
    return -float(alpha[frames - 1, num_labels] + log_probs[frames - 1, num_labels, blank_id])
