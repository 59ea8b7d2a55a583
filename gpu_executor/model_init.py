"""`apex init-model DIR`: write a random-weight Llama checkpoint with a working tokenizer.

Nothing can be downloaded from a model hub, so the stack makes its own model. The
output is a normal Hugging Face directory (config.json, safetensors, tokenizer.json):
AutoModelForCausalLM and AutoTokenizer load it, which is how the exactness tests get
their reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from gpu_executor.model_presets import DEFAULT_PRESET, PRESETS, ModelPreset
from gpu_executor.tokenizer_corpus import CORPUS

BOS, EOS = "<s>", "</s>"
TRAINED_VOCAB = 640  # byte alphabet (256) + merges + specials, for the tiny presets
SHARD_BYTES = 2 * 1024**3
# A small role-tagged chat format; like Llama's own templates it writes the BOS itself.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int | None) -> Tokenizer:
    """Byte-level BPE: every string encodes (no unknown token), and every id decodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    if vocab_size is not None:
        # The large presets have the real vocabulary size; pad with reserved tokens so
        # every id the random model can emit still decodes.
        missing = vocab_size - tok.get_vocab_size()
        if missing < 0:
            raise ValueError(f"vocab_size {vocab_size} is below the trained vocabulary")
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    return tok


def hf_config(preset: ModelPreset, vocab_size: int, bos_id: int, eos_id: int) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": preset.hidden_size,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads,
        "num_key_value_heads": preset.num_key_value_heads,
        "head_dim": preset.head_dim,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": preset.max_position_embeddings,
        "vocab_size": vocab_size,
        "rms_norm_eps": preset.rms_norm_eps,
        "rope_theta": preset.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": preset.dtype,
        "initializer_range": 0.02,
    }
    if preset.rope_scaling is not None:
        cfg["rope_scaling"] = dict(preset.rope_scaling)
    return cfg


def weight_shapes(preset: ModelPreset, vocab_size: int) -> dict[str, tuple[int, ...]]:
    h, d = preset.hidden_size, preset.head_dim
    kv = preset.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, h)}
    for i in range(preset.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (preset.num_attention_heads * d, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, preset.num_attention_heads * d),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (preset.intermediate_size, h),
            p + "mlp.up_proj.weight": (preset.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, preset.intermediate_size),
        }
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab_size, h)
    return shapes


def random_tensor(
    name: str, shape: tuple[int, ...], preset: ModelPreset, gen: torch.Generator
) -> torch.Tensor:
    dtype = getattr(torch, preset.dtype)
    if len(shape) == 1:  # RMSNorm weights: ones, as a trained model's are near one
        return torch.ones(shape, dtype=dtype)
    scale = preset.lm_head_scale if name == "lm_head.weight" else preset.weight_scale
    return (torch.randn(shape, generator=gen) * (0.02 * scale)).to(dtype)


def init_model(out_dir: str | Path, preset_name: str = DEFAULT_PRESET, seed: int = 0) -> Path:
    """Write the checkpoint; returns its directory. Overwrites the files it writes."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(preset.vocab_size)
    vocab_size = tok.get_vocab_size()
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": BOS,
                "eos_token": EOS,
                "model_max_length": preset.max_position_embeddings,
                "clean_up_tokenization_spaces": False,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    (out / "config.json").write_text(
        json.dumps(hf_config(preset, vocab_size, bos_id, eos_id), indent=2)
    )
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False})
    )
    write_weights(out, preset, vocab_size, seed)
    (out / "apex_preset.json").write_text(json.dumps({"preset": preset.name, "seed": seed}))
    return out


def write_weights(out: Path, preset: ModelPreset, vocab_size: int, seed: int) -> None:
    """Tensor by tensor into ~2 GB shards, so the 7-8B presets never sit whole in memory."""
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in weight_shapes(preset, vocab_size).items():
        t = random_tensor(name, shape, preset, gen)
        if size and size + t.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in shard}
        total += sum(t.nbytes for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
