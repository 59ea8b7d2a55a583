"""The public API's contract: sampling, stops, aborts, deadlines, bad input, overload."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from apex.v1 import generation_pb2 as pb

from tests.factories import (
    BIN,
    hf_greedy,
    hf_logprobs,
    hf_processed_greedy,
    idle,
    run,
    running_stack,
    wait_until,
)

PROMPT = [0, 45, 99, 301, 7, 250]


def test_seeded_sampling_is_reproducible(tiny_stack):
    with tiny_stack.client() as c:

        def run(seed):
            return list(
                c.generate(
                    PROMPT,
                    max_tokens=32,
                    temperature=0.9,
                    top_p=0.95,
                    top_k=50,
                    seed=seed,
                    ignore_eos=True,
                ).token_ids
            )

        # The same seed gives the same tokens, alone or sharing batches with others.
        alone = run(1234)
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(run, [1234, 1234, 99, 1234]))
        assert together[0] == together[1] == together[3] == alone
        assert together[2] != alone
        assert run(5) != run(6)


def test_top_k_one_is_greedy(tiny_stack):
    with tiny_stack.client() as c:
        greedy = c.generate(PROMPT, max_tokens=20, temperature=0.0, ignore_eos=True)
        k1 = c.generate(PROMPT, max_tokens=20, temperature=1.5, top_k=1, seed=3, ignore_eos=True)
        assert list(k1.token_ids) == list(greedy.token_ids)


def test_max_tokens_ends_with_length(tiny_stack):
    with tiny_stack.client() as c:
        res = c.generate(PROMPT, max_tokens=9, temperature=0.0, ignore_eos=True)
    assert res.finish_reason == pb.FINISH_REASON_LENGTH
    assert len(res.token_ids) == 9 and res.usage.completion_tokens == 9
    assert res.usage.prompt_tokens == len(PROMPT)
    assert 0 < res.usage.time_to_first_token_s <= res.usage.total_time_s


def test_stop_token_ends_generation_at_first_occurrence(tiny_stack):
    with tiny_stack.client() as c:
        full = list(c.generate(PROMPT, max_tokens=40, temperature=0.0, ignore_eos=True).token_ids)
        stop_id = full[5]
        first = full.index(stop_id)
        res = c.generate(
            PROMPT, max_tokens=40, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_id]
        )
    assert res.finish_reason == pb.FINISH_REASON_STOP_TOKEN
    assert list(res.token_ids) == full[: first + 1]
    assert res.matched_stop == str(stop_id)


def test_stop_string_truncates_text_and_never_streams_it(tiny_stack):
    with tiny_stack.client() as c:
        full = c.generate(PROMPT, max_tokens=60, temperature=0.0, ignore_eos=True).text
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        assert len(stop) == 3
        chunks = list(
            c.generate_stream(PROMPT, max_tokens=60, temperature=0.0, ignore_eos=True, stop=[stop])
        )
    text = "".join(m.text for m in chunks)
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP_STRING
    assert chunks[-1].matched_stop == stop
    assert text == full[: full.index(stop)]
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in chunks[:-1])


def test_stream_deltas_join_to_the_unary_text(tiny_stack):
    with tiny_stack.client() as c:
        unary = c.generate("你好 🎉 Hello", max_tokens=48, temperature=0.0, ignore_eos=True)
        chunks = list(
            c.generate_stream("你好 🎉 Hello", max_tokens=48, temperature=0.0, ignore_eos=True)
        )
    assert "".join(m.text for m in chunks) == unary.text
    assert [t for m in chunks for t in m.token_ids] == list(unary.token_ids)
    assert chunks[-1].usage.completion_tokens == 48


def test_abort_mid_stream_frees_blocks(tiny_stack):
    with tiny_stack.client() as c:
        stream = c.generate_stream(
            PROMPT, request_id="to-abort", max_tokens=1500, temperature=0.0, ignore_eos=True
        )
        got = [next(stream) for _ in range(3)]
        assert c.status().tiers[0].blocks_used > 0
        assert [r.request_id for r in c.list_requests()] == ["to-abort"]
        assert c.abort("to-abort") is True
        rest = list(stream)
        assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
        assert len(got) + len(rest) < 1500
        assert idle(c)
        assert c.abort("to-abort") is False


def test_client_cancel_frees_blocks(tiny_stack):
    with tiny_stack.client() as c:
        stream = c.generate_stream(PROMPT, max_tokens=1500, temperature=0.0, ignore_eos=True)
        next(stream)
        stream.cancel()
        assert wait_until(lambda: idle(c)), c.status()


def test_deadline_aborts_the_request(tiny_stack):
    with tiny_stack.client(timeout=0.3) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.generate(PROMPT, max_tokens=1900, temperature=0.0, ignore_eos=True)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with tiny_stack.client() as c:
        assert wait_until(lambda: idle(c)), c.status()


INVALID = [
    ("empty text", dict(prompt=""), "text"),
    ("empty ids", dict(prompt=[]), "token_ids"),
    ("negative id", dict(prompt=[0, -4]), "token_ids[1]"),
    ("id past vocab", dict(prompt=[0, 10**6]), "token_ids[1]"),
    ("negative max_tokens", dict(max_tokens=-1), "max_tokens"),
    ("zero max_tokens", dict(max_tokens=0), "max_tokens"),
    ("huge max_tokens", dict(max_tokens=10**12), "max_tokens"),
    ("top_p zero", dict(top_p=0.0), "top_p"),
    ("top_p above one", dict(top_p=1.5), "top_p"),
    ("top_p nan", dict(top_p=float("nan")), "top_p"),
    ("negative temperature", dict(temperature=-0.5), "temperature"),
    ("infinite temperature", dict(temperature=float("inf")), "temperature"),
    ("top_k below -1", dict(top_k=-2), "top_k"),
    ("prompt past context", dict(prompt=[0] * 2048), "token_ids"),
    ("text past context", dict(prompt="x" * 10**6), "text"),
    ("stop id past vocab", dict(stop_token_ids=[10**6]), "stop_token_ids[0]"),
    ("empty stop string", dict(stop=[""]), "stop[0]"),
]


@pytest.mark.parametrize(("case", "kwargs", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_get_invalid_argument(tiny_stack, case, kwargs, field):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT)
    with tiny_stack.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.generate(prompt, **kwargs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":"), err.value.details()
        # ...and the daemon keeps serving.
        assert len(c.generate(PROMPT, max_tokens=2, temperature=0.0).token_ids) >= 1


def test_missing_prompt_and_duplicate_id(tiny_stack):
    with tiny_stack.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.generation.GenerateUnary(pb.GenerateRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = c.generate_stream(PROMPT, request_id="dup", max_tokens=1500, ignore_eos=True)
        next(stream)
        with pytest.raises(grpc.RpcError) as err:
            c.generate(PROMPT, request_id="dup", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        stream.cancel()
        assert wait_until(lambda: idle(c))


def test_full_queue_gets_resource_exhausted(models, tmp_path):
    args = ["--max-queue", "2", "--max-num-seqs", "1"]
    with running_stack(models["tiny"], tmp_path, scheduler_args=args) as stack:
        outcomes: list[object] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            with stack.client() as c:
                try:
                    r = c.generate(PROMPT, max_tokens=30, temperature=0.0, ignore_eos=True)
                    out: object = len(r.token_ids)
                except grpc.RpcError as e:
                    out = e.code()
            with lock:
                outcomes.append(out)

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(one, range(10)))
        rejected = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
        completed = [o for o in outcomes if o == 30]
        assert len(rejected) + len(completed) == 10, outcomes
        assert rejected and len(completed) >= 3
        with stack.client() as c:
            assert c.status().rejected_requests == len(rejected)
            assert idle(c)


MALFORMED = [
    # field 2 (text) holding bytes that are not UTF-8
    ("invalid utf-8 in text", b"\x12\x03a\xff\xfe"),
    # a length-delimited field that claims more bytes than the message has
    ("corrupt wire format", b"\x12\x7fabc"),
]


@pytest.mark.parametrize("method", ["GenerateUnary", "Generate"])
def test_malformed_bytes_get_invalid_argument_and_no_traceback(tiny_stack, method):
    """What a generic client (grpcurl, a hand-rolled stub) may send: raw bytes."""
    with grpc.insecure_channel(tiny_stack.address) as ch:
        for name, payload in MALFORMED:
            if method == "Generate":
                call = ch.unary_stream(f"/apex.v1.Generation/{method}")
                with pytest.raises(grpc.RpcError) as err:
                    list(call(payload, timeout=10))
            else:
                call = ch.unary_unary(f"/apex.v1.Generation/{method}")
                with pytest.raises(grpc.RpcError) as err:
                    call(payload, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "could not be parsed" in err.value.details()
    with tiny_stack.client() as c:  # and it keeps serving
        assert len(c.generate(PROMPT, max_tokens=2, temperature=0.0).token_ids) >= 1
    logs = tiny_stack.logs()
    assert "Traceback" not in logs and "DecodeError" not in logs.replace("DecodeError:", "")
    # one line per 10 s at most, however many arrive
    assert 1 <= logs.count("refused a malformed request") <= 2


CHAT = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Tell me about the robot."},
]


def test_chat_prompts_use_the_models_template_exactly(tiny_stack, models):
    """The gRPC chat variant: rendered by the daemon as transformers'
    apply_chat_template renders it (one BOS), then greedy equals transformers'."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(models["tiny"])).apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=True
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with tiny_stack.client() as c:
        res = c.generate(CHAT, max_tokens=16, temperature=0.0, ignore_eos=True)
        assert res.usage.prompt_tokens == len(ids) and ids.count(ids[0]) == 1
        assert list(res.token_ids) == hf_greedy(models["tiny"], ids, 16)
        with pytest.raises(grpc.RpcError) as err:
            c.generate([{"role": "wizard", "content": "hi"}], max_tokens=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("chat.messages[0].role:")


def test_apexctl_chat_streams_the_reply(tiny_stack, models):
    r = run(
        str(BIN / "apexctl"),
        "--address",
        tiny_stack.address,
        "chat",
        "Tell me about the robot.",
        "--system",
        "You answer in one line.",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    with tiny_stack.client() as c:
        expected = c.generate(CHAT, max_tokens=16, temperature=0.0, ignore_eos=True)
    assert json.loads(r.stdout)["token_ids"] == list(expected.token_ids)


def test_logprobs_of_greedy_and_sampled_tokens(tiny_stack, models):
    """The raw model distribution at each token drawn (temperature and top-k change
    the draw, not the reported distribution), and the top N ids, as transformers has
    them."""
    prompt = [0, 45, 99, 301, 7, 250]
    with tiny_stack.client() as c:
        for sampling in (dict(temperature=0.0), dict(temperature=0.9, top_k=20, seed=3)):
            res = c.generate(prompt, max_tokens=10, logprobs=4, ignore_eos=True, **sampling)
            chosen, top, top_ids = hf_logprobs(models["tiny"], prompt, list(res.token_ids), 4)
            assert len(res.logprobs) == 10
            for i, lp in enumerate(res.logprobs):
                assert lp.logprob == pytest.approx(chosen[i], abs=1e-4)
                assert list(lp.top_token_ids) == top_ids[i]
                assert list(lp.top_logprobs) == pytest.approx(top[i], abs=1e-4)
        streamed = [
            lp
            for d in c.generate_stream(prompt, max_tokens=6, logprobs=0, temperature=0.0)
            for lp in d.logprobs
        ]
        assert len(streamed) == 6 and all(not lp.top_token_ids for lp in streamed)
        with pytest.raises(grpc.RpcError) as err:
            c.generate(prompt, max_tokens=2, logprobs=21)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("logprobs:")


def test_penalties_bias_and_min_tokens_over_grpc(tiny_stack, models):
    prompt = [0, 45, 99, 301, 7, 250]
    plain = hf_greedy(models["tiny"], prompt, 10)
    bias = {plain[0]: -100.0, plain[2]: 6.0}
    with tiny_stack.client() as c:
        res = c.generate(
            prompt,
            max_tokens=10,
            temperature=0.0,
            ignore_eos=True,
            frequency_penalty=0.7,
            repetition_penalty=1.2,
            logit_bias=bias,
        )
        expected = hf_processed_greedy(
            models["tiny"], prompt, 10, frequency=0.7, repetition=1.2, bias=bias
        )
        assert list(res.token_ids) == expected
        res = c.generate(
            prompt,
            max_tokens=10,
            temperature=0.0,
            ignore_eos=True,
            stop_token_ids=[plain[0]],
            min_tokens=4,
        )
        assert len(res.token_ids) >= 4 and plain[0] not in list(res.token_ids)[:4]
        for bad, field in (
            (dict(presence_penalty=3.0), "presence_penalty"),
            (dict(repetition_penalty=0.0), "repetition_penalty"),
            (dict(logit_bias={10**7: 1.0}), "logit_bias"),
            (dict(min_tokens=5, max_tokens=2), "min_tokens"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                c.generate(prompt, **bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field + ":"), err.value.details()
