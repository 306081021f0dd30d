"""Benchmark the transducer loss: time of forward+backward and peak memory, JAX forms vs torchaudio.

Rows (each at B, T, U, V, joint dim J):
  jax plain        rnnt_loss on materialised logits [B, T, U+1, V] (custom_vjp, forward-backward gradient)
  jax autodiff     the same alpha scan differentiated by jax.grad (no custom gradient)
  torchaudio       torchaudio.functional.rnnt_loss(reduction="none") on the same logits, torch on 2 threads
  jax joint+plain  joint network materialised, then rnnt_loss; grads to joint params, enc_proj, pred_proj
  jax fused        rnnt_loss_fused (chunked joint, never holds [B, T, U+1, V])
  jax simple+pruned  pruned_transducer_loss: the simple loss of am = enc_proj @ W + b, lm = pred_proj @ W, its
                   occupancies -> pruning_bounds -> the joint on S label positions per frame (--prune-range); the sum
                   of both losses, grads to joint params, enc_proj, pred_proj (the objectives' `kind="pruned"`)
  torch joint+ta   the same joint in torch, then torchaudio's loss

Memory: JAX from the compiled executable's memory_analysis() (arguments + outputs + temporaries - aliased); torch
from the worker's peak RSS (VmHWM) minus its RSS before the inputs were made (so inputs count on both sides).
torchaudio is optional: pass --torch-python with an interpreter that has torch+torchaudio, e.g. the side venv of
bench/README.md (`python3.11 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.9.1 'torchaudio==2.9.*'
numpy`); each torch measurement runs in a fresh process of that interpreter so peaks do not mix.

  .venv/bin/python bench/rnnt_loss.py --torch-python .venv-torch/bin/python
  .venv/bin/python bench/rnnt_loss.py --pruned      # fused vs simple+pruned only, at V = 256, 512 (base), 1024
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

MIB = 2**20


def make_inputs(batch, frames, num_labels, vocab, joint, seed=0):
    """Identical NumPy inputs for both frameworks."""
    rng = np.random.default_rng(seed)
    return {
        "logits": rng.standard_normal((batch, frames, num_labels + 1, vocab), dtype=np.float32),
        "labels": rng.integers(1, vocab, size=(batch, num_labels)).astype(np.int32),
        "logit_lengths": np.full(batch, frames, np.int32) - np.arange(batch, dtype=np.int32) % 3,
        "label_lengths": np.full(batch, num_labels, np.int32) - np.arange(batch, dtype=np.int32) % 2,
        "enc_proj": rng.standard_normal((batch, frames, joint), dtype=np.float32),
        "pred_proj": rng.standard_normal((batch, num_labels + 1, joint), dtype=np.float32),
        "kernel": (rng.standard_normal((joint, vocab)) / np.sqrt(joint)).astype(np.float32),
        "bias": np.zeros(vocab, np.float32),
    }


def best_time(fn, repeats):
    """(min wall seconds, min process CPU seconds) over repeats; CPU time is what other jobs on the machine disturb
    least (all threads of this process, so a framework spinning idle threads pays for it)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def _status_bytes(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def torch_worker(config):
    import torch
    import torchaudio.functional as taf

    torch.set_num_threads(2)

    def run(inputs, form):
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        if form == "plain":
            logits = tensors["logits"].requires_grad_(True)
            leaves = [logits]
        else:
            kernel, bias = tensors["kernel"].requires_grad_(True), tensors["bias"].requires_grad_(True)
            enc, pred = tensors["enc_proj"].requires_grad_(True), tensors["pred_proj"].requires_grad_(True)
            leaves = [kernel, bias, enc, pred]

        def step():
            for leaf in leaves:
                leaf.grad = None
            if form == "plain":
                x = logits
            else:
                x = torch.tanh(enc[:, :, None, :] + pred[:, None, :, :]) @ kernel + bias
            loss = taf.rnnt_loss(
                x, tensors["labels"], tensors["logit_lengths"], tensors["label_lengths"], blank=0, reduction="none"
            )
            loss.sum().backward()
            return loss

        return step

    form = config["form"]
    small = make_inputs(2, 5, 3, 7, 4)
    run(small, form)()  # load kernels before the baseline
    # ru_maxrss would carry the parent's high-water mark across fork+exec; VmHWM is this process's own, reset here.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = _status_bytes("VmRSS")
    if form == "plain":
        inputs = make_inputs(**config["shape"])
    else:  # the joint form never touches the big logits tensor
        inputs = {k: v for k, v in make_inputs(**config["shape"]).items() if k != "logits"}
    step = run(inputs, form)
    loss = step()
    seconds, cpu_seconds = best_time(step, config["repeats"])
    peak = _status_bytes("VmHWM") - baseline
    print(
        json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": peak, "loss_sum": float(loss.sum())})
    )


def torch_measure(torch_python, form, shape, repeats):
    config = json.dumps({"form": form, "shape": shape, "repeats": repeats})
    result = subprocess.run([torch_python, __file__, "--torch-worker", config], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"torch worker ({torch_python}) failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def jax_measure(form, inputs, repeats, chunk_size, prune_range=5):
    import jax
    import jax.numpy as jnp

    from maestro_jax.losses import pruned_rnnt, rnnt

    def joint_output_fn(params, z):
        return jnp.tanh(z) @ params["kernel"] + params["bias"]

    def autodiff_loss(logits, labels, logit_lengths, label_lengths):
        blank_logp, label_logp = rnnt.rnnt_log_probs(logits, labels)
        alpha = rnnt.forward_variables(blank_logp, label_logp)
        return -rnnt.log_likelihood(alpha, blank_logp, logit_lengths, label_lengths)

    lengths = (inputs["labels"], inputs["logit_lengths"], inputs["label_lengths"])
    if form in ("plain", "autodiff"):
        loss_fn = rnnt.rnnt_loss if form == "plain" else autodiff_loss

        def objective(logits, labels, logit_lengths, label_lengths):
            return jnp.sum(loss_fn(logits, labels, logit_lengths, label_lengths))

        args = (inputs["logits"], *lengths)
    else:

        def objective(params, enc_proj, pred_proj, labels, logit_lengths, label_lengths):
            if form == "simple+pruned":
                am = enc_proj @ params["kernel"] + params["bias"]
                lm = pred_proj @ params["kernel"]
                losses = pruned_rnnt.pruned_transducer_loss(
                    joint_output_fn,
                    params,
                    enc_proj,
                    pred_proj,
                    am,
                    lm,
                    labels,
                    logit_lengths,
                    label_lengths,
                    prune_range=prune_range,
                )
                loss = losses.simple + losses.pruned
            elif form == "fused":
                loss = rnnt.rnnt_loss_fused(
                    joint_output_fn,
                    params,
                    enc_proj,
                    pred_proj,
                    labels,
                    logit_lengths,
                    label_lengths,
                    chunk_size=chunk_size,
                )
            else:
                logits = joint_output_fn(params, enc_proj[:, :, None, :] + pred_proj[:, None, :, :])
                loss = rnnt.rnnt_loss(logits, labels, logit_lengths, label_lengths)
            return jnp.sum(loss)

        params = {"kernel": inputs["kernel"], "bias": inputs["bias"]}
        args = (params, inputs["enc_proj"], inputs["pred_proj"], *lengths)
    args = jax.device_put(args)
    argnums = (0,) if form in ("plain", "autodiff") else (0, 1, 2)
    compiled = jax.jit(jax.value_and_grad(objective, argnums=argnums)).lower(*args).compile()
    memory = compiled.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    loss_sum, _ = jax.block_until_ready(compiled(*args))
    seconds, cpu_seconds = best_time(lambda: jax.block_until_ready(compiled(*args)), repeats)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": peak, "loss_sum": float(loss_sum)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default="", help="interpreter with torch+torchaudio; empty skips torch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per row (minimum reported)")
    parser.add_argument("--sweep-repeats", type=int, default=1, help="timed repetitions in the V and T sweeps")
    parser.add_argument("--chunk-size", type=int, default=16, help="frames per chunk of rnnt_loss_fused")
    parser.add_argument("--joint-dim", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="base configuration only")
    parser.add_argument("--pruned", action="store_true", help="fused vs simple+pruned only, over V = 256, base, 1024")
    parser.add_argument("--prune-range", type=int, default=5, help="label positions per frame of simple+pruned")
    parser.add_argument("--base", default="8,250,60,512", help="B,T,U,V of the base configuration")
    parser.add_argument("--torch-worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(json.loads(args.torch_worker))

    import jax

    batch, frames, num_labels, vocab = (int(x) for x in args.base.split(","))
    base = {"batch": batch, "frames": frames, "num_labels": num_labels, "vocab": vocab, "joint": args.joint_dim}
    shapes = [base]
    if args.pruned:
        shapes = [{**base, "vocab": v} for v in (256,)] + [base] + [{**base, "vocab": v} for v in (1024,)]
    elif not args.quick:
        shapes += [{**base, "vocab": v} for v in (256, 1024, 4096)]
        shapes += [{**base, "frames": t} for t in (100, 500)]
    print(
        f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; chunk_size={args.chunk_size}; "
        f"prune_range={args.prune_range}; "
        f"min of {args.repeats} (sweeps: {args.sweep_repeats}) after a warm-up; memory in MiB; torch on 2 threads"
    )
    header = (
        "| B | T | U | V | form | fwd+bwd wall ms | CPU ms | peak MiB | speed-up vs torch (wall / CPU) "
        "| memory / torch | loss sum |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in shapes:
        repeats = args.repeats if shape is base else args.sweep_repeats
        inputs = make_inputs(**shape)
        if args.pruned:
            del inputs["logits"]  # only the joint forms run
        rows = {}
        forms = (
            ("fused", "simple+pruned")
            if args.pruned
            else ("plain", "autodiff", "joint+plain", "fused", "simple+pruned")
        )
        for form in forms:
            if form == "autodiff" and shape["vocab"] > 1024:
                continue  # same recursion as plain; its scatter gradient is slow and the trend is clear by then
            rows[form] = jax_measure(form, inputs, repeats, args.chunk_size, args.prune_range)
        del inputs
        if args.torch_python and not args.pruned:
            rows["torchaudio"] = torch_measure(args.torch_python, "plain", shape, repeats)
            rows["torch joint+torchaudio"] = torch_measure(args.torch_python, "joint", shape, repeats)
        for form, row in rows.items():
            reference = rows.get("torchaudio" if form in ("plain", "autodiff") else "torch joint+torchaudio")
            speedup = memory_ratio = ""
            if reference and not form.startswith("torch"):
                speedup = (
                    f"{reference['seconds'] / row['seconds']:.2f}x / "
                    f"{reference['cpu_seconds'] / row['cpu_seconds']:.2f}x"
                )
                memory_ratio = f"{row['peak_bytes'] / max(reference['peak_bytes'], 1):.2f}"
            print(
                f"| {shape['batch']} | {shape['frames']} | {shape['num_labels']} | {shape['vocab']} | {form} | "
                f"{1e3 * row['seconds']:.0f} | {1e3 * row['cpu_seconds']:.0f} | {row['peak_bytes'] / MIB:.1f} | "
                f"{speedup} | {memory_ratio} | {row['loss_sum']:.6g} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
