"""Python client for the APEX daemon: generation (streamed or not), model info, admin."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from apex.v1 import admin_pb2, admin_pb2_grpc, generation_pb2, generation_pb2_grpc

from common.grpc_server import client_channel

DEFAULT_ADDRESS = "127.0.0.1:50051"

FINISH_REASONS = {
    generation_pb2.FINISH_REASON_UNSPECIFIED: None,
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_EOS: "eos",
    generation_pb2.FINISH_REASON_STOP_TOKEN: "stop_token",
    generation_pb2.FINISH_REASON_STOP_STRING: "stop_string",
    generation_pb2.FINISH_REASON_ABORTED: "aborted",
}


def sampling_params(
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    logprobs: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    repetition_penalty: float | None = None,
    logit_bias: dict[int, float] | None = None,
    min_tokens: int | None = None,
) -> generation_pb2.SamplingParams:
    """Only the arguments given are set; the server's defaults fill the rest."""
    given: dict[str, Any] = {
        k: v
        for k, v in dict(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            max_tokens=max_tokens,
            logprobs=logprobs,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repetition_penalty=repetition_penalty,
            min_tokens=min_tokens,
        ).items()
        if v is not None
    }
    return generation_pb2.SamplingParams(
        **given,
        stop=list(stop),
        stop_token_ids=list(stop_token_ids),
        ignore_eos=ignore_eos,
        logit_bias=logit_bias or {},
    )


Prompt = str | Sequence[int] | Sequence[dict]


def generate_request(
    prompt: Prompt, request_id: str = "", **sampling: Any
) -> generation_pb2.GenerateRequest:
    """prompt: text, token ids, or a conversation ([{"role": ..., "content": ...}], which
    the server renders with the model's chat template)."""
    msg = generation_pb2.GenerateRequest(
        request_id=request_id, sampling=sampling_params(**sampling)
    )
    if isinstance(prompt, str):
        msg.text = prompt
    elif prompt and isinstance(prompt[0], dict):
        msg.chat.messages.extend(
            generation_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in prompt
        )
    else:
        msg.token_ids.ids.extend(prompt)
    return msg


class ApexClient:
    """token: sent as 'authorization: Bearer <token>' (the daemon's generation or admin
    token); tls_ca: PEM file of the CA that signed the daemon's certificate (TLS)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.tls_ca = tls_ca
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.channel = client_channel(address, tls_ca)
        self.generation = generation_pb2_grpc.GenerationStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def __enter__(self) -> ApexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate_stream(
        self, prompt: Prompt, request_id: str = "", **sampling: Any
    ) -> Iterator[generation_pb2.GenerateResponse]:
        """Yields one message per step; the last has finish_reason and usage. Breaking
        out of the loop (or calling .cancel() on the returned iterator) aborts it."""
        return self.generation.Generate(
            generate_request(prompt, request_id, **sampling),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def generate(
        self, prompt: Prompt, request_id: str = "", **sampling: Any
    ) -> generation_pb2.GenerateResult:
        return self.generation.GenerateUnary(
            generate_request(prompt, request_id, **sampling),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def abort(self, request_id: str) -> bool:
        reply = self.generation.Abort(
            generation_pb2.AbortRequest(request_id=request_id),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return reply.found

    def model_info(self) -> generation_pb2.ModelInfo:
        return self.generation.GetModelInfo(
            generation_pb2.ModelInfoRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def status(self) -> admin_pb2.StatusResponse:
        return self.admin.GetStatus(
            admin_pb2.StatusRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def list_requests(self) -> list[admin_pb2.RequestInfo]:
        return list(
            self.admin.ListRequests(
                admin_pb2.ListRequestsRequest(), timeout=self.timeout, metadata=self.metadata
            ).requests
        )

    def drain(self) -> int:
        reply = self.admin.Drain(
            admin_pb2.DrainRequest(), timeout=self.timeout, metadata=self.metadata
        )
        return reply.in_flight

    def migrate(self, request_id: str, tier: str) -> bool:
        tiers = {"gpu": admin_pb2.KV_TIER_GPU, "cpu": admin_pb2.KV_TIER_CPU}
        reply = self.admin.Migrate(
            admin_pb2.MigrateRequest(request_id=request_id, tier=tiers[tier]),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return reply.found

    def policy(
        self, name: str = "", tpot_slo_ms: float = 0.0, ttft_slo_s: float = 0.0
    ) -> admin_pb2.PolicyInfo:
        """Reads the policy; with a name, switches to it from the next iteration (a
        bound of 0 keeps the one in force)."""
        return self.admin.Policy(
            admin_pb2.PolicyRequest(name=name, tpot_slo_ms=tpot_slo_ms, ttft_slo_s=ttft_slo_s),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def trace(self, limit: int = 20) -> list[admin_pb2.IterationTrace]:
        """The last iterations, newest first: strategy, rows, predicted and measured ms."""
        reply = self.admin.Trace(
            admin_pb2.TraceRequest(limit=limit), timeout=self.timeout, metadata=self.metadata
        )
        return list(reply.iterations)

    def admin_abort(self, request_id: str) -> bool:
        reply = self.admin.Abort(
            generation_pb2.AbortRequest(request_id=request_id),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return reply.found
