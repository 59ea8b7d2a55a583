"""Shared fixtures: the two test models, their transformers references, running stacks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.factories import running_stack

# Stacks look for measured profiles (--profile auto); a developer's own must not steer
# the tests. Tests that measure one point this at their own folder.
os.environ["APEX_PROFILE_DIR"] = tempfile.mkdtemp(prefix="apex-test-profiles-")


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
