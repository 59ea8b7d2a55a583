"""When a request's output ends, and which tokens it may not draw before min_tokens."""

from __future__ import annotations

from scheduler.types import FinishReason, Request


def banned_tokens(req: Request, eos_token_ids: frozenset[int]) -> tuple[int, ...]:
    """Until min_tokens are out, the tokens that would end the output are not drawn."""
    sp = req.sampling
    if len(req.output_ids) >= sp.min_tokens:
        return ()
    eos = () if sp.ignore_eos else eos_token_ids
    return tuple(sorted({*eos, *sp.stop_token_ids}))


def check_stop(
    req: Request, tok: int, eos_token_ids: frozenset[int], max_model_len: int
) -> tuple[FinishReason | None, str]:
    """(why the output ends with `tok`, the stop it matched), or (None, "")."""
    sp = req.sampling
    if len(req.output_ids) < sp.min_tokens:  # the draw cannot have taken a stop token
        return None, ""
    if tok in sp.stop_token_ids:
        return FinishReason.STOP_TOKEN, str(tok)
    if not sp.ignore_eos and tok in eos_token_ids:
        return FinishReason.EOS, str(tok)
    if len(req.output_ids) >= sp.max_tokens or req.num_tokens >= max_model_len:
        return FinishReason.LENGTH, ""
    return None, ""
