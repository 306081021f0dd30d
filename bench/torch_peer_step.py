"""The toy supervised model in PyTorch: its train step time, RNN-T (+ CTC) and CTC-only, beside bench/train_step.py.

Run with the torch side venv (bench/README.md), normally through `bench/train_step.py --compare-torch=PYTHON`, which
passes the JAX recipe's sizes, batch and lengths; alone:

    .venv-torch/bin/python bench/torch_peer_step.py [--model_dim=144 ...] [--repeats=10] [--threads=N]

The same model as gin/models/toy.gin, in torch and torchaudio pieces: log-mel (torchaudio MelSpectrogram, 25 ms /
10 ms, 80 HTK mels) + per-utterance normalisation + SpecAugment (2 x 15 mel channels, 2 x 5% of the frames), two
stride-2 3x3 convolutions + ReLU (`subsampling_channels`) then Linear to D (40 ms frames), torchaudio's Conformer
(`num_layers` = the JAX speech + shared layers; plain multi-head attention where the JAX model has relative
positions), an embedding + LSTM prediction network, the additive tanh joint, torchaudio.functional.rnnt_loss over the
full [B, T, U+1, V] logits (the JAX toy recipe trains the pruned loss), an auxiliary CTC head (`ctc_weight`), AdamW with
global-norm clipping at 1. The CTC-only variant runs the same encoder with the CTC head alone. Losses are per token
(sum over the batch / its tokens), like the JAX objectives. Prints one JSON line last.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torchaudio
from torch import nn
from torch.nn import functional as F


class Subsampling(nn.Module):
    """log-mel [B, T0, 80] -> [B, T0 // 4, D]: stride-2 3x3 convolutions + ReLU, time padded on the left only."""

    def __init__(self, channels: int, factor: int, dim: int, mels: int = 80):
        super().__init__()
        stages = round(math.log2(factor))
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2) for i in range(stages)])
        freq = mels
        for _ in range(stages):
            freq = (freq + 2 - 3) // 2 + 1
        self.project = nn.Linear(channels * freq, dim)

    def forward(self, x, lengths):
        x = x.unsqueeze(1)  # [B, 1, T, F]
        for conv in self.convs:
            x = F.relu(conv(F.pad(x, (1, 1, 1, 0))))  # (freq left, freq right, time left, time right)
            lengths = lengths // 2
        b, c, t, f = x.shape
        return self.project(x.permute(0, 2, 1, 3).reshape(b, t, c * f)), lengths


