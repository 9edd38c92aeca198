"""Load and save the model in the released LLaVA repository layout, with a strict key map.

Released keys (DESIGN 3.6) <-> module names here:

    model.vision_tower.vision_tower.vision_model.*   vision_tower.*          (CLIPVisionModel)
    model.mm_projector.mlp_projector.{0,2}.*         projector.{0,2}.*
    model.mm_projector.token_pruner.layers.N.*       rfm.layers.N.*
    model.mm_projector.token_pruner.norm.weight      rfm.norm.weight
    model.image_newline                              image_newline
    lm_head.*                                        llm.lm_head.*
    model.{embed_tokens,layers,norm}.*               llm.model.*

Missing or unexpected keys are an error naming them (`errors.CheckpointMismatch`). Only buffers
that transformers recomputes (`position_ids`, rotary `inv_freq`) are tolerated as extras. When a
checkpoint has no vision keys, the tower comes from the config's `mm_vision_tower` (what the
released code does).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from .. import errors
from .config import LrsFocusConfig
from .modeling import LrsFocusModel
from .prompts import separator_id
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

KEY_MAP = (  # (released prefix, module prefix); first match wins, most specific first
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.mlp_projector.", "projector."),
    ("model.mm_projector.token_pruner.layers.", "rfm.layers."),
    ("model.mm_projector.token_pruner.norm.", "rfm.norm."),
    ("model.image_newline", "image_newline"),
    ("lm_head.", "llm.lm_head."),
    ("model.", "llm.model."),
)
TOLERATED_EXTRA = ("position_ids", "rotary_emb.inv_freq", "token_pruner.rotary_emb.inv_freq")
TINY_NAMES = {"tiny": "qwen2", "tiny-qwen2": "qwen2", "tiny-llama": "llama"}
TINY_VL = ("tiny-qwen2.5-vl", "tiny-qwen3-vl")  # qwen_vl_loading.TINY_VL, without importing it here
#: weight files of any format and sharding, and tokenizer files, that a new save replaces
STALE_FILE = re.compile(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


def to_module_key(released: str) -> str | None:
    for src, dst in KEY_MAP:
        if released.startswith(src):
            return dst + released[len(src) :]
    return None


def to_released_key(module_key: str) -> str:
    for src, dst in KEY_MAP:
        if module_key.startswith(dst):
            return src + module_key[len(dst) :]
    raise KeyError(f"no released key for module key {module_key!r}")


def released_state_dict(model: LrsFocusModel) -> dict[str, torch.Tensor]:
    return {to_released_key(k): v for k, v in model.state_dict().items()}


def map_checkpoint(model: LrsFocusModel, released: dict[str, torch.Tensor], vision_from_elsewhere: bool = False) -> dict[str, torch.Tensor]:
    """Released keys -> module keys, strictly: raises CheckpointMismatch naming missing/unexpected keys."""
    expected = set(model.state_dict().keys())
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in released.items():
        target = to_module_key(key)
        if target is None or target not in expected:
            if not key.endswith(TOLERATED_EXTRA):
                unexpected.append(key)
            continue
        mapped[target] = value
    missing = sorted(
        to_released_key(k) for k in expected - set(mapped) if not (vision_from_elsewhere and k.startswith("vision_tower."))
    )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            unexpected.sort()
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        raise errors.CheckpointMismatch("checkpoint does not match the model: " + "; ".join(parts))
    shapes = [k for k, v in mapped.items() if tuple(v.shape) != tuple(model.state_dict()[k].shape)]
    if shapes:
        raise errors.CheckpointMismatch(
            "checkpoint shapes differ from the config for: "
            + ", ".join(f"{to_released_key(k)} {tuple(mapped[k].shape)} vs {tuple(model.state_dict()[k].shape)}" for k in shapes[:10])
        )
    return mapped


# -- files -------------------------------------------------------------------------------------
def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (safetensors shards or torch .bin, with or without index)."""
    from safetensors.torch import load_file

    names: list[str]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            break
    else:
        names = [n for n in ("model.safetensors", "pytorch_model.bin") if (directory / n).exists()]
    if not names:
        raise errors.ModelNotFound(f"no weights in {directory} (expected one of {', '.join(WEIGHT_FILES)})")
    state: dict[str, torch.Tensor] = {}
    for name in names:
        path = directory / name
        if name.endswith(".safetensors"):
            state.update(load_file(str(path)))
        else:
            state.update(torch.load(str(path), map_location="cpu", weights_only=True))
    return state


