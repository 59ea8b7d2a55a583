"""The public API fuzzed: 2,000 random requests, malformed values included.

Every answer is OK or INVALID_ARGUMENT, the daemon stays up, and afterwards no KV block
is held. The context is kept short (32 tokens) so that valid requests end quickly.
"""

from __future__ import annotations

import math

import grpc
import pytest
from apex.v1 import generation_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.grpc_server import check_health
from tests.factories import idle, running_stack, wait_until

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1e-9, 0.5, 1.0, 1.0000001, -1.0, math.nan, math.inf]),
)
HUGE = st.sampled_from([10**4, 10**5, 10**6]).map(lambda n: "ab" * (n // 2))
TEXT = st.one_of(st.text(max_size=120), HUGE, st.just(""), st.just("\x00\ud7ff\U0010ffff"))


def sometimes_bad(good, bad):
    """Two chances in three of a valid value, so both paths are exercised."""
    return st.one_of(good, good, bad)


@st.composite
def requests(draw) -> pb.GenerateRequest:
    msg = pb.GenerateRequest()
    msg.request_id = draw(
        sometimes_bad(
            st.one_of(st.just(""), st.text(alphabet="abcdef0123456789-", max_size=20)),
            st.one_of(st.text(max_size=20), st.text(min_size=257, max_size=300)),
        )
    )
    kind = draw(st.sampled_from(["text", "text", "ids", "ids", "none"]))
    if kind == "text":
        msg.text = draw(sometimes_bad(st.text(min_size=1, max_size=60), TEXT))
    elif kind == "ids":
        msg.token_ids.ids.extend(
            draw(
                sometimes_bad(
                    st.lists(st.integers(2, 600), min_size=1, max_size=20),
                    st.lists(st.one_of(INT32, st.integers(0, 700)), max_size=40),
                )
            )
        )
    sp = msg.sampling
    if draw(st.booleans()):
        sp.temperature = draw(sometimes_bad(st.floats(0, 2, width=32), FLOATS))
    if draw(st.booleans()):
        sp.top_p = draw(sometimes_bad(st.floats(0.015625, 1, width=32), FLOATS))
    if draw(st.booleans()):
        sp.top_k = draw(sometimes_bad(st.integers(-1, 50), INT32))
    if draw(st.booleans()):
        sp.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        sp.max_tokens = draw(sometimes_bad(st.integers(1, 12), INT64))
    sp.stop.extend(
        draw(
            sometimes_bad(
                st.lists(st.text(min_size=1, max_size=5), max_size=3),
                st.lists(
                    st.one_of(st.text(max_size=5), st.text(min_size=250, max_size=300)), max_size=20
                ),
            )
        )
    )
    sp.stop_token_ids.extend(
        draw(
            sometimes_bad(
                st.lists(st.integers(0, 600), max_size=3),
                st.lists(st.one_of(INT32, st.integers(0, 700)), max_size=70),
            )
        )
    )
    sp.ignore_eos = draw(st.booleans())
    return msg


@pytest.fixture(scope="module")
def short_stack(models, tmp_path_factory):
    args = ["--max-model-len", "32"]
    with running_stack(
        models["tiny"], tmp_path_factory.mktemp("fuzz"), scheduler_args=args
    ) as stack:
        yield stack


def test_fuzzed_requests_get_ok_or_invalid_argument(short_stack):
    seen: dict[str, int] = {}
    with short_stack.client(timeout=60) as c:

        @settings(
            max_examples=1000,
            deadline=None,
            database=None,
            derandomize=True,  # the same 1,000 requests on every run
            suppress_health_check=list(HealthCheck),
        )
        @given(requests())
        def one(msg: pb.GenerateRequest) -> None:
            try:
                res = c.generation.GenerateUnary(msg, timeout=60)
                assert res.finish_reason != pb.FINISH_REASON_UNSPECIFIED
                seen["OK"] = seen.get("OK", 0) + 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details(), msg)
                assert ":" in e.details()  # names the field
                seen["INVALID_ARGUMENT"] = seen.get("INVALID_ARGUMENT", 0) + 1

        one()
        assert check_health(short_stack.address)
        assert wait_until(lambda: idle(c), 30)
        assert not c.list_requests()
    assert sum(seen.values()) >= 1000 and seen.get("OK", 0) > 50, seen
