"""Released key layout: save -> strict load gives identical outputs; wrong keys fail by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lrs_focus import errors
from lrs_focus.model.loading import load_model, released_state_dict, save_released, to_module_key
from lrs_focus.model.prompts import encode_prompt


def _outputs(model, tok):
    g = torch.Generator().manual_seed(0)
    prompt = encode_prompt(tok, model.config.template, "Is this a rural or urban area?")
    img = (torch.rand(3, 56, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
    with torch.no_grad():
        thumb = model.encode_thumbnail(img[0])
        tiles = model.encode_tiles(img).reshape(-1, model.config.hidden_size)
        seq = model.build_sequence(prompt, thumb, tiles)
        return model.llm_forward(seq).logits, model.rfm_scores(seq)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_round_trip_is_exact(tiny_models, tmp_path, family):
    model, tok = tiny_models[family]
    save_released(model, tok, tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "model.image_newline" in keys
    assert "model.mm_projector.mlp_projector.0.weight" in keys and "model.mm_projector.mlp_projector.2.bias" in keys
    assert "model.mm_projector.token_pruner.layers.2.self_attn.q_proj.weight" in keys
    assert "model.mm_projector.token_pruner.norm.weight" in keys
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "model.layers.0.mlp.gate_proj.weight" in keys and "lm_head.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["llm_layer_list"] == [1, 3] and config["mm_vision_select_layer"] == -2
    assert config["mm_projector_type"] == "mlp2x_gelu_after_distillpruner"
    assert ("qwen" in config["architectures"][0].lower()) == (family == "qwen2")

    loaded, tok2, info = load_model(str(tmp_path), device="cpu")
    assert not info["random_weights"] and loaded.config.family == family
    assert loaded.separator_token_id == model.separator_token_id
    a, b = _outputs(model, tok), _outputs(loaded, tok2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_key_map_is_a_bijection(tiny_models):
    model, _ = tiny_models["qwen2"]
    released = released_state_dict(model)
    assert {to_module_key(k) for k in released} == set(model.state_dict())


@pytest.mark.parametrize(
    "change, named",
    [
        ("drop", "model.mm_projector.token_pruner.norm.weight"),
        ("drop", "model.layers.1.self_attn.k_proj.bias"),
        ("extra", "model.mm_projector.token_pruner.layers.9.mlp.up_proj.weight"),
        ("extra", "model.vision_resampler.weight"),
    ],
)
def test_missing_or_unexpected_key_fails_naming_it(tiny_models, tmp_path, change, named):
    model, tok = tiny_models["qwen2"]
    save_released(model, tok, tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    if change == "drop":
        del state[named]
    else:
        state[named] = torch.zeros(2)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(errors.CheckpointMismatch) as info:
        load_model(str(tmp_path), device="cpu")
    assert named in str(info.value)
    assert ("missing" if change == "drop" else "unexpected") in str(info.value)


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.ModelNotFound) as info:
        load_model("ll-13/llava-largeimg-Qwen2-7B-not-cached", device="cpu")
    assert "--model" in str(info.value) and "local" in str(info.value).lower()


@pytest.mark.parametrize("device, said", [("gpu", "must be cpu, cuda or cuda:N"), ("cuda", "sees no CUDA GPU"),
                                          ("cuda:7", "CUDA"), ("mps", "not usable here")])
def test_an_unusable_device_is_refused_in_words_before_loading(device, said):
    """torch said 'AssertionError: Torch not compiled with CUDA enabled' or listed 20 device types."""
    import subprocess
    import sys

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    cmd = [sys.executable, "-m", "lrs_focus.cli", "ask", "x.tif", "q", "--model", "tiny", "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "error [bad_options]" in out.stderr and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_flash_attention_only_for_half_precision_and_never_for_the_rfm(monkeypatch):
    """flash-attn rejects float32 and would unpad the released stage-B placeholders: it is chosen only
    for fp16/bf16 on CUDA, and the RFM stays on sdpa whatever the LLM uses."""
    import sys
    import types

    import torch

    from lrs_focus.model.loading import choose_attention
    from lrs_focus.model.tiny import build_tiny

    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert choose_attention("cuda", torch.bfloat16) == choose_attention("cuda:1", torch.float16) == "flash_attention_2"
    assert choose_attention("cuda", torch.float32) == "sdpa"
    assert choose_attention("cpu", torch.bfloat16) == "sdpa"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed: import fails
    assert choose_attention("cuda", torch.bfloat16) == "sdpa"
    model, _ = build_tiny("qwen2")
    model.set_attention("flash_attention_2")
    assert model.llm.config._attn_implementation == "flash_attention_2"
    assert model.rfm.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in model.rfm.layers)
    model.set_attention("eager")
    assert model.rfm.config._attn_implementation == "eager"


def test_the_checkpoint_generation_config_is_read(tiny_models, tmp_path):
    """A released checkpoint's generation_config.json reaches `generate`, as the public code merges it."""
    import json

    model, tok = tiny_models["qwen2"]
    save_released(model, tok, tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.3, "eos_token_id": 5}))
    loaded, _, _ = load_model(str(tmp_path), device="cpu")
    assert loaded.llm.generation_config.repetition_penalty == 1.3
    assert loaded.llm.generation_config.eos_token_id == 5
