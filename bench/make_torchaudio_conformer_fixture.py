"""Write tests/fixtures/torchaudio_conformer_tiny.npz: tiny torchaudio Conformers, their inputs and eval-mode outputs.

Needs torch + torchaudio, which the project's .venv does not have: run it with the side venv that bench/README.md
makes (`python3.11 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.9.1 'torchaudio==2.9.*' numpy`):

  .venv-torch/bin/python bench/make_torchaudio_conformer_fixture.py

Variants (npz key prefix): "batch_norm/", "group_norm/" (use_group_norm=True) and "convolution_first/" (batch norm,
convolution module ahead of attention). Under each prefix: "state/<torch key>" state_dict arrays, "inputs" f32[B, T, D]
(padded frames hold random values too: torchaudio lets them reach valid frames through the depthwise conv),
"lengths" i32[B], "outputs" f32[B, T, D] (torchaudio's output, all frames) and "num_heads" i32[].
tests/test_convert.py also imports `torchaudio_reference` from here for its live comparison.
"""

import argparse
import os

import numpy as np

TINY = dict(input_dim=16, num_heads=2, ffn_dim=32, num_layers=2, depthwise_conv_kernel_size=5)
LENGTHS = (7, 4)
VARIANTS = {
    "batch_norm": dict(use_group_norm=False, convolution_first=False),
    "group_norm": dict(use_group_norm=True, convolution_first=False),
    "convolution_first": dict(use_group_norm=False, convolution_first=True),
}
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torchaudio_conformer_tiny.npz")


def torchaudio_reference(
    *, use_group_norm: bool, convolution_first: bool, seed: int, lengths=LENGTHS, **sizes
) -> dict[str, np.ndarray]:
    """A randomly initialised torchaudio Conformer (sizes default to TINY) run in eval mode on random inputs.

    Every 1-D parameter (norm scales/shifts, biases) and the batch-norm running statistics are set to random
    non-trivial values, so a converter that drops or transposes any of them cannot match by accident.
    Returns {"state/<key>": array, "inputs": f32[B, T, D], "lengths": i32[B], "outputs": f32[B, T, D],
    "num_heads": i32[]} with T = max(lengths).
    """
    import torch
    import torchaudio

    sizes = {**TINY, **sizes}
    torch.manual_seed(seed)
    model = torchaudio.models.Conformer(
        **sizes, dropout=0.1, use_group_norm=use_group_norm, convolution_first=convolution_first
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                centre = 1.0 if name.endswith("weight") else 0.0  # norm scales around 1, shifts/biases around 0
                param.copy_(centre + 0.3 * torch.randn_like(param))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.5 * torch.randn_like(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand_like(module.running_var) * 1.5)
                module.num_batches_tracked.fill_(100)
    model.eval()
    lengths_t = torch.tensor(lengths, dtype=torch.int32)
    inputs = torch.randn(len(lengths), max(lengths), sizes["input_dim"])
    with torch.no_grad():
        outputs, _ = model(inputs, lengths_t)
    reference = {f"state/{key}": value.detach().cpu().numpy() for key, value in model.state_dict().items()}
    reference.update(
        inputs=inputs.numpy(),
        lengths=lengths_t.numpy(),
        outputs=outputs.numpy(),
        num_heads=np.asarray(sizes["num_heads"], np.int32),
    )
    return reference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="npz path to write")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the first variant (then +1, +2)")
    args = parser.parse_args()
    arrays = {}
    for offset, (prefix, flags) in enumerate(VARIANTS.items()):
        reference = torchaudio_reference(**flags, seed=args.seed + offset)
        arrays.update({f"{prefix}/{key}": value for key, value in reference.items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.out} ({os.path.getsize(args.out) / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
