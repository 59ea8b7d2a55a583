"""The OpenAI-compatible request bodies, as typed models: pydantic validates, we decide.

Unknown fields are refused (`extra="forbid"`), so a client that sends `tools` or
`response_format` learns that this server does not do them instead of getting an answer
that silently ignored them. Fields of the API that the engine does not do yet are known
here and refused by `unsupported()` with the same kind of message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 64  # samples per prompt: each is a running request of its own


# The SGLang fields routers add, at the value this server behaves as: special tokens
# skipped, no hidden states, a new assistant turn, and no reasoning parser (so the
# reasoning switches change nothing at these values). no_stop_trim is served.
ROUTER_DEFAULTS = {
    "skip_special_tokens": True,
    "return_hidden_states": False,
    "continue_final_message": False,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "include_reasoning": True,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class SamplingFields(Strict):
    """What chat and completions share: sampling, stops, vLLM's extra fields."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted and ignored, as the API allows
    # vLLM's extra fields
    top_k: int | None = None
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    return_token_ids: bool = False  # vLLM: the prompt's and each choice's token ids
    include_stop_str_in_output: bool = False  # vLLM: the matched stop string stays
    # The routers in front of a replica (vllm-router, sglang-router) parse a request
    # into their own model and send it on with these SGLang fields set to their
    # defaults. Each is taken at that default, which is what this server does anyway,
    # and refused at any other value (no_stop_trim is served either way).
    no_stop_trim: bool = False  # SGLang's include_stop_str_in_output
    skip_special_tokens: bool | None = None
    return_hidden_states: bool | None = None
    continue_final_message: bool | None = None
    separate_reasoning: bool | None = None
    stream_reasoning: bool | None = None
    include_reasoning: bool | None = None

    def keeps_stop(self) -> bool:
        return self.include_stop_str_in_output or self.no_stop_trim

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logprob_count(self) -> tuple[int | None, str]:
        raise NotImplementedError

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to something the engine does not do yet."""
        for name, default in ROUTER_DEFAULTS.items():
            value = getattr(self, name)
            if value is not None and value != default:
                return name, f"only {str(default).lower()} is supported"
        return None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # vLLM's

    def unsupported(self) -> tuple[str, str] | None:
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "needs logprobs: true"
        return super().unsupported()

    def logprob_count(self) -> tuple[int | None, str]:
        """(top N or None for no log-probabilities, the field that says so)."""
        if not self.logprobs:
            return None, "logprobs"
        return (self.top_logprobs or 0), "top_logprobs"

    def token_limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # the Completions API's default
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def logprob_count(self) -> tuple[int | None, str]:
        return self.logprobs, "logprobs"

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "not supported"
        if self.best_of not in (None, 1):
            return "best_of", "only best_of=1 is supported"
        if self.suffix:
            return "suffix", "not supported"
        return super().unsupported()

    def prompts(self) -> list[str | list[int]]:
        """One prompt per choice: a string, a list of strings, ids, or lists of ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]
