"""A brief training run that turns the random default model into one that writes words.

The demo's model is made locally (nothing comes from a model hub), and a random one
prints byte soup. A few hundred steps of next-token prediction on the text the project
ships (the tokenizer's corpus) and on text Python itself ships (the standard library's
module docstrings) teach the tiny model enough English to read as words. The exactness
tests keep their own random models; only `apex init-model --train-steps N` and the
default model of `apex serve` / `make demo` are trained.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import torch

from gpu_executor.tokenizer_corpus import CORPUS

# Standard-library modules whose docstrings are plain English paragraphs.
DOC_MODULES = ("argparse", "textwrap", "string", "heapq", "bisect", "fractions", "calendar")


# A few exchanges in the default model's chat format (model_init.CHAT_TEMPLATE), so that
# a chat gets an answer and an end: the answers are the corpus's own sentences.
CHATS = (
    ("Tell me a story.", "Once upon a time there was a little robot who liked to count."),
    (
        "What does the scheduler do?",
        "The scheduler keeps a queue of waiting requests and a list of running ones.",
    ),
    ("Hello!", "Hello! I am a small model, and I can tell you a story."),
)


def chat_text() -> str:
    return "".join(f"<s><|user|>\n{q}</s>\n<|assistant|>\n{a}</s>\n" for q, a in CHATS)


def training_text() -> str:
    docs = [importlib.import_module(name).__doc__ or "" for name in DOC_MODULES]
    return "\n\n".join([CORPUS, *docs, *[chat_text()] * 8])


def train_briefly(
    model_dir: str | Path,
    steps: int = 300,
    seq_len: int = 64,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Train the checkpoint in place; returns the first and last losses and the time."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir = Path(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = torch.tensor(tok.encode(training_text(), add_special_tokens=False).ids)
    if len(ids) <= seq_len + 1:
        raise ValueError("the training text is shorter than one sequence")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:  # linear decay: the last steps settle
            group["lr"] = lr * (1 - (step + 1) / steps)
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(str(model_dir), safe_serialization=True)
    marker = model_dir / "apex_preset.json"  # what init_model made, and now how it was trained
    made = json.loads(marker.read_text()) if marker.is_file() else {}
    marker.write_text(json.dumps({**made, "trained_steps": steps}))
    return {"first_loss": losses[0], "last_loss": losses[-1], "seconds": time.perf_counter() - t0}
