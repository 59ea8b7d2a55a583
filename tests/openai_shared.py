"""What the OpenAI API's test files share: the key, the conversation, the SDK client
as a user builds it, and the metrics scrape. Their stacks are session fixtures in
conftest.py (`openai_stack`, `openai_cpu_stack`), started once per test worker."""

from __future__ import annotations

import urllib.request

import openai
import pytest

TOKEN = "sk-apex-test"
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Tell me about the robot."},
]
# the GPU-tier stack: a small queue, so that a full one is quick to reach
GPU_STACK_ARGS = ["--generation-token", TOKEN, "--max-num-seqs", "2", "--max-queue", "2"]
# the grouped-KV model with every request's decode attention on the CPU tier
CPU_STACK_ARGS = ["--placement", "cpu", "--cpu-kv-gb", "0.05", "--generation-token", TOKEN]


def client(stack, **kw) -> openai.OpenAI:
    kw = {"api_key": TOKEN, "max_retries": 0, "timeout": 60, **kw}
    return openai.OpenAI(base_url=stack.local.http_url + "/v1", **kw)


def name(stack) -> str:
    return client(stack).models.list().data[0].id


def extra(choice, key: str):
    return (choice.model_extra or {})[key]


def scrape(stack) -> str:
    return urllib.request.urlopen(stack.local.http_url + "/metrics", timeout=10).read().decode()


def labelled(text: str, name: str) -> tuple[str, float]:
    """(labels, value) of the one sample of `name`."""
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    labels, value = line[len(name) :].rsplit(" ", 1)
    return labels, float(value)


def value(text: str, name: str) -> float:
    """The value of the unlabelled sample `name`."""
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).split()[1])


# The two stacks under the names the tests take them by. Each test file imports these
# functions; pytest finds a fixture by its `name`, whatever the attribute is called.
@pytest.fixture(scope="module", name="stack")
def gpu_stack_fixture(openai_stack):
    return openai_stack


@pytest.fixture(scope="module", name="cpu_stack")
def cpu_stack_fixture(openai_cpu_stack):
    return openai_cpu_stack
