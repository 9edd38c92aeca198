"""The needle check's measuring instruments: the teacher's attention score, the recall targets, answers."""

import numpy as np
import torch

from lrs_focus.model.loading import load_model
from lrs_focus.train.data import load_conversations
from lrs_focus.train.needle import NeedleConfig, focus_recall, normalise_answer, teacher_scores, token_targets, untrained_rfm
from lrs_focus.train.trainer import ViewCache, build_training_sequence, expand, pyramid_config


def test_teacher_score_is_the_rfm_score_of_a_copied_layer(needle_json):
    """An RFM copied from LLM layers 0, 1, 2 scores with layer 2 on the output of layers 0-1: exactly the
    LLM's own layer-2 attention. So the teacher measure reads the right layer, hidden state and keys."""
    model, tok, _ = load_model("tiny-llama", seed=3)
    model.init_rfm_from_llm([0, 1, 2])
    item = expand(load_conversations(needle_json))[0]
    views = ViewCache(pyramid_config(model))
    with torch.no_grad():
        seq = build_training_sequence(model, tok, views(item.sample.image), item.question, None)
        hidden = model.llm_forward(seq, output_hidden_states=True).hidden_states
        teacher = teacher_scores(model, seq, hidden, 2)
        torch.testing.assert_close(teacher, model.rfm_scores(seq), atol=1e-5, rtol=1e-4)
        assert teacher.shape == (seq.tiles.stop - seq.tiles.start,)
        assert abs(float(teacher.sum()) - 1.0) < 1e-5
        other = teacher_scores(model, seq, hidden, 3)
    assert not torch.allclose(teacher, other)


def test_token_targets_cover_the_box(needle_json):
    model, _, _ = load_model("tiny", seed=0)
    views = ViewCache(pyramid_config(model))
    for item in expand(load_conversations(needle_json)):
        v = views(item.sample.image)
        rows, cols = v.token_grid
        geo, base = v.geometry, v.geometry.levels[0]
        (box,) = item.sample.extra["boxes"]
        targets = token_targets(v, [box])
        assert targets.shape == (rows, cols + 1) and not targets[:, cols].any()
        # independently: a base token is a square of `size` original pixels on a grid from (0, 0)
        x0, y0, x1, _ = geo.token_window_float(base, 0, 0)
        assert (x0, y0) == (0, 0)
        size = x1
        expected = np.zeros_like(targets)
        expected[int(box[1] // size): int(np.ceil(box[3] / size)), int(box[0] // size): int(np.ceil(box[2] / size))] = True
        np.testing.assert_array_equal(targets, expected)
    assert not token_targets(v, []).any()


def test_focus_recall_of_a_forced_score(needle_json, monkeypatch):
    """A score with all weight on the dot's tokens hits every question; one that avoids them, none."""
    model, tok, _ = load_model("tiny", seed=0)
    views = ViewCache(pyramid_config(model))
    items = expand(load_conversations(needle_json))
    masks = [token_targets(views(i.sample.image), i.sample.extra["boxes"]) for i in items]

    def forced(sign):
        queue = iter(masks)  # focus_recall scores the items once each, in order
        return lambda seq: torch.from_numpy(np.where(next(queue).ravel(), sign, -sign).astype(np.float32))

    monkeypatch.setattr(model, "rfm_scores", forced(1.0))
    good = focus_recall(model, tok, items, views)
    monkeypatch.setattr(model, "rfm_scores", forced(-1.0))
    bad = focus_recall(model, tok, items, views)
    assert good["rfm"] == 1.0 and bad["rfm"] == 0.0
    assert good["n"] == len(items) and 0.0 < good["chance"] < 1.0 and good["teacher"] == {}


def test_control_rfm_is_untrained_but_the_rest_is_the_model():
    model, _, _ = load_model("tiny", seed=0)
    control = untrained_rfm(model, NeedleConfig())
    for (name, a), b in zip(model.state_dict().items(), control.state_dict().values()):
        if not name.startswith("rfm."):
            assert torch.equal(a, b), name
        elif name.endswith("proj.weight"):
            assert not torch.equal(a, b), name


def test_normalise_answer():
    assert normalise_answer(" Red.") == "red" and normalise_answer("grey") == "gray" and normalise_answer("") == ""
