"""The `tiny` preset: the real classes at toy sizes, random weights, an offline tokenizer.

Every test and the offline demo use it: same code path as the 7B checkpoints (CLIPVisionModel,
Qwen2ForCausalLM or LlamaForCausalLM, decoder-layer RFM), deterministic by seed, built in well
under a second on a CPU. Tiles are 56 px with 7 px patches: an 8x8 thumbnail (64 tokens) and 4x4
pooled tokens per tile, keeping the released 3-tile base level and 2x2 pooling.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from .config import LrsFocusConfig
from .prompts import CHATML_SYSTEM, VICUNA_SYSTEM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# A small fixed corpus: the templates and the vocabulary of remote-sensing questions, so that BPE
# learns useful merges; ':' stays one token (ByteLevel splits punctuation from words).
_CORPUS = [
    VICUNA_SYSTEM,
    CHATML_SYSTEM,
    "USER: ASSISTANT: system user assistant",
    "How many ships are docked at the northern pier? What is the color of the largest building?",
    "Is this a rural or urban area? What is the shape of the object? What is the status of the car?",
    "Answer the question using a single word or phrase. yes no one two three four five six seven",
    "airplane bridge ship vehicle storage tank harbor road river field forest building roof water",
    "red green blue white black gray grey yellow orange rectangular round square parked moving",
    "0 1 2 3 4 5 6 7 8 9 10 north south east west left right top bottom center middle image",
]


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained in memory on a fixed corpus (deterministic, no download)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )


def tiny_config(family: str = "qwen2", vocab_size: int = 512, tokenizer: PreTrainedTokenizerFast | None = None) -> LrsFocusConfig:
    """Toy sizes: CLIP 2x32 (56 px, patch 7), LLM 4x64 (4 heads, head 16; Qwen2 with 2 KV heads), RFM 3 layers."""
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=7,
        projection_dim=32,
    )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    if tokenizer is not None:
        common.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>" if family == "qwen2" else "</s>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    if family == "qwen2":
        text = Qwen2Config(num_key_value_heads=2, **common)
    elif family == "llama":
        text = LlamaConfig(num_key_value_heads=4, **common)
    else:
        raise ValueError(f"family must be qwen2 or llama, not {family!r}")
    for cfg in (text, vision):
        cfg._attn_implementation = "sdpa"
    return LrsFocusConfig(
        family=family,
        text_config=text,
        vision_config=vision,
        rfm_layer_list=[1, 3],  # RFM of 3 layers, initialised from LLM layers 0, 1, 3
        rfm_head_dim=16,
        tile_size=56,
        base_long_side=168,
        max_length=32768,
        vision_tower_name="tiny-clip",
    )


def build_tiny(family: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) with random weights drawn from `seed`; the model is in eval mode."""
    from .modeling import LrsFocusModel
    from .prompts import separator_id

    tokenizer = build_tokenizer()
    config = tiny_config(family, vocab_size=len(tokenizer), tokenizer=tokenizer)
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(seed)
        model = LrsFocusModel(config)
    model.separator_token_id = separator_id(tokenizer)
    return model.cast(dtype).eval(), tokenizer
