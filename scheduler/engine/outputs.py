"""What the engine hands a request's handler: text deltas, then a final one or an error."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from scheduler.engine.detokenizer import IncrementalDetokenizer
from scheduler.types import ErrorCode, FinishReason, Request, TokenLogprob


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    total_time_s: float
    preemptions: int


@dataclass(frozen=True)
class OutputDelta:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    matched_stop: str = ""
    usage: Usage | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, if asked


@dataclass(frozen=True)
class EngineError:
    """Ends a stream with a status instead of an output."""

    code: ErrorCode
    message: str


@dataclass
class RequestStream:
    """One live request as the engine serves it; the engine's registry holds these."""

    request: Request
    detok: IncrementalDetokenizer
    queue: asyncio.Queue[OutputDelta | EngineError] = field(default_factory=asyncio.Queue)
    sent_tokens: int = 0
    last_token_at: float | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per output token, if asked


class Rejected(Exception):
    """A request refused at intake; the subclass says why."""


class QueueFull(Rejected):
    pass


class Draining(Rejected):
    pass


class DuplicateRequest(Rejected):
    pass
