"""Shared fixtures: the two test models, their transformers references, running stacks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Off a GPU, Triton kernels run under its interpreter, which must be switched on before
# anything imports triton (transformers' model classes do, through torch), whichever
# test file a worker happens to run first.
if os.environ.get("APEX_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest

from tests.factories import running_stack

# Stacks look for measured profiles (--profile auto); a developer's own must not steer
# the tests. Tests that measure one point this at their own folder.
os.environ["APEX_PROFILE_DIR"] = tempfile.mkdtemp(prefix="apex-test-profiles-")


def _worker_port_range() -> str | None:
    """Under pytest-xdist each worker (and every stack it starts) picks server ports
    from its own share of the range, so two workers never race for one port."""
    worker, count = (
        os.environ.get("PYTEST_XDIST_WORKER"),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
    )
    if not worker or not count:
        return None
    from launcher.stack import DEFAULT_SERVER_PORTS as ports

    share = len(ports) // int(count)
    lo = ports.start + int(worker.removeprefix("gw")) * share
    return f"{lo}-{lo + share - 1}"


if (_ports := _worker_port_range()) is not None:
    os.environ["APEX_PORT_RANGE"] = _ports


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    from gpu_executor.model_init import init_model

    root = tmp_path_factory.mktemp("models")
    return {p: init_model(root / p, p) for p in ("tiny", "tiny-gqa")}


@pytest.fixture(scope="module")
def tiny_stack(models, tmp_path_factory):
    with running_stack(models["tiny"], tmp_path_factory.mktemp("logs-tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def gqa_stack(models, tmp_path_factory):
    """With --cuda-graphs: on the CPU its decode steps run the graphs' static path
    eagerly (bucketed batches, padding into the scratch block), so every test of this
    stack checks that path against transformers too."""
    log_dir = tmp_path_factory.mktemp("logs-gqa")
    with running_stack(models["tiny-gqa"], log_dir, executor_args=["--cuda-graphs"]) as s:
        yield s


@pytest.fixture(scope="session")
def openai_stack(models, tmp_path_factory):
    """The OpenAI API's files share it (tests/openai_shared.py)."""
    from tests.openai_shared import GPU_STACK_ARGS

    log_dir = tmp_path_factory.mktemp("openai")
    with running_stack(models["tiny"], log_dir, scheduler_args=GPU_STACK_ARGS) as s:
        yield s


@pytest.fixture(scope="session")
def openai_cpu_stack(models, tmp_path_factory):
    from tests.openai_shared import CPU_STACK_ARGS

    log_dir = tmp_path_factory.mktemp("openai-cpu")
    with running_stack(models["tiny-gqa"], log_dir, CPU_STACK_ARGS, cpu_executor_args=[]) as s:
        yield s


# The files that take longest, longest first (seconds alone on a 2-core VM, 2026-12-07).
# Under xdist each file runs whole on one worker, in collection order: started first,
# they do not leave one worker running a long file while the other sits idle at the end.
LONGEST_FILES = (
    "test_hybrid_exactness.py",  # ~90 s
    "test_cli.py",  # ~80
    "test_exactness.py",  # ~50
    "test_faults.py",  # ~45
    "test_gpu_check.py",  # ~45
    "test_router.py",  # ~35
    "test_fuzz.py",  # ~27
    "test_profiler.py",  # ~27
    "test_policy_live.py",  # ~26
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep order
