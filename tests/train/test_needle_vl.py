"""`lrs-focus train needle --family qwen2.5-vl`: the stock Qwen2.5-VL needle check's pipeline and instruments.

The quick run proves the pipeline (train with the stock LM loss, save in the hub layout, load with
`Engine(dir)`, recall per layer, answers per mode); its figures mean nothing at that size."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lrs_focus.train.data import load_conversations
from lrs_focus.train.needle_vl import VLNeedleConfig, attention_recall, build_model, training_batch
from lrs_focus.train.trainer import expand


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    work = tmp_path_factory.mktemp("needle-vl")
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "train", "needle", "--family", "qwen2.5-vl",
                           "--quick", "--json", "--workdir", str(work)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), work


def test_quick_needle_vl_json_shape(quick):
    doc, work = quick
    assert {"n_questions", "chance_top25", "attention_recall_top25", "attention_recall_top25_by_layer",
            "focus_layer", "accuracy", "llm_vision_tokens"} <= set(doc)
    n = doc["n_questions"]
    assert n == VLNeedleConfig.quick().test_images
    assert {"thumbnail", "all_tiles", "coarse_to_fine"} <= set(doc["accuracy"]) == set(doc["llm_vision_tokens"])
    by_layer = doc["attention_recall_top25_by_layer"]
    assert sorted(by_layer, key=int) == ["0", "1", "2", "3"]
    assert doc["attention_recall_top25"] == by_layer[str(doc["focus_layer"])]
    # the layer is chosen on validation scenes, not on the held-out ones
    val = doc["validation_recall_top25_by_layer"]
    assert val[str(doc["focus_layer"])] == max(val.values())
    rates = [*by_layer.values(), *doc["accuracy"].values()]
    assert all(0.0 <= r <= 1.0 and abs(r * n - round(r * n)) < 1e-9 for r in rates), rates
    assert 0.0 < doc["chance_top25"] < 1.0
    t = doc["llm_vision_tokens"]
    assert 0 < t["thumbnail"] < t["all_tiles"] and t["coarse_to_fine"] > t["thumbnail"]
    m = doc["model"]
    assert m["class"] == "Qwen2_5_VLForConditionalGeneration" and m["token_px"] == 14 and m["tile_px"] == 224
    # the checkpoint is in the hub layout and loads as a user's directory does
    ckpt = work / "checkpoint"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (ckpt / name).exists(), name
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_chance_lm_loss_is_ln4_over_the_mean_labelled_length():
    from lrs_focus.train.needle_vl import chance_lm_loss, needle_tokenizer
    from lrs_focus.train.synthetic import COLOURS

    tok = needle_tokenizer()
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in COLOURS]
    assert chance_lm_loss(tok, tuple(COLOURS)) == pytest.approx(np.log(4) / np.mean(lengths))
    assert 0.3 < chance_lm_loss(tok, tuple(COLOURS)) < 0.5  # the 0.40 plateau of the runs is chance


def test_llava_needle_is_still_the_default():
    from lrs_focus.cli import build_parser

    args = build_parser().parse_args(["train", "needle", "--quick"])
    assert args.needle_family == "llava"


def test_training_batch_labels_only_the_answer(needle_json):
    """Prompt = `build_prompt` of the one image + question (the chat template, pads expanded to the
    processor's grid); labels = answer tokens + <|im_end|>; the stock forward takes the batch."""
    model = build_model(VLNeedleConfig.quick())
    items = expand(load_conversations(needle_json))[:2]
    batch = training_batch(model, items)
    tok = model.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    grids = batch["image_grid_thw"].tolist()
    for i, (item, grid) in enumerate(zip(items, grids)):
        prompt = model.build_prompt([(None, tuple(grid))], item.question)
        n = len(prompt.ids)
        answer = tok(item.answer, add_special_tokens=False)["input_ids"] + [end]
        assert batch["input_ids"][i, :n].tolist() == prompt.ids
        lab = batch["labels"][i]
        assert (lab[:n] == -100).all() and lab[n:n + len(answer)].tolist() == answer and (lab[n + len(answer):] == -100).all()
        assert int((batch["input_ids"][i] == model.image_token_id).sum()) == grid[0] * grid[1] * grid[2] // 4
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == model.image_token_id).int())
    with torch.no_grad():
        loss = model.hf(**batch).loss
    assert torch.isfinite(loss)


def test_attention_recall_of_a_forced_map(needle_json, monkeypatch):
    """A focus map with all weight on the dot's pixel box hits every question at every layer; the reverse, none."""
    from lrs_focus.vl_answer import AttentionScorer

    model = build_model(VLNeedleConfig.quick())
    items = expand(load_conversations(needle_json))
    real = AttentionScorer.__call__

    def forced(sign):
        def call(self, canvas):
            scores = real(self, canvas)  # runs the real path; the map is replaced after
            base = self.geometry.levels[0]
            out = np.full(canvas.size, -sign, dtype=np.float64)
            (box,) = current["boxes"]
            for i in range(canvas.size):
                if canvas.col[i] == canvas.cols:
                    continue
                x0, y0, x1, y1 = self.geometry.token_window_float(base, int(canvas.row[i]), int(canvas.col[i]))
                if x0 < box[2] and box[0] < x1 and y0 < box[3] and box[1] < y1:
                    out[i] = sign
            assert scores.shape == out.shape
            return out
        return call

    current = {}
    boxes = iter([it.sample.extra["boxes"] for it in items for _ in range(model.config.num_layers)] * 2)

    def next_boxes(self, canvas, _orig=None):
        current["boxes"] = next(boxes)

    for sign, expected in ((1.0, 1.0), (-1.0, 0.0)):
        call = forced(sign)
        monkeypatch.setattr(AttentionScorer, "__call__", lambda self, canvas, call=call: (next_boxes(self, canvas),
                                                                                          call(self, canvas))[1])
        res = attention_recall(model, items)
        assert res["n"] == len(items) and set(res["by_layer"].values()) == {expected}
        assert 0.0 < res["chance"] < 1.0
