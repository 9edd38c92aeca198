"""A few seconds of real training: the distillation loss falls, the checkpoint loads and answers."""

import torch

from lrs_focus.model.loading import load_model
from lrs_focus.train.data import load_conversations
from lrs_focus.train.distill import layer_pairs, sequence_losses, student_logits, teacher_logits
from lrs_focus.train.trainer import (
    TrainConfig,
    ViewCache,
    build_training_sequence,
    expand,
    pyramid_config,
    save_checkpoint,
    train,
)


def test_layer_pairs_default_first_and_last():
    assert [(p.teacher, p.student) for p in layer_pairs([1, 5, 11, 14])] == [(1, 1), (14, 4)]
    assert [(p.teacher, p.student) for p in layer_pairs([1, 5, 11, 14], "all")] == [(1, 1), (5, 2), (11, 3), (14, 4)]
    assert [(p.teacher, p.student) for p in layer_pairs([1, 3], "1")] == [(3, 2)]


def test_student_equals_teacher_when_rfm_copies_the_llm(needle_json):
    """With RFM layers = LLM layers 0..R-1 and pairs (l, l), teacher and student logits coincide:
    the signals read the same q/k of the same layer on the same hidden states."""
    model, tok, _ = load_model("tiny-llama", seed=1)  # Llama: RFM and LLM head layouts agree
    model.config.rfm_layer_list = [1, 2]
    model.init_rfm_from_llm([0, 1, 2])
    item = expand(load_conversations(needle_json))[0]
    views = ViewCache(pyramid_config(model))(item.sample.image)
    with torch.no_grad():
        seq = build_training_sequence(model, tok, views, item.question, item.answer)
        pairs = layer_pairs([1, 2], "all")
        hidden = model.llm_forward(seq, output_hidden_states=True).hidden_states
        for (tv, th), (sv, sh) in zip(teacher_logits(model, seq, hidden, pairs), student_logits(model, seq, pairs)):
            torch.testing.assert_close(tv, sv, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(th, sh, atol=1e-4, rtol=1e-4)
        out = sequence_losses(model, seq, pairs)
    assert abs(float(out.distill)) < 1e-5 and float(out.lm) > 0


def test_short_training_lowers_distill_loss_and_checkpoint_runs(needle_json, tmp_path):
    model, tok, _ = load_model("tiny", seed=0)
    items = expand(load_conversations(needle_json))
    cfg = TrainConfig(steps=12, batch_size=2, lr=3e-3, train="rfm", log_every=4, seed=0)
    result = train(model, tok, items, cfg)
    assert result.last["distill"] < 0.5 * result.first["distill"], result.history
    # one step of the full objective (LM + distillation) runs too
    full = train(model, tok, items, TrainConfig(steps=2, batch_size=2, lr=1e-3, log_every=1, init_rfm=False))
    assert full.last["lm"] > 0 and full.last["distill"] >= 0

    out = save_checkpoint(model, tok, tmp_path / "ckpt")
    loaded, _, info = load_model(str(out))
    assert info["random_weights"] is False
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k

    from lrs_focus.engine import AskOptions, Engine

    result = Engine(str(out)).ask(str(items[0].sample.image), items[0].question, AskOptions(mode="paper", max_new_tokens=3))
    assert isinstance(result["answer"], str) and result["counts"]["llm_vision_tokens"] > 0


def test_batched_losses_equal_per_sample_losses(needle_json):
    """Padding a batch must not change any sample's LM or distillation loss."""
    from lrs_focus.train.distill import batch_losses
    from lrs_focus.train.trainer import build_training_batch

    model, tok, _ = load_model("tiny", seed=2)
    model.init_rfm_from_llm()
    items = expand(load_conversations(needle_json))[:3]
    views = ViewCache(pyramid_config(model))
    pairs = layer_pairs(model.config.rfm_layer_list)
    with torch.no_grad():
        seqs = build_training_batch(model, tok, [views(i.sample.image) for i in items], [(i.question, i.answer) for i in items])
        assert len({s.length for s in seqs}) > 1 or len(items) == 1  # really padded
        single = [sequence_losses(model, s, pairs) for s in seqs]
        for item, one in zip(items, single):  # one vision-tower call for the batch = per-image calls
            seq = build_training_sequence(model, tok, views(item.sample.image), item.question, item.answer)
            torch.testing.assert_close(one.total, sequence_losses(model, seq, pairs).total, atol=1e-4, rtol=1e-4)
        both = batch_losses(model, seqs, pairs)
        n_answer = [int((s.labels >= 0).sum()) for s in seqs]
        lm = sum(o.lm * k for o, k in zip(single, n_answer)) / sum(n_answer)
        torch.testing.assert_close(both.lm, lm, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both.distill, torch.stack([o.distill for o in single]).mean(), atol=1e-5, rtol=1e-4)
