"""`lrs-focus eval mme` in one process with the tiny model: prompt, Output field, scoring."""

import json

from lrs_focus.cli import main

CHOICES = ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) The image does not feature the objects."]


def test_eval_mme_tiny(tmp_path, capsys):
    from lrs_focus.samples import write_synthetic_raster

    root = tmp_path / "MME"
    write_synthetic_raster(root / "remote_sensing" / "00001_x.tif", 400, 300, geotransform=None)
    base = {"Text": "How many planes are there?", "Answer choices": CHOICES, "Ground truth": "B",
            "Task": "Perception", "Subtask": "Remote Sensing", "Category": "count"}
    questions = root / "MME_RealWorld_RS.json"
    questions.write_text(json.dumps([
        {**base, "Question_id": "perception/remote_sensing/count/1", "Image": "remote_sensing/00001_x.tif"},
        {**base, "Question_id": "perception/remote_sensing/count/2", "Image": "remote_sensing/gone.png"},
    ]))
    out = tmp_path / "out"
    assert main(["eval", "mme", str(questions), "--model", "tiny", "--modes", "thumbnail",
                 "--max-new-tokens", "3", "--out", str(out), "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    score = doc["modes"]["thumbnail"]
    assert score["n"] == 2 and score["n_failed"] == 1
    assert set(score["categories"]) == {"count"}
    records = [json.loads(line) for line in open(out / "mme-thumbnail.jsonl")]
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert isinstance(records[0]["Output"], str) and records[0]["Ground truth"] == "B"
    assert records[0]["prompt"].endswith("Respond with only the letter (A, B, C, D, or E) of the correct option.")
    assert records[1]["error"]["code"] == "raster_not_found"
    # text output of the scorer on the same file
    assert main(["score", "mme", str(out / "mme-thumbnail.jsonl")]) == 0
    assert "| all (micro) | 2 |" in capsys.readouterr().out


def test_eval_mme_with_a_qwen_vl_preset(tmp_path, capsys):
    """`eval mme --model tiny-qwen3-vl` in paper mode with the attention focus options: answers, coverage, scores."""
    from lrs_focus.samples import write_synthetic_raster

    root = tmp_path / "MME"
    write_synthetic_raster(root / "remote_sensing" / "00001_x.tif", 1700, 1300)
    questions = root / "MME_RealWorld_RS.json"
    questions.write_text(json.dumps([{"Text": "How many planes are there?", "Answer choices": CHOICES,
                                      "Ground truth": "B", "Task": "Perception", "Subtask": "Remote Sensing",
                                      "Category": "count", "Question_id": "perception/remote_sensing/count/1",
                                      "Image": "remote_sensing/00001_x.tif"}]))
    out = tmp_path / "out"
    assert main(["eval", "mme", str(questions), "--model", "tiny-qwen3-vl", "--modes", "paper",
                 "--focus", "relative", "--focus-layer", "2", "--max-new-tokens", "2", "--out", str(out),
                 "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["modes"]["paper"]["n"] == 1 and doc["modes"]["paper"]["n_failed"] == 0
    (record,) = [json.loads(line) for line in open(out / "mme-paper.jsonl")]
    assert record["status"] == "ok" and isinstance(record["Output"], str)