class PeerModel(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=16000, n_fft=512, win_length=400, hop_length=160, center=False, n_mels=80, mel_scale="htk"
        )
        self.subsampling = Subsampling(a.subsampling_channels, a.subsampling_factor, a.model_dim)
        self.dropout = nn.Dropout(a.dropout)
        self.conformer = torchaudio.models.Conformer(
            input_dim=a.model_dim,
            num_heads=a.num_heads,
            ffn_dim=a.ff_dim,
            num_layers=a.num_layers,
            depthwise_conv_kernel_size=a.conv_kernel_size,
            dropout=a.dropout,
        )
        self.ctc_head = nn.Linear(a.model_dim, a.vocab_size)
        self.embedding = nn.Embedding(a.vocab_size, a.prediction_embed_dim)
        self.lstm = nn.LSTM(a.prediction_embed_dim, a.prediction_dim, batch_first=True)
        self.prediction_proj = nn.Linear(a.prediction_dim, a.joint_dim)
        self.encoder_proj = nn.Linear(a.model_dim, a.joint_dim)
        self.joint_output = nn.Linear(a.joint_dim, a.vocab_size)

    def encode(self, waveform, waveform_length):
        """Features, SpecAugment, subsampling and Conformer: ([B, T, D], frame lengths)."""
        with torch.no_grad():
            # 56 zeros each side: the 400-sample window centred in the 512-point frame (maestro_jax/frontend.py).
            features = torch.log(self.mel(F.pad(waveform, (56, 56))) + 1e-6).transpose(1, 2)  # [B, T0, 80]
            lengths = torch.clamp((waveform_length - 400) // 160 + 1, min=0)
            valid = (torch.arange(features.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
            count = (lengths[:, None, None] * features.shape[2]).clamp(min=1)
            mean = (features * valid).sum((1, 2), keepdim=True) / count
            var = (((features - mean) * valid) ** 2).sum((1, 2), keepdim=True) / count
            features = ((features - mean) / torch.sqrt(var + 1e-5)) * valid
            if self.training:
                features = features.transpose(1, 2)
                for _ in range(2):
                    features = torchaudio.functional.mask_along_axis_iid(features, 15, 0.0, axis=1)
                max_time = max(1, int(0.05 * features.shape[2]))
                for _ in range(2):
                    features = torchaudio.functional.mask_along_axis_iid(features, max_time, 0.0, axis=2)
                features = features.transpose(1, 2)
        x, frames = self.subsampling(features, lengths)
        frames = frames.clamp(min=1)
        # torchaudio's Conformer masks up to the longest length: cut the padding beyond it.
        x, frames = self.conformer(self.dropout(x[:, : int(frames.max())]), frames)
        return x, frames

    def ctc_loss(self, h, frames, tokens, token_length):
        log_probs = F.log_softmax(self.ctc_head(h), dim=-1).transpose(0, 1)  # [T, B, V]
        return F.ctc_loss(log_probs, tokens, frames, token_length, blank=0, reduction="sum", zero_infinity=True)

    def rnnt_loss(self, h, frames, tokens, token_length):
        tokens = tokens[:, : int(token_length.max())]  # rnnt_loss wants U + 1 = the longest label sequence + 1
        start = F.pad(tokens, (1, 0))  # blank/start, then the labels: U + 1 positions
        pred, _ = self.lstm(self.embedding(start))
        pred = self.prediction_proj(self.dropout(pred))  # [B, U+1, J]
        enc = self.encoder_proj(h)  # [B, T, J]
        logits = self.joint_output(torch.tanh(enc[:, :, None, :] + pred[:, None, :, :]))  # [B, T, U+1, V]
        # rnnt_loss takes raw logits and normalises them itself (fused_log_softmax=True, its default); reduction
        # "sum" so that dividing by the batch's tokens gives the per-token loss of the JAX objectives.
        return torchaudio.functional.rnnt_loss(
            logits, tokens.int(), frames.int(), token_length.int(), blank=0, reduction="sum"
        )


def make_batch(a, generator):
    waveform_length = torch.tensor([int(x) for x in a.waveform_lengths.split(",")])
    token_length = torch.tensor([int(x) for x in a.token_lengths.split(",")])
    b = len(waveform_length)
    waveform = 0.1 * torch.randn(b, a.max_samples, generator=generator)
    waveform[torch.arange(a.max_samples)[None, :] >= waveform_length[:, None]] = 0.0
    tokens = torch.randint(1, a.vocab_size, (b, a.max_tokens), generator=generator)
    tokens[torch.arange(a.max_tokens)[None, :] >= token_length[:, None]] = 0
    return waveform, waveform_length, tokens, token_length


def time_steps(model, batch, a, *, rnnt: bool) -> tuple[list[float], float, dict]:
    """Seconds of each timed train step (after 2 warm-up steps), the first step's loss per token and, for RNN-T, its
    transducer part alone ({"rnnt_only_loss_per_token"})."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01)
    waveform, waveform_length, tokens, token_length = batch
    num_tokens = float(token_length.sum())
    times, first_loss, parts = [], None, {}
    for i in range(a.repeats + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        h, frames = model.encode(waveform, waveform_length)
        if rnnt:
            loss = model.rnnt_loss(h, frames, tokens, token_length)
            if first_loss is None:
                parts["rnnt_only_loss_per_token"] = float(loss.detach()) / num_tokens
            if a.ctc_weight > 0:
                loss = loss + a.ctc_weight * model.ctc_loss(h, frames, tokens, token_length)
        else:
            loss = model.ctc_loss(h, frames, tokens, token_length)
        loss = loss / num_tokens
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if first_loss is None:
            first_loss = float(loss.detach())
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times, first_loss, parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--vocab_size", type=int, default=256)
    add("--model_dim", type=int, default=144)
    add("--num_heads", type=int, default=4)
    add("--ff_dim", type=int, default=576)
    add("--conv_kernel_size", type=int, default=15)
    add("--num_layers", type=int, default=4, help="Conformer layers (JAX: speech + shared)")
    add("--subsampling_channels", type=int, default=64)
    add("--subsampling_factor", type=int, default=4)
    add("--prediction_embed_dim", type=int, default=64)
    add("--prediction_dim", type=int, default=128)
    add("--joint_dim", type=int, default=128)
    add("--dropout", type=float, default=0.1)
    add("--ctc_weight", type=float, default=1.0, help="auxiliary CTC in the RNN-T step (the toy recipe's 1.0)")
    add("--max_samples", type=int, default=72000)
    add("--max_tokens", type=int, default=48)
    add("--waveform_lengths", default="72000,64000,56000,48000,40000,72000,60000,52000")
    add("--token_lengths", default="41,36,32,27,23,41,34,30")
    add("--repeats", type=int, default=10)
    add("--threads", type=int, default=1)
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batch = make_batch(a, generator)
    figures = {"torch": f"torch {torch.__version__}, torchaudio {torchaudio.__version__}", "threads": a.threads}
    for name, rnnt in (("rnnt", True), ("ctc", False)):
        torch.manual_seed(0)
        model = PeerModel(a).train()
        times, loss, parts = time_steps(model, batch, a, rnnt=rnnt)
        figures.update(parts)
        figures[f"{name}_step_seconds"] = statistics.median(times)
        figures[f"{name}_step_min_seconds"] = min(times)
        figures[f"{name}_loss_per_token"] = loss
        figures["parameters"] = sum(p.numel() for p in model.parameters())
        print(f"{name}: median {1e3 * statistics.median(times):.1f} ms, first loss per token {loss:.3f}", flush=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
