"""Token sampling on the device, reproducible without per-request state.

Each draw's uniform number is a hash of (seed, position): a request that is preempted
and recomputed, or whose executor restarts, draws exactly the same tokens again, and
the batch it happens to share a step with changes nothing. All rows are processed in
one vectorised pass; only the uniforms are made on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) fixed by the seed and the position of the token drawn."""
    return (splitmix64(splitmix64(seed & _MASK64) ^ position) >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class RowSampling:
    temperature: float
    top_p: float
    top_k: int
    seed: int
    position: int  # position of the token being drawn
    logprobs: int = -1  # -1: none; N >= 0: the chosen token's and the top N
    banned: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    prompt_ids: tuple[int, ...] = ()  # what the penalties count (sent when one is on)
    output_ids: tuple[int, ...] = ()

    @property
    def processed(self) -> bool:
        return bool(
            self.banned
            or self.logit_bias
            or self.repetition_penalty not in (0.0, 1.0)
            or self.frequency_penalty
            or self.presence_penalty
        )


@dataclass(frozen=True)
class RowLogprobs:
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


def process(logits: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
    """The logits the draw sees, as vLLM orders the steps: banned tokens (min_tokens)
    out, logit_bias added, then the repetition penalty (HF's: a seen token's logit
    divided by it if positive, multiplied if negative, over prompt and output), then
    OpenAI's frequency and presence penalties (minus f x count and p x [count > 0], over
    the output). Rows that ask for none of it are left as they are, and so is the input."""
    todo = [i for i, r in enumerate(rows) if r.processed]
    if not todo:
        return logits
    logits = logits.clone()
    dev, vocab = logits.device, logits.shape[-1]
    for i in todo:
        r, row = rows[i], logits[i]
        if r.banned:
            row[torch.tensor(r.banned, device=dev)] = float("-inf")
        if r.logit_bias:
            ids = torch.tensor([k for k, _ in r.logit_bias], device=dev)
            row.index_add_(0, ids, torch.tensor([v for _, v in r.logit_bias], device=dev))
        if r.repetition_penalty not in (0.0, 1.0):
            seen = torch.tensor(
                sorted({*r.prompt_ids, *r.output_ids}), device=dev, dtype=torch.long
            )
            if seen.numel():
                x = row[seen]
                row[seen] = torch.where(x > 0, x / r.repetition_penalty, x * r.repetition_penalty)
        if (r.frequency_penalty or r.presence_penalty) and r.output_ids:
            out = torch.tensor(r.output_ids, device=dev, dtype=torch.long)
            counts = torch.bincount(out, minlength=vocab).to(row.dtype)
            row -= r.frequency_penalty * counts + r.presence_penalty * (counts > 0).to(row.dtype)
    return logits


def sample(logits: torch.Tensor, rows: list[RowSampling]) -> list[int]:
    """logits: (S, vocab) fp32. Greedy rows take the argmax; the rest sample."""
    logits = process(logits, rows)
    out = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if r.temperature > 0]
    if sampled:
        dev = logits.device
        idx = torch.tensor(sampled, device=dev)
        temps = torch.tensor([rows[i].temperature for i in sampled], device=dev)
        top_p = torch.tensor([rows[i].top_p for i in sampled], device=dev)
        vocab = logits.shape[-1]
        top_k = torch.tensor(
            [rows[i].top_k if rows[i].top_k > 0 else vocab for i in sampled], device=dev
        )
        u = torch.tensor(
            [uniform(rows[i].seed, rows[i].position) for i in sampled],
            device=dev,
            dtype=torch.float64,
        )
        scaled = logits.index_select(0, idx) / temps[:, None]
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=dev)[None, :]
        sorted_logits = sorted_logits.masked_fill(rank >= top_k[:, None], float("-inf"))
        probs = sorted_logits.softmax(dim=-1).double()
        # top-p keeps the smallest prefix whose mass reaches p (always the first token).
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p[:, None].double(), 0.0)
        cdf = probs.cumsum(dim=-1)
        target = u * cdf[:, -1]
        pick = torch.searchsorted(cdf, target[:, None], right=True).clamp_(max=vocab - 1)
        out[idx] = order.gather(1, pick)[:, 0]
    return out.tolist()


def logprobs(
    logits: torch.Tensor, rows: list[RowSampling], tokens: list[int]
) -> list[RowLogprobs | None]:
    """log_softmax of the raw fp32 logits (before temperature, top-k and top-p, as
    vLLM returns them) at each chosen token and the top N, for the rows that ask."""
    asked = [i for i, r in enumerate(rows) if r.logprobs >= 0]
    out: list[RowLogprobs | None] = [None] * len(rows)
    if not asked:
        return out
    dev = logits.device
    idx = torch.tensor(asked, device=dev)
    lp = torch.log_softmax(logits.index_select(0, idx).float(), dim=-1)
    chosen = lp.gather(1, torch.tensor([[tokens[i]] for i in asked], device=dev))[:, 0]
    n = max(rows[i].logprobs for i in asked)
    top_lp, top_ids = lp.topk(n, dim=-1) if n else (lp[:, :0], lp[:, :0].long())
    chosen, top_lp, top_ids = chosen.tolist(), top_lp.tolist(), top_ids.tolist()
    for j, i in enumerate(asked):
        k = rows[i].logprobs
        out[i] = RowLogprobs(chosen[j], top_ids[j][:k], top_lp[j][:k])
    return out
