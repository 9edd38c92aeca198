"""What `lrs-focus train` refuses, and when: before the model loads for options, data and --out; as
soon as the loss is NaN; and what a checkpoint folder holds after a save that was cut short."""

import json
import subprocess
import sys

import pytest
import torch

from lrs_focus.cli import main
from lrs_focus.errors import ModelNotFound
from lrs_focus.model.loading import load_model, save_released


def _write(tmp_path, records, name="sft.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def _record(image, question="<image>\nWhat colour is the dot?", answer="red", rid="r0"):
    return {"id": rid, "image": str(image), "conversations": [{"from": "human", "value": question},
                                                              {"from": "gpt", "value": answer}]}


@pytest.fixture
def image(needle_json):
    """An absolute path to one needle raster (the needle JSON's paths are relative to it)."""
    return needle_json.parent / json.loads(needle_json.read_text())[0]["image"]


def _train(tmp_path, data, *extra, out="ckpt"):
    return main(["train", "--data", str(data), "--model", "tiny", "--out", str(tmp_path / out), "--steps", "1",
                 "--batch-size", "1", "--json", *extra])


@pytest.mark.parametrize("extra, says", [
    (["--steps", "0"], "steps must be at least 1"),
    (["--batch-size", "0"], "batch-size must be at least 1"),
    (["--grad-accum", "0"], "grad-accum must be at least 1"),  # was accepted silently
    (["--lr", "nan"], "lr must be a finite number"),  # wrote a NaN checkpoint
    (["--lr", "-1"], "lr must be a finite number"),  # gradient ascent
    (["--lm-weight", "0", "--distill-weight", "0"], "nothing to train"),
    (["--pairs", "x"], "--pairs"),
    (["--device", "gpu"], "device must be cpu, cuda or cuda:N"),
])
def test_bad_options_are_refused_without_a_checkpoint(tmp_path, needle_json, capsys, extra, says):
    assert _train(tmp_path, needle_json, *extra) == 2
    err = capsys.readouterr().err
    assert "[bad_options]" in err and says in err, err
    assert not (tmp_path / "ckpt" / "config.json").exists()


def test_nan_loss_stops_training_and_writes_no_checkpoint(tmp_path, needle_json, capsys):
    assert _train(tmp_path, needle_json, "--lr", "1e6", "--steps", "6", "--batch-size", "2") == 2
    captured = capsys.readouterr()
    assert "loss became nan" in captured.err and captured.out == ""  # no JSON with NaN in it
    assert not (tmp_path / "ckpt" / "config.json").exists()


@pytest.mark.parametrize("record, says", [
    ({"id": "a", "image": None, "conversations": []}, "needs an image path"),
    ({"id": "a", "image": "x.tif", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]},
     'needs a text "value"'),
    ("x.tif", "needs an image path"),
])
def test_malformed_records_are_bad_options_not_tracebacks(tmp_path, capsys, record, says):
    assert _train(tmp_path, _write(tmp_path, [record])) == 2
    err = capsys.readouterr().err
    assert "[bad_options]" in err and says in err, err


def test_missing_image_empty_answer_and_control_tokens_are_refused(tmp_path, image, capsys):
    cases = [
        (_record(tmp_path / "nope.tif", rid="lost"), "'lost'"),  # was found mid-run, after loading the model
        (_record(image, answer="  "), "empty answer"),
        (_record(image, answer="red<|im_end|>blue"), "control token '<|im_end|>'"),  # trained as the real token
        (_record(image, question="<image>\nQ<|im_end|>"), "the question contains"),
    ]
    for i, (record, says) in enumerate(cases):
        assert _train(tmp_path, _write(tmp_path, [record], f"d{i}.json")) == 2
        err = capsys.readouterr().err
        assert "[bad_options]" in err and says in err, (record, err)


def test_sequence_longer_than_max_length_is_refused_not_trained(tmp_path, image, capsys):
    model, tok, _ = load_model("tiny")
    model.config.max_length = 300  # a thumbnail and 3x3 base tiles take ~220 tokens
    small = save_released(model, tok, tmp_path / "small")
    data = _write(tmp_path, [_record(image, answer=" ".join(["red"] * 200), rid="long")])
    code = main(["train", "--data", str(data), "--model", str(small), "--out", str(tmp_path / "ckpt"),
                 "--steps", "1", "--batch-size", "1", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and "record 'long'" in err and "max_length 300" in err, err


def test_out_is_checked_before_training(tmp_path, needle_json, capsys):
    (tmp_path / "file").write_text("x")
    assert _train(tmp_path, needle_json, out="file/ckpt") == 2  # was a traceback after training
    assert "[output_error]" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert _train(tmp_path, needle_json, out="busy") == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "busy" / "notes.txt").exists()


def test_overwrite_replaces_stale_weights_of_another_format(tmp_path, needle_json, capsys):
    """A .bin left in --out (e.g. the released checkpoint trained in place) was read after the new
    safetensors and won: the checkpoint loaded the old weights."""
    out = tmp_path / "ckpt"
    out.mkdir()
    model, _, _ = load_model("tiny")
    torch.save({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, out / "pytorch_model.bin")
    assert _train(tmp_path, needle_json, "--overwrite") == 0
    capsys.readouterr()
    loaded, _, _ = load_model(str(out))
    assert float(loaded.llm.lm_head.weight.detach().abs().sum()) > 0
    assert not (out / "pytorch_model.bin").exists()


def test_save_cut_short_leaves_no_loadable_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C during the save of a new checkpoint over an old one: never new weights with the old
    tokenizer (or the reverse) loading silently."""
    model, tok, _ = load_model("tiny")
    out = save_released(model, tok, tmp_path / "ckpt")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tok), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_released(model, tok, out)
    with pytest.raises(ModelNotFound, match="config.json"):
        load_model(str(out))


def test_rfm_lr_zero_freezes_the_rfm(needle_json):
    from lrs_focus.train.data import load_conversations
    from lrs_focus.train.trainer import TrainConfig, expand, train

    model, tok, _ = load_model("tiny")
    before = {k: v.clone() for k, v in model.rfm.state_dict().items()}
    train(model, tok, expand(load_conversations(needle_json))[:2],
          TrainConfig(steps=2, batch_size=1, lr=1e-2, rfm_lr=0.0, init_rfm=False, train="rfm"))
    assert all(torch.equal(before[k], v) for k, v in model.rfm.state_dict().items())  # `or` took 0 as unset


def test_bad_option_fails_fast_as_a_process(tmp_path, needle_json):
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "train", "--data", str(needle_json), "--model",
                           "tiny", "--out", str(tmp_path / "ckpt"), "--grad-accum", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "RFM initialised" not in proc.stderr  # refused before the model was built


def test_needle_steps_zero_is_refused_not_the_default_run(tmp_path, capsys):
    """`train needle --steps 0` ran the default 4000 LVLM steps (`if args.needle_steps:`)."""
    assert main(["train", "needle", "--quick", "--steps", "0", "--workdir", str(tmp_path)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