def resolve(name: str, what: str = "model", relative_to: Path | None = None) -> Path:
    """A local directory as is (relative paths also against `relative_to`, the checkpoint's own
    directory, where a released config may name its vision tower); otherwise a hub id downloaded
    (cached) with huggingface_hub."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if relative_to is not None and not path.is_absolute() and (relative_to / path).is_dir():
        return relative_to / path
    if path.exists() or name.startswith((".", "/", "~")):
        raise errors.ModelNotFound(f"{what} {name!r} is not a directory")
    try:
        from huggingface_hub import snapshot_download

        log.info("fetching %s %s from the Hugging Face hub (cached after the first time)", what, name)
        return Path(
            snapshot_download(
                repo_id=name,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.bin", "*.jinja"],
            )
        )
    except Exception as exc:  # offline, unknown repo, auth...
        raise errors.ModelNotFound(
            f"cannot get {what} {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Without network access, download it on another machine (`huggingface-cli download {name} "
            f"--local-dir DIR`), copy DIR here and pass the directory instead of the hub id "
            f"(e.g. --model DIR); or use --model tiny for the offline random-weight model."
        ) from exc


def save_released(model: LrsFocusModel, tokenizer: Any, directory: str | os.PathLike, max_shard_size: str = "5GB") -> Path:
    """Write safetensors weights (released key layout), the tokenizer files, then config.json.

    Into a directory that already holds a checkpoint: its config.json goes first and its weight and
    tokenizer files of every format are removed, since `read_weights` would otherwise also read a
    stale pytorch_model.bin (or index) and `load_tokenizer` prefer a stale tokenizer.model.
    config.json is written last (atomically): a save cut short (Ctrl-C, full disk) leaves a folder
    that `load_model` refuses as "not a model directory" instead of new and old files mixed."""
    from huggingface_hub import save_torch_state_dict

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    for path in out.iterdir():
        if path.is_file() and (STALE_FILE.fullmatch(path.name) or (tokenizer is not None and path.name in TOKENIZER_FILES)):
            path.unlink()
    state = {k: v.detach().contiguous() for k, v in released_state_dict(model).items()}
    save_torch_state_dict(state, str(out), max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    partial = out / "config.json.partial"
    partial.write_text(json.dumps(model.config.to_released_dict(), indent=2, default=str))
    os.replace(partial, out / "config.json")
    return out


# -- the one loader ------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_dtype(value: Any) -> torch.dtype | None:
    """None, a torch dtype, or one of "float32", "bfloat16"/"bf16", "float16"/"fp16" -> torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    try:
        return names[str(value).lower().replace("torch.", "")]
    except KeyError:
        raise errors.BadOptions(f"dtype must be float32, bfloat16 or float16, not {value!r}") from None


