"""scripts/gpu_check.sh stays runnable: its CPU smoke run (tiny preset) through the same code."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--preset", "tiny", "--device", "cpu",
                           "--size", "1500x1100", "--max-new-tokens", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["mode"] for r in doc["runs"]] == ["paper", "all-tiles"]
    for run in doc["runs"]:
        assert run["seconds"]["total"] > 0 and run["tokens"]["llm_sequence_tokens"] > 0
    assert doc["rfm_bf16_vs_float32"]["top25_overlap"] == 1.0  # float32 on CPU: identical


def test_gpu_check_smoke_on_cpu_qwen_vl(tmp_path):
    """The Qwen-VL presets run through the same script (tiny preset here; qwen2.5-vl-7b / qwen3-vl-8b on a GPU)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--preset", "tiny-qwen2.5-vl", "--device", "cpu",
                           "--size", "1500x1100", "--max-new-tokens", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    paper, full = doc["runs"]
    assert paper["tokens"]["llm_vision_tokens"] < full["tokens"]["llm_vision_tokens"]
    assert doc["focus_bf16_vs_float32"]["top25_overlap"] == 1.0  # float32 on CPU: identical


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_gpu_check_refuses_without_cuda_clearly():
    proc = subprocess.run([str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
