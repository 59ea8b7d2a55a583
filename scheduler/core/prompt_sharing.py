"""The samples of one prompt (`n` > 1) share its KV blocks on the GPU tier.

The first sample admitted prefills the prompt as any request does. The others wait a
step, then take one more hold on each whole block of the prompt that sample computed,
and prefill only what follows: at least the prompt's last token, whose logits they
draw their first token from. No executor ever writes a shared block: every write lands
past the prompt's last whole block. A sample that moves tiers copies what it holds and
drops its holds, so sharing lives on the GPU tier only.
"""

from __future__ import annotations

from scheduler.types import Request, Status, Tier


def prompt_blocks(req: Request, admitted: list[Request], block_size: int) -> list[int] | None:
    """The whole prompt blocks another sample of `req` holds computed on the GPU ([]
    when none does); None when a sample of it is prefilled in this very plan or is
    still prefilling by chunks, so that `req` waits and shares it instead of computing
    the prompt again."""
    if req.siblings is None or len(req.prompt_ids) <= block_size:
        return []  # nothing to share: no whole block before the last prompt token
    for other in req.siblings:
        if other is req:
            continue
        if any(other is a for a in admitted):
            return None
        if other.status is Status.RUNNING and other.tier is Tier.GPU:
            if other.num_computed < len(req.prompt_ids):
                return None  # its prompt is still coming in by chunks: wait for it
            return other.block_table[: (len(req.prompt_ids) - 1) // block_size]
    return []


def lends_prompt(req: Request) -> bool:
    """Whether a sample of its prompt still waits to share its prompt blocks: it stays
    on the GPU tier until then."""
    return req.siblings is not None and any(s.status is Status.WAITING for s in req.siblings)


def prefilling(req: Request) -> bool:
    """Whether part of its prompt is still to be computed (chunked prefill): it stays on
    the GPU tier, where prompts are computed, until the last chunk is in."""
    return req.num_computed < req.num_tokens - 1
