"""Conversation templates of the released models, split around the image.

The released code builds "<image>\\n{question}\\n" as the user message, renders the template and
tokenizes the text before and after `<image>` separately (BOS only on the first chunk); the image
tokens are spliced in between. The last prompt token is the RFM's query (`llm_use_last_text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import errors

IMAGE = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Template:
    name: str
    add_bos: bool  # Llama tokenizers prepend <s>; Qwen2 has no BOS
    stop: str  # text that ends the assistant's turn

    def render(self, question: str) -> tuple[str, str]:
        """(text before the image, text after it up to and including the assistant prefix)."""
        message = f"{IMAGE}\n{question}\n"
        if self.name == "vicuna_v1":
            full = f"{VICUNA_SYSTEM} USER: {message} ASSISTANT:"
        elif self.name == "chatml":
            full = (
                f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
            )
        else:  # pragma: no cover - guarded by TEMPLATES
            raise ValueError(f"unknown template {self.name!r}")
        before, after = full.split(IMAGE, 1)
        return before, after

    def answer_text(self, answer: str) -> str:
        """The assistant turn appended for training (answer plus the end-of-turn marker)."""
        return f" {answer}{self.stop}" if self.name == "vicuna_v1" else f"{answer}{self.stop}\n"


TEMPLATES = {
    "vicuna_v1": Template("vicuna_v1", add_bos=True, stop="</s>"),
    "chatml": Template("chatml", add_bos=False, stop="<|im_end|>"),
}


@dataclass
class PromptIds:
    """Token ids of the text around the image; `answer` only for training."""

    prefix: list[int]
    suffix: list[int]
    answer: list[int] | None = None


def control_tokens_in(tokenizer: Any, text: str) -> list[str]:
    """The tokenizer's special tokens that occur in `text`, longest first.

    HF tokenizers turn the text '<|im_end|>' or '</s>' into the control token itself, so a question
    holding one would end the user's turn or the sequence early and the model would read a
    different prompt than the one asked."""
    specials = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        specials |= set(added())
    return sorted((t for t in specials if t and t in text), key=lambda t: (-len(t), t))


def refuse_bad_question(tokenizer: Any, question: str) -> None:
    """An empty question or one holding the model's control tokens is refused."""
    if not question.strip():
        raise errors.BadOptions("the question is empty")
    controls = control_tokens_in(tokenizer, question)
    if controls:
        raise errors.BadOptions(f"the question contains the model's control token {controls[0]!r}; "
                         "remove it (it would end the question early)")


def encode_prompt(tokenizer: Any, template: str, question: str, answer: str | None = None) -> PromptIds:
    tpl = TEMPLATES[template]
    before, after = tpl.render(question)
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    if tpl.add_bos and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id] + prefix
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    answer_ids = None
    if answer is not None:
        answer_ids = tokenizer(tpl.answer_text(answer), add_special_tokens=False)["input_ids"]
    return PromptIds(prefix=list(prefix), suffix=list(suffix), answer=answer_ids)


def separator_id(tokenizer: Any) -> int:
    """The ':' token whose embedding separates thumbnail and tiles, taken as the released code does.

    `llava_arch.py` uses `tokenizer.convert_tokens_to_ids([':'])`: the vocabulary entry ':' itself.
    Encoding the text ":" is not the same: a SentencePiece (Llama/Vicuna) tokenizer prepends its
    word-start marker and gives '▁:', another token with another embedding.
    """
    sep = tokenizer.convert_tokens_to_ids(":")
    unk = getattr(tokenizer, "unk_token_id", None)
    if not isinstance(sep, int) or sep < 0 or (sep == unk and tokenizer.convert_ids_to_tokens(sep) != ":"):
        raise ValueError("the tokenizer has no ':' token in its vocabulary; the released layout needs one")
    return int(sep)
