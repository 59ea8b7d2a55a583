"""Chat templates: a conversation rendered to the prompt text the model was trained on.

The template is the model's own (`chat_template` in tokenizer_config.json, or a
chat_template.jinja beside it) or the operator's (`--chat-template FILE`), rendered the
way transformers renders it: Jinja2 in a sandbox (a template is code that came with a
checkpoint), trimmed blocks, `raise_exception` available, the special tokens' text
given. The rendered text writes its own BOS, so it is tokenized without adding one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool", "developer")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template does not parse: {e}") from e
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def load(cls, model_dir: str | Path, override: str | Path | None = None) -> ChatTemplate | None:
        """The operator's template, else the model's; None when there is neither."""
        model_dir = Path(model_dir)
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        source = None
        if override:
            source = Path(override).read_text()
        elif (model_dir / "chat_template.jinja").is_file():
            source = (model_dir / "chat_template.jinja").read_text()
        else:
            source = config.get("chat_template")
            if isinstance(source, list):  # named templates: the default one
                named = {t.get("name"): t.get("template") for t in source}
                source = named.get("default")
        if not source:
            return None
        return cls(source, token_text(config.get("bos_token")), token_text(config.get("eos_token")))

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template failed on these messages: {e}") from e


def token_text(token: str | dict | None) -> str:
    """tokenizer_config writes a special token as its text or as {"content": text}."""
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return token or ""
