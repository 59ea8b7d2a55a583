"""The OpenAI-compatible HTTP API, through the official openai SDK (and raw HTTP where
the SDK hides what is checked): greedy output equals transformers' on the prompt that
its apply_chat_template makes, errors come in OpenAI's shape naming the field, and a
client that leaves frees its blocks."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import openai
import pytest
from transformers import AutoTokenizer

from tests import openai_shared
from tests.factories import (
    chat_prompt_ids,
    hf_greedy,
    wait_until,
)
from tests.openai_shared import (
    MESSAGES,
    TOKEN,
    client,
    extra,
    labelled,
    name,
    scrape,
)

# the shared stacks, as this file's fixtures `stack` and `cpu_stack`
gpu_stack_fixture = openai_shared.gpu_stack_fixture
cpu_stack_fixture = openai_shared.cpu_stack_fixture


@pytest.mark.parametrize("which", ["stack", "cpu_stack"])
def test_chat_greedy_equals_transformers_whole_and_streamed(which, models, request):
    stack = request.getfixturevalue(which)
    model = models["tiny" if which == "stack" else "tiny-gqa"]
    c, n = client(stack), 24
    kw = dict(model=name(stack), messages=MESSAGES, max_tokens=n, temperature=0)
    body = {"ignore_eos": True, "return_token_ids": True}
    whole = c.chat.completions.create(**kw, extra_body=body)
    expected = hf_greedy(model, chat_prompt_ids(model, MESSAGES), n)
    assert extra(whole.choices[0], "token_ids") == expected
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == n
    assert whole.usage.prompt_tokens == len(chat_prompt_ids(model, MESSAGES))
    chunks = list(
        c.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True}, extra_body=body
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    ids = [t for ch in chunks if ch.choices for t in extra(ch.choices[0], "token_ids")]
    assert text == whole.choices[0].message.content and ids == expected
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n


def test_completions_take_text_and_token_ids(stack, models):
    c, model = client(stack), models["tiny"]
    prompt = [0, 45, 99, 301, 7, 250]
    r = c.completions.create(
        model=name(stack),
        prompt=prompt,
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    assert extra(r.choices[0], "token_ids") == hf_greedy(model, prompt, 16)
    two = c.completions.create(model=name(stack), prompt=["The robot", "A cat"], max_tokens=4)
    assert [ch.index for ch in two.choices] == [0, 1] and two.usage.completion_tokens == 8
    stop = c.completions.create(
        model=name(stack), prompt=prompt, max_tokens=40, temperature=0, stop=["zzz-never"]
    )
    assert stop.choices[0].finish_reason in ("length", "stop")


INVALID = [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("n", {"n": 0}),
    ("n", {"n": 65}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 21}),
    ("top_logprobs", {"top_logprobs": 2}),
    ("frequency_penalty", {"frequency_penalty": 2.5}),
    ("logit_bias", {"logit_bias": {"nope": 10}}),
    ("logit_bias", {"logit_bias": {"5": 101}}),
    ("logit_bias", {"logit_bias": {"": "not a number"}}),
    ("min_tokens", {"max_tokens": 4, "extra_body": {"min_tokens": 5}}),
    ("temperature", {"temperature": -1}),
    ("max_tokens", {"max_tokens": 0}),
    ("max_tokens", {"max_tokens": 10**6}),
    ("bogus_field", {"extra_body": {"bogus_field": 1}}),
    ("skip_special_tokens", {"extra_body": {"skip_special_tokens": False}}),  # routers: true
]


@pytest.mark.parametrize(
    ("field", "kwargs"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)]
)
def test_each_invalid_or_unsupported_field_is_a_400_that_names_it(stack, field, kwargs):
    c = client(stack)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=name(stack), messages=MESSAGES, **kwargs)
    error = err.value.response.json()["error"]
    assert error["param"] == field and field in error["message"], error
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    # ... and the server keeps serving
    ok = c.chat.completions.create(model=name(stack), messages=MESSAGES, max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_wrong_key_unknown_model_and_the_models_list(stack):
    with pytest.raises(openai.AuthenticationError) as err:
        client(stack, api_key="wrong").models.list()
    assert err.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as err:
        client(stack).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert err.value.response.json()["error"]["param"] == "model"
    models = client(stack).models.list().data
    assert len(models) == 1 and models[0].owned_by == "apex"


def test_a_full_queue_is_429(stack):
    outcomes: list = []
    lock = threading.Lock()
    start = threading.Barrier(10)

    def one() -> None:
        c = client(stack)
        start.wait()
        try:
            c.completions.create(
                model=name(stack),
                prompt="The robot",
                max_tokens=80,
                extra_body={"ignore_eos": True},
            )
            out: object = "ok"
        except openai.RateLimitError as e:
            out = e.status_code
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # At least the two the queue holds get in (more when the engine admits some to the
    # running batch between arrivals); the rest are refused, none fails otherwise.
    assert outcomes.count(429) >= 1 and outcomes.count("ok") >= 2, outcomes
    assert outcomes.count(429) + outcomes.count("ok") == 10


def metric(stack, name: str) -> float:
    text = urllib.request.urlopen(stack.local.http_url + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def http_json(stack, method: str, path: str, body: dict | None = None, token: str = TOKEN):
    """(status, parsed body) of one plain HTTP call."""
    req = urllib.request.Request(
        stack.local.http_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_a_client_that_leaves_mid_stream_frees_its_blocks(stack):
    body = {
        "model": name(stack),
        "messages": MESSAGES,
        "max_tokens": 1500,
        "stream": True,
        "ignore_eos": True,
    }
    url = urllib.parse.urlparse(stack.local.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    line = r.readline()
    while not line.startswith(b"data: "):
        line = r.readline()
    assert json.loads(line.removeprefix(b"data: "))["object"] == "chat.completion.chunk"
    assert metric(stack, "apex_running_requests") == 1
    conn.close()  # mid-stream: the request must be aborted, not decoded to the end
    blocks = 'apex_kv_blocks_used{tier="gpu"}'
    assert wait_until(
        lambda: metric(stack, "apex_running_requests") == 0 and metric(stack, blocks) == 0, 10
    )


def test_health_version_tokenize_and_detokenize(stack, models):
    assert http_json(stack, "GET", "/health", token="")[0] == 200  # open: probes carry no key
    assert http_json(stack, "GET", "/version", token="")[1]["version"]
    assert http_json(stack, "POST", "/tokenize", {"prompt": "x"}, token="")[0] == 401
    status, tok = http_json(stack, "POST", "/tokenize", {"messages": MESSAGES})
    assert status == 200 and tok["tokens"] == chat_prompt_ids(models["tiny"], MESSAGES)
    status, out = http_json(stack, "POST", "/detokenize", {"tokens": tok["tokens"][1:5]})
    expected = AutoTokenizer.from_pretrained(str(models["tiny"])).decode(
        tok["tokens"][1:5], skip_special_tokens=True
    )
    assert status == 200 and out["prompt"] == expected
    status, err = http_json(stack, "POST", "/detokenize", {"tokens": [10**7]})
    assert status == 400 and err["error"]["param"] == "tokens[0]"


def test_the_metrics_an_inference_gateway_routes_on(stack):
    model = name(stack)
    before = scrape(stack)
    c = client(stack)
    r = c.completions.create(
        model=model, prompt="The robot", max_tokens=12, extra_body={"ignore_eos": True}
    )
    after = scrape(stack)
    label = f'{{model_name="{model}"}}'
    for gauge in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        assert labelled(after, gauge) == (label, 0.0)
    assert labelled(after, "vllm:kv_cache_usage_perc") == (label, 0.0)  # idle: nothing held

    def count(text: str, name: str) -> float:
        return labelled(text, name)[1]

    assert (
        count(after, "vllm:generation_tokens_total") - count(before, "vllm:generation_tokens_total")
        == 12
    )
    assert (
        count(after, "vllm:prompt_tokens_total") - count(before, "vllm:prompt_tokens_total")
        == r.usage.prompt_tokens
    )
    for hist in ("time_to_first_token", "e2e_request_latency"):
        name_ = f"vllm:{hist}_seconds_count"
        assert count(after, name_) - count(before, name_) == 1
    itl = "vllm:inter_token_latency_seconds_count"
    assert count(after, itl) - count(before, itl) == 11  # gaps between 12 tokens
    info, one = labelled(after, "vllm:cache_config_info")
    assert one == 1 and 'block_size="16"' in info and 'num_gpu_blocks="' in info
    # while a long request runs, it holds blocks and counts as running
    stream = c.completions.create(
        model=model,
        prompt="The robot",
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    next(iter(stream))
    during = scrape(stack)
    assert labelled(during, "vllm:num_requests_running")[1] == 1
    assert 0 < labelled(during, "vllm:kv_cache_usage_perc")[1] <= 1
    stream.close()


def test_a_stop_string_is_cut_or_kept_as_asked(stack, models):
    """vLLM's include_stop_str_in_output and SGLang's no_stop_trim keep the matched stop
    string at the end of the text; by default it is cut."""
    c, prompt = client(stack), [0, 45, 99, 301, 7, 250]
    kw = dict(model=name(stack), prompt=prompt, max_tokens=24, temperature=0)
    plain = c.completions.create(**kw, extra_body={"ignore_eos": True}).choices[0].text
    stop = next(
        plain[i : i + 2] for i in range(4, len(plain) - 2) if "\ufffd" not in plain[i : i + 2]
    )
    head = plain[: plain.index(stop)]
    for fields, text in (
        ({}, head),
        ({"include_stop_str_in_output": True}, head + stop),
        ({"no_stop_trim": True}, head + stop),
    ):
        body = {"ignore_eos": True, **fields}
        r = c.completions.create(**kw, stop=[stop], extra_body=body).choices[0]
        assert (r.text, r.finish_reason, extra(r, "stop_reason")) == (text, "stop", stop)
