"""The assembled model's configuration, read from and written to the released LLaVA config.json.

The released checkpoints keep one flat config: the LLM's own fields (Qwen2/Llama) plus LLaVA's
`mm_*` fields (DESIGN 3.6). `LrsFocusConfig` splits that into the transformers configs the parts
are built from (`text_config`, `vision_config`) and the method's own settings, and writes it back
flat, so a model saved here loads in the released layout and vice versa.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig, PretrainedConfig, Qwen2Config

DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"
FAMILIES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
TEMPLATES = {"llama": "vicuna_v1", "qwen2": "chatml"}
N_MAX = {"llama": 40, "qwen2": 80}  # paper, Table 2 caption
MAX_LENGTH = {"llama": 2048, "qwen2": 8192}  # released eval dirs `_max2048` / `_max8192`

# Fields of the flat released config that belong to LLaVA / this method, not to the LLM: the ones
# this config reads and writes back, then training-time ones that are only carried along.
_WRITTEN = (
    "mm_vision_tower",
    "mm_hidden_size",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_projector_type",
    "mm_patch_merge_type",
    "mm_spatial_pool_mode",
    "slice_block_size",
    "llm_layer_list",
    "llm_use_last_text",
    "tokenizer_model_max_length",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "lrs_focus",
)
MM_KEYS = _WRITTEN + (
    "image_aspect_ratio",
    "tokenizer_padding_side",
    "mm_projector_lr",
    "mm_vision_tower_lr",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "use_mm_proj",
    "select_stu_state_layer",
)


def _rope_theta(text_config: PretrainedConfig) -> float:
    params = getattr(text_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)))


#: What the public code's loader reads although inference never uses it; written when absent so a
#: checkpoint saved here loads there too (the released files carry their own values).
RELEASED_DEFAULTS = {"image_aspect_ratio": "pyramid_crop", "select_stu_state_layer": 1}


@dataclass
class LrsFocusConfig:
    """Everything needed to build `LrsFocusModel`; `rfm_layer_list` is the released `llm_layer_list`.

    The RFM has len(rfm_layer_list) + 1 decoder layers (initialised from LLM layers
    [rfm_layer_list[0] - 1] + rfm_layer_list). Its layers have the LLM's own heads and KV heads; its
    score logits are scaled by 1/sqrt(hidden // (hidden // rfm_head_dim)), as in the released code
    (128 for the 7B models, where both rules give the same heads).
    """

    family: str
    text_config: PretrainedConfig
    vision_config: CLIPVisionConfig
    vision_select_layer: int = -2
    rfm_layer_list: list[int] = field(default_factory=lambda: [1, 5, 11, 14])
    rfm_head_dim: int = 128
    tile_size: int = 336
    base_long_side: int = 1008
    max_length: int | None = None
    n_max: int | None = None
    template: str | None = None
    vision_tower_name: str = DEFAULT_VISION_TOWER
    encode_batch: int = 16  # tiles per vision-tower batch
    released_extra: dict[str, Any] = field(default_factory=dict)  # other released fields, kept as read

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, not {self.family!r}")
        self.max_length = self.max_length or MAX_LENGTH[self.family]
        self.n_max = self.n_max or N_MAX[self.family]
        self.template = self.template or TEMPLATES[self.family]

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def mm_hidden_size(self) -> int:
        return int(self.vision_config.hidden_size)

    @property
    def patches_per_side(self) -> int:
        return self.tile_size // int(self.vision_config.patch_size)

    @property
    def tokens_per_tile(self) -> int:
        """Tokens per side of a tile after the 2x2 pool (12 for CLIP-L/14-336)."""
        return -(-self.patches_per_side // 2)

    @property
    def thumbnail_tokens(self) -> int:
        return self.patches_per_side**2

    @property
    def rfm_layers(self) -> int:
        return len(self.rfm_layer_list) + 1

    @property
    def rfm_init_layers(self) -> list[int]:
        """LLM layers the RFM layers are copied from for training ({0,1,5,11,14} by default)."""
        return [max(self.rfm_layer_list[0] - 1, 0)] + list(self.rfm_layer_list)

    # -- released layout ----------------------------------------------------------------------
    def to_released_dict(self) -> dict[str, Any]:
        """The flat config.json of a released checkpoint (LLM fields + LLaVA `mm_*` fields)."""
        out = self.text_config.to_dict()
        out.update(RELEASED_DEFAULTS)
        out.update(copy.deepcopy(self.released_extra))
        out.update(
            {
                "architectures": ["LlavaQwenForCausalLM" if self.family == "qwen2" else "LlavaLlamaForCausalLM"],
                "model_type": "llava_qwen" if self.family == "qwen2" else "llava_llama",
                "mm_vision_tower": self.vision_tower_name,
                "mm_hidden_size": self.mm_hidden_size,
                "mm_vision_select_layer": self.vision_select_layer,
                "mm_vision_select_feature": "patch",
                "mm_projector_type": "mlp2x_gelu_after_distillpruner",
                "mm_patch_merge_type": "spatial_unpad",
                "mm_spatial_pool_mode": "bilinear",
                "slice_block_size": self.tile_size,
                "llm_layer_list": list(self.rfm_layer_list),
                "llm_use_last_text": True,
                "tokenizer_model_max_length": self.max_length,
                "mm_use_im_start_end": False,
                "mm_use_im_patch_token": False,
                # older loaders (transformers 4.x, the public code) read rope_theta, not rope_parameters
                "rope_theta": _rope_theta(self.text_config),
                # Not in the released files: what a checkpoint without a hub vision tower needs.
                "lrs_focus": {
                    "vision_config": self.vision_config.to_dict(),
                    "rfm_head_dim": self.rfm_head_dim,
                    "base_long_side": self.base_long_side,
                    "n_max": self.n_max,
                    "template": self.template,
                },
            }
        )
        return out

    @classmethod
    def from_released_dict(cls, data: dict[str, Any], vision_config: CLIPVisionConfig | None = None) -> "LrsFocusConfig":
        """Parse a released config.json. `vision_config` is required when the file has none of its own
        (the released files only name `mm_vision_tower`; the loader fetches that tower's config)."""
        arch = " ".join(data.get("architectures") or []) + " " + str(data.get("model_type", ""))
        family = "qwen2" if "qwen" in arch.lower() else "llama"
        ours = dict(data.get("lrs_focus") or {})
        text_fields = {k: v for k, v in data.items() if k not in MM_KEYS and k not in ("architectures", "model_type", "auto_map")}
        text_config = FAMILIES[family](**text_fields)
        if vision_config is None:
            if "vision_config" not in ours:
                raise ValueError("config has no vision_config; pass the vision tower's CLIPVisionConfig")
            vision_config = CLIPVisionConfig(**ours["vision_config"])
        select_feature = data.get("mm_vision_select_feature", "patch")
        if select_feature != "patch":
            raise ValueError(f"mm_vision_select_feature {select_feature!r} is not supported (only 'patch')")
        extra = {k: v for k, v in data.items() if k in MM_KEYS and k not in _WRITTEN}
        return cls(
            family=family,
            text_config=text_config,
            vision_config=vision_config,
            vision_select_layer=int(data.get("mm_vision_select_layer", -2)),
            rfm_layer_list=list(data.get("llm_layer_list") or [1, 5, 11, 14]),
            rfm_head_dim=int(ours.get("rfm_head_dim", 128)),
            tile_size=int(data.get("slice_block_size", 336)),
            base_long_side=int(ours.get("base_long_side", 3 * int(data.get("slice_block_size", 336)))),
            max_length=data.get("tokenizer_model_max_length"),
            n_max=ours.get("n_max"),
            template=ours.get("template"),
            vision_tower_name=str(data.get("mm_vision_tower", DEFAULT_VISION_TOWER)),
            released_extra=extra,
        )