def check_device(device: str) -> str:
    """`device` if this torch can use it; otherwise BadOptions in words, before any weights load
    (torch's own errors are an AssertionError or a list of twenty device types)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise errors.BadOptions(f"device must be cpu, cuda or cuda:N, not {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise errors.BadOptions(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU; "
                                    "use --device cpu or a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise errors.BadOptions(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        try:
            torch.empty(1, device=dev)
        except (RuntimeError, AssertionError) as exc:
            reason = str(exc).split(". ")[0].splitlines()[0][:160]
            raise errors.BadOptions(f"device {device!r} is not usable here: {reason}") from None
    return str(device)


def default_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA, float32 on CPU."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def choose_attention(device: str, dtype: torch.dtype) -> str:
    """flash_attention_2 on CUDA in float16/bfloat16 when flash-attn is installed, else sdpa: the flash
    kernels reject float32 (the dtype that reproduces the released numerics), and writing
    `_attn_implementation` directly skips transformers' own dtype check."""
    if not str(device).startswith("cuda") or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def load_model(name: str, device: str | None = None, dtype: torch.dtype | None = None, seed: int = 0):
    """(model, tokenizer, info) for `tiny[-qwen2|-llama]`, a local directory or a hub id.

    info = {"name", "random_weights", "device", "dtype", "attention"}: `choose_attention` (flash-attn only
    in float16/bfloat16 on CUDA; the RFM always on sdpa, see `LrsFocusModel.set_attention`).
    """
    device = check_device(device or default_device())
    dtype = dtype or default_dtype(device)
    directory = None if name in TINY_VL or name in TINY_NAMES else resolve(name)
    vl_dir = directory if directory is not None and _is_vl_directory(directory) else None
    if name in TINY_VL or vl_dir is not None:
        from .qwen_vl_loading import load_vl

        model, tokenizer, random_weights = load_vl(name, vl_dir, dtype, seed=seed)
        model.hf.to(device=device)
        info = {"name": name, "random_weights": random_weights, "device": str(device),
                "dtype": str(dtype).replace("torch.", ""), "attention": "sdpa", "family": model.config.family}
        return model, tokenizer, info
    if name in TINY_NAMES:
        from .tiny import build_tiny

        model, tokenizer = build_tiny(TINY_NAMES[name], seed=seed, dtype=dtype)
        random_weights = True
    else:
        model, tokenizer = _load_directory(directory, dtype)
        random_weights = False
    attention = choose_attention(device, dtype)
    model.set_attention(attention)
    model.cast(dtype).to(device=device).eval()
    info = {"name": name, "random_weights": random_weights, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "attention": attention}
    return model, tokenizer, info


def _is_vl_directory(directory: Path) -> bool:
    """Whether the checkpoint directory holds a Qwen2.5-VL / Qwen3-VL (config.json's model_type)."""
    from .qwen_vl_loading import family_of

    config = directory / "config.json"
    if not config.exists():
        return False
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.ModelError(f"{config} is not readable JSON: {exc}") from exc
    return family_of(raw) is not None


def _load_directory(directory: Path, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config_path = directory / "config.json"
    if not config_path.exists():
        raise errors.ModelNotFound(f"{directory} has no config.json: not a model directory")
    raw = json.loads(config_path.read_text())
    weights = read_weights(directory)
    has_vision = any(k.startswith("model.vision_tower.vision_tower.") for k in weights)
    vision_config = None
    tower_dir = None
    if "vision_config" not in (raw.get("lrs_focus") or {}):
        tower_dir = resolve(str(raw.get("mm_vision_tower", "openai/clip-vit-large-patch14-336")), what="vision tower",
                            relative_to=directory)
        vision_config = CLIPVisionConfig.from_pretrained(str(tower_dir))
    config = LrsFocusConfig.from_released_dict(raw, vision_config=vision_config)
    for cfg in (config.text_config, config.vision_config):
        cfg._attn_implementation = "sdpa"
    with init_empty_weights(include_buffers=False):
        model = LrsFocusModel(config)
    state = map_checkpoint(model, weights, vision_from_elsewhere=not has_vision)
    if not has_vision:
        if tower_dir is None:
            tower_dir = resolve(config.vision_tower_name, what="vision tower", relative_to=directory)
        tower = CLIPVisionModel.from_pretrained(str(tower_dir), dtype=dtype)
        state.update({f"vision_tower.{k}": v for k, v in tower.state_dict().items() if f"vision_tower.{k}" in model.state_dict()})
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True, assign=True)
    if (directory / "generation_config.json").exists():  # the public `generate` merges it into every call
        from transformers import GenerationConfig

        model.llm.generation_config = GenerationConfig.from_pretrained(str(directory), local_files_only=True)
    tokenizer = load_tokenizer(directory, config.family, config.text_config)
    try:
        model.separator_token_id = separator_id(tokenizer)
    except ValueError as exc:
        raise errors.ModelError(str(exc)) from exc
    return model, tokenizer
