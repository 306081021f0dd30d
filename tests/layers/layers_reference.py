"""Independent NumPy (float64) implementations of the layer equations, and helpers shared by the layer tests."""

import flax.linen as nn
import jax
import numpy as np


def randomized_params(variables, seed: int, scale: float = 0.3):
    """Unboxed copy of variables["params"] with every leaf replaced by N(0, scale^2) draws (biases become non-zero)."""
    rng = np.random.default_rng(seed)
    params = nn.meta.unbox(variables["params"])
    return jax.tree.map(lambda p: (scale * rng.standard_normal(p.shape)).astype(np.float32), params)


def as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def swish(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def dense(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)


def feed_forward(x, p):
    return dense(swish(dense(layer_norm(x, p["LayerNorm_0"]), p["hidden"])), p["output"])


def sinusoid(position: float, dim: int):
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    return np.concatenate([np.sin(position * inv_freq), np.cos(position * inv_freq)])


def attention(query_input, memory, key_mask, p, num_heads: int, relative: bool):
    """One example: query_input [Tq, D], memory [Tk, D], key_mask bool[Tk] -> [Tq, D], by explicit loops over i, j."""
    heads = lambda x, name: np.einsum("td,dhk->thk", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = heads(query_input, "query"), heads(memory, "key"), heads(memory, "value")
    num_queries, num_keys, dim = query_input.shape[0], memory.shape[0], query_input.shape[1]
    head_dim = q.shape[-1]
    out = np.zeros((num_queries, num_heads, head_dim))
    for h in range(num_heads):
        scores = np.full((num_queries, num_keys), -np.inf)
        for i in range(num_queries):
            for j in range(num_keys):
                if not key_mask[j]:
                    continue
                if relative:
                    r = np.einsum("d,dk->k", sinusoid(i - j, dim), p["position"]["kernel"][:, h])
                    score = (q[i, h] + p["content_bias"][h]) @ k[j, h] + (q[i, h] + p["position_bias"][h]) @ r
                else:
                    score = q[i, h] @ k[j, h]
                scores[i, j] = score / np.sqrt(head_dim)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[:, h] = weights @ v[:, h]
    return np.einsum("thk,hkd->td", out, p["out"]["kernel"]) + p["out"]["bias"]


def depthwise_conv(x, kernel, bias):
    """x [T, C], kernel [K, 1, C] centred ('SAME', zero padding), bias [C]."""
    size = kernel.shape[0]
    padded = np.pad(x, (((size - 1) // 2, (size - 1) // 2), (0, 0)))
    return np.stack([(padded[t : t + size] * kernel[:, 0]).sum(0) for t in range(x.shape[0])]) + bias


def convolution_module(x, mask, p):
    y = dense(layer_norm(x, p["LayerNorm_0"]), p["pointwise_in"])
    half = y.shape[-1] // 2
    y = y[:, :half] * sigmoid(y[:, half:])
    y = np.where(mask[:, None], y, 0.0)
    y = depthwise_conv(y, p["depthwise"]["kernel"], p["depthwise"]["bias"])
    y = swish(layer_norm(y, p["conv_norm"]))
    return dense(y, p["pointwise_out"])


def conformer_block(x, mask, p, num_heads: int, relative: bool):
    """One example x [T, D], mask bool[T]; padded frames of the output are 0."""
    x = x + 0.5 * feed_forward(x, p["feed_forward_1"])
    y = layer_norm(x, p["attention_norm"])
    x = x + attention(y, y, mask, p["attention"], num_heads, relative)
    x = x + convolution_module(x, mask, p["convolution"])
    x = x + 0.5 * feed_forward(x, p["feed_forward_2"])
    return np.where(mask[:, None], layer_norm(x, p["final_norm"]), 0.0)
