"""Turns a GenerateRequest into a Request, or an error that names the offending field.

Everything a client sends passes here before the engine sees it; nothing below this
line trusts user input less, and nothing here uses `assert`.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import dataclass

from apex.v1 import generation_pb2

from scheduler.api.chat_template import ROLES, ChatTemplate, Message, TemplateError
from scheduler.engine.detokenizer import TextTokenizer
from scheduler.types import Request, SamplingConfig

MAX_REQUEST_ID = 256
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TEMPERATURE = 1e4
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries


class InvalidRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    vocab_size: int


def build_request(
    msg: generation_pb2.GenerateRequest,
    tokenizer: TextTokenizer,
    limits: Limits,
    template: ChatTemplate | None = None,
) -> Request:
    request_id = msg.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidRequest("request_id", f"must be printable and at most {MAX_REQUEST_ID} chars")
    prompt_ids = prompt_tokens(msg, tokenizer, limits, template)
    sampling = sampling_config(msg.sampling, len(prompt_ids), limits)
    return Request(request_id=request_id, prompt_ids=prompt_ids, sampling=sampling)


def prompt_tokens(
    msg: generation_pb2.GenerateRequest,
    tokenizer: TextTokenizer,
    limits: Limits,
    template: ChatTemplate | None = None,
) -> list[int]:
    kind = msg.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequest("prompt", "one of prompt text, token_ids or chat is required")
    if kind == "text":
        return text_prompt(msg.text, "text", tokenizer, limits)
    if kind == "chat":
        add = msg.chat.add_generation_prompt if msg.chat.HasField("add_generation_prompt") else True
        messages = [Message(m.role, m.content) for m in msg.chat.messages]
        return chat_tokens(template, messages, add, tokenizer, limits, "chat.messages")
    return id_prompt(list(msg.token_ids.ids), "token_ids", limits)


def chat_tokens(
    template: ChatTemplate | None,
    messages: list[Message],
    add_generation_prompt: bool,
    tokenizer: TextTokenizer,
    limits: Limits,
    field: str = "messages",
) -> list[int]:
    """A conversation rendered with the chat template, tokenized without a BOS of our
    own (the template writes it)."""
    if template is None:
        raise InvalidRequest(
            field, "the model has no chat template; start the server with --chat-template"
        )
    if not messages:
        raise InvalidRequest(field, "at least one message is required")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidRequest(f"{field}[{i}].role", f"must be one of {', '.join(ROLES)}")
    try:
        text = template.render(messages, add_generation_prompt)
    except TemplateError as e:
        raise InvalidRequest(field, str(e)) from e
    return text_prompt(text, field, tokenizer, limits, special=False)


def text_prompt(
    text: str, field: str, tokenizer: TextTokenizer, limits: Limits, special: bool = True
) -> list[int]:
    """Tokenize a prompt (BOS added unless `special` is off: a chat template writes its
    own), refusing an empty one or one past the context."""
    room = limits.max_model_len - 1  # at least one token must fit after the prompt
    if not text:
        raise InvalidRequest(field, "the prompt must not be empty")
    if len(text) > room * tokenizer.max_token_chars:
        raise InvalidRequest(field, f"the prompt is longer than the context ({room} tokens)")
    return fits(tokenizer.encode(text, special), field, limits)


def id_prompt(ids: list[int], field: str, limits: Limits) -> list[int]:
    if not ids:
        raise InvalidRequest(field, "the prompt must not be empty")
    for i, t in enumerate(ids):
        if not 0 <= t < limits.vocab_size:
            raise InvalidRequest(
                f"{field}[{i}]", f"{t} is outside the vocabulary [0, {limits.vocab_size})"
            )
    return fits(ids, field, limits)


def fits(ids: list[int], field: str, limits: Limits) -> list[int]:
    if len(ids) > limits.max_model_len - 1:
        raise InvalidRequest(
            field,
            f"the prompt is {len(ids)} tokens; the context holds {limits.max_model_len} "
            "including at least one generated token",
        )
    return ids


def sampling_config(
    sp: generation_pb2.SamplingParams, prompt_len: int, limits: Limits
) -> SamplingConfig:
    def given(name: str):
        return getattr(sp, name) if sp.HasField(name) else None

    return make_sampling(
        prompt_len,
        limits,
        temperature=given("temperature"),
        top_p=given("top_p"),
        top_k=given("top_k"),
        seed=given("seed"),
        max_tokens=given("max_tokens"),
        stop=list(sp.stop),
        stop_token_ids=list(sp.stop_token_ids),
        ignore_eos=sp.ignore_eos,
        logprobs=given("logprobs"),
        presence_penalty=given("presence_penalty"),
        frequency_penalty=given("frequency_penalty"),
        repetition_penalty=given("repetition_penalty"),
        logit_bias=dict(sp.logit_bias),
        min_tokens=given("min_tokens"),
    )


def make_sampling(
    prompt_len: int,
    limits: Limits,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    ignore_eos: bool = False,
    logprobs: int | None = None,
    logprobs_field: str = "logprobs",
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    repetition_penalty: float | None = None,
    logit_bias: dict[int, float] | None = None,
    min_tokens: int | None = None,
    include_stop_str: bool = False,
) -> SamplingConfig:
    """Sampling settings from any API's fields (None: the default), each checked and
    named on error as the field it came from."""
    temperature = 1.0 if temperature is None else temperature
    if not math.isfinite(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(
            "temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {temperature}"
        )
    top_p = 1.0 if top_p is None else top_p
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidRequest("top_p", f"must be in (0, 1], got {top_p}")
    top_k = 0 if top_k is None else top_k
    if top_k < -1:
        raise InvalidRequest("top_k", f"must be >= 0 (0 or -1 disables it), got {top_k}")
    room = limits.max_model_len - prompt_len
    max_tokens = room if max_tokens is None else max_tokens
    if max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be >= 1, got {max_tokens}")
    if max_tokens > room:
        raise InvalidRequest(
            "max_tokens",
            f"{max_tokens} with a {prompt_len}-token prompt exceeds the context of "
            f"{limits.max_model_len}; at most {room}",
        )
    stop = stop or []
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidRequest("stop", f"at most {MAX_STOP_STRINGS} stop strings")
    for i, s in enumerate(stop):
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")
    stop_token_ids = stop_token_ids or []
    if len(stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} ids")
    for i, t in enumerate(stop_token_ids):
        if not 0 <= t < limits.vocab_size:
            raise InvalidRequest(
                f"stop_token_ids[{i}]", f"{t} is outside the vocabulary [0, {limits.vocab_size})"
            )
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(logprobs_field, f"must be in [0, {MAX_LOGPROBS}], got {logprobs}")
    for name, value in (
        ("presence_penalty", presence_penalty),
        ("frequency_penalty", frequency_penalty),
    ):
        if value is not None and not (math.isfinite(value) and -2 <= value <= 2):
            raise InvalidRequest(name, f"must be in [-2, 2], got {value}")
    repetition_penalty = 1.0 if repetition_penalty is None else repetition_penalty
    if not (math.isfinite(repetition_penalty) and 0 < repetition_penalty <= 100):
        raise InvalidRequest("repetition_penalty", f"must be in (0, 100], got {repetition_penalty}")
    bias = check_logit_bias(logit_bias or {}, limits)
    min_tokens = 0 if min_tokens is None else min_tokens
    if not 0 <= min_tokens <= max_tokens:
        raise InvalidRequest(
            "min_tokens", f"must be in [0, max_tokens={max_tokens}], got {min_tokens}"
        )
    return SamplingConfig(
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=max(top_k, 0),
        # Unseeded requests get a seed of their own here, so that even they sample the
        # same tokens again if preempted and recomputed.
        seed=secrets.randbits(63) if seed is None else seed,
        max_tokens=int(max_tokens),
        stop=tuple(stop),
        include_stop_str=include_stop_str,
        stop_token_ids=frozenset(stop_token_ids),
        ignore_eos=ignore_eos,
        logprobs=logprobs,
        presence_penalty=float(presence_penalty or 0.0),
        frequency_penalty=float(frequency_penalty or 0.0),
        repetition_penalty=float(repetition_penalty),
        logit_bias=bias,
        min_tokens=int(min_tokens),
    )


def check_logit_bias(bias: dict, limits: Limits) -> tuple[tuple[int, float], ...]:
    """Token ids (OpenAI sends them as strings) to biases in [-100, 100]."""
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest("logit_bias", f"at most {MAX_LOGIT_BIAS} entries")
    out = []
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidRequest("logit_bias", f"{key!r} is not a token id") from None
        if not 0 <= token < limits.vocab_size:
            raise InvalidRequest(
                "logit_bias", f"{token} is outside the vocabulary [0, {limits.vocab_size})"
            )
        if not (math.isfinite(value) and -100 <= value <= 100):
            raise InvalidRequest("logit_bias", f"the bias of {token} must be in [-100, 100]")
        out.append((token, float(value)))
    return tuple(sorted(out))
