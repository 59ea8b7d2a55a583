"""Shared fixtures: the two test models, their transformers references, running stacks."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest

from tests.stack import running_stack

# Stacks look for measured profiles (--profile auto); a developer's own must not steer
# the tests. Tests that measure one point this at their own folder.
os.environ["APEX_PROFILE_DIR"] = tempfile.mkdtemp(prefix="apex-test-profiles-")


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    from gpu_executor.model_init import init_model

    root = tmp_path_factory.mktemp("models")
    return {p: init_model(root / p, p) for p in ("tiny", "tiny-gqa")}


@functools.cache
def hf_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m.eval()
    return m


def hf_greedy(path: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generate, fp32, never stopping at EOS."""
    import torch

    model = hf_model(path)
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        out = model.generate(
            ids,
            # Explicit mask: with pad_token_id set, generate would infer one from the ids
            # and mask out every token equal to it (the BOS here).
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.fixture(scope="module")
def tiny_stack(models, tmp_path_factory):
    with running_stack(models["tiny"], tmp_path_factory.mktemp("logs-tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def gqa_stack(models, tmp_path_factory):
    with running_stack(models["tiny-gqa"], tmp_path_factory.mktemp("logs-gqa")) as s:
        yield s
