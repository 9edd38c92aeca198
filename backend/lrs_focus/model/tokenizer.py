"""The tokenizer of a checkpoint, loaded the way the released code loads it.

Released `builder.py`: Qwen2 builds take `AutoTokenizer` (the fast byte-level BPE); the Vicuna
(Llama) build takes `AutoTokenizer.from_pretrained(path, use_fast=False)`, the SentencePiece
tokenizer itself. transformers 5 ignores `use_fast` and converts `tokenizer.model` to a fast
tokenizer whose ids differ from SentencePiece's on ordinary text (runs of spaces merge into
'\u2581\u2581' pieces, text right after a special token loses its word marker), so a Llama checkpoint with a
`tokenizer.model` gets transformers' SentencePiece backend (legacy encoding = what
`SentencePieceProcessor.encode` gives, as the released prompts were tokenized).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import errors

_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _special_tokens(directory: Path) -> dict[str, str]:
    """bos/eos/unk/pad as written in tokenizer_config.json / special_tokens_map.json (str or AddedToken dict)."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in _SPECIALS:
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and key not in found:
                found[key] = value
    return found


def load_tokenizer(directory: Path, family: str, text_config: Any = None) -> Any:
    """The checkpoint's tokenizer: SentencePiece for Llama/Vicuna with a tokenizer.model, else AutoTokenizer.

    `text_config` (the LLM's config) spares AutoTokenizer from reading config.json, whose LLaVA
    model_type (`llava_qwen`) transformers does not know and warns about."""
    try:
        if family == "llama" and (directory / "tokenizer.model").exists():
            from transformers import SentencePieceBackend

            specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
            specials.update(_special_tokens(directory))
            return SentencePieceBackend(vocab_file=str(directory / "tokenizer.model"), legacy=True, **specials)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), config=text_config)
    except Exception as exc:
        raise errors.ModelNotFound(f"cannot load the tokenizer of {directory}: {type(exc).__name__}: {exc}") from exc
