"""The executor reads a checkpoint directly when it can and through transformers when
it must, and both give the same tensors: the direct path must not drift from what
transformers (and so the exactness tests' reference) loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_executor.checkpoint import (
    load_checkpoint,
    read_direct,
    read_with_transformers,
    rope_inv_freq,
)

CPU = torch.device("cpu")
LAYER = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
NAMES = (
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(f"model.layers.1.{n}.weight" for n in LAYER),
)


def small_llama(path: Path, shard: str | None = None, **config) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        **config,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def assert_same(direct, via_hf) -> None:
    (get_a, freq_a, scale_a), (get_b, freq_b, scale_b) = direct, via_hf
    assert torch.equal(freq_a, freq_b) and scale_a == scale_b
    for name in NAMES:
        assert torch.equal(get_a(name), get_b(name)), name


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_the_presets_read_directly_as_transformers_reads_them(models, preset):
    direct = read_direct(models[preset])
    assert direct is not None
    assert_same(direct, read_with_transformers(models[preset], torch.float32))
    ck = load_checkpoint(models[preset], torch.float32, CPU, num_layers=4)
    assert ck.loader == "safetensors" and len(ck.layers) == 4


def test_tied_embeddings_and_sharded_safetensors_read_directly(tmp_path):
    path = small_llama(tmp_path / "tied", shard="40KB", tie_word_embeddings=True)
    assert (path / "model.safetensors.index.json").is_file(), "meant to be sharded"
    direct = read_direct(path)
    assert direct is not None
    assert torch.equal(direct[0]("lm_head.weight"), direct[0]("model.embed_tokens.weight"))
    assert_same(direct, read_with_transformers(path, torch.float32))
    half = load_checkpoint(path, torch.float16, CPU, num_layers=2)
    assert half.embed.dtype is torch.float16 and half.layers[1].qkv.shape == (64 + 2 * 32, 64)


def test_llama3_rope_reads_directly_with_transformers_frequencies(tmp_path):
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    path = small_llama(tmp_path / "llama3", rope_parameters=llama3)
    direct = read_direct(path)
    assert direct is not None
    assert_same(direct, read_with_transformers(path, torch.float32))
    plain = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    stretched = direct[1] != plain
    assert stretched.any() and not stretched.all(), "low frequencies rescaled, high kept"


def test_another_rope_variant_goes_through_transformers(tmp_path):
    linear = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    path = small_llama(tmp_path / "linear", rope_parameters=linear)
    assert read_direct(path) is None
    ck = load_checkpoint(path, torch.float32, CPU, num_layers=2)
    assert ck.loader == "transformers"
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    assert torch.allclose(ck.inv_freq, plain / 2)


def test_which_configs_are_read_directly():
    plain = {"hidden_size": 64, "num_attention_heads": 4}
    assert rope_inv_freq(plain)[0] == 1.0
    older = rope_inv_freq({**plain, "rope_theta": 5e5, "rope_scaling": None})
    newer = rope_inv_freq({**plain, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert torch.equal(older, newer) and float(older[1]) == pytest.approx(5e5 ** (-2 / 16))
    for scaling in ({"type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0}):
        assert rope_inv_freq({**plain, "rope_scaling": scaling}) is None
    assert rope_inv_freq({**plain, "partial_rotary_factor": 0.5}) is None
