"""MME-RealWorld letter extraction (official rules, quirks included) and micro accuracy."""

import json

import pytest

from lrs_focus.cli import main
from lrs_focus.evaluate.records import mme_prompt, read_mme
from lrs_focus.evaluate.score_mme import extract_letter, score_file

CHOICES = ["(A) red", "(B) white", "(C) blue", "(D) green", "(E) The image does not feature the color."]


@pytest.mark.parametrize(
    "output, letter",
    [
        ("B", "B"),
        ("The best answer is C", "C"),
        ("(D) green", "D"),
        ("the answer is probably white", ""),  # lower-case only: no letter; not inside a choice
        ("white", "B"),  # no capital A-E: contained in choice B
        ("This is a very long answer that does not name any option at all here", ""),  # > 10 words, no letter
        ("", "A"),  # official quirk: "" is contained in the first choice
        ("Both options are wrong", "B"),  # official: the first capital A-E anywhere ("B" of "Both")
    ],
)
def test_extract_letter(output, letter):
    assert extract_letter(output, CHOICES) == letter


def _rec(qid, category, gt, output, **extra):
    return {"Question_id": qid, "Image": "remote_sensing/x.png", "Text": "What colour is the roof?",
            "Answer choices": CHOICES, "Ground truth": gt, "Task": "Perception",
            "Subtask": "Remote Sensing", "Category": category, "Output": output, **extra}


def test_crafted_micro_accuracy(tmp_path, capsys):
    records = [
        _rec("p1", "color", "B", "B"),  # right
        _rec("p2", "color", "A", "C"),  # wrong
        _rec("p3", "count", "E", "E"),  # right (an E answer)
        _rec("p4", "count", "B", "", status="failed", error={"code": "raster_not_found", "message": "x"}),  # wrong
        _rec("p5", "position", "D", "The answer is D"),  # right
        _rec("p5", "position", "D", "A"),  # duplicate: last line counts -> wrong
    ]
    path = tmp_path / "mme.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    doc = score_file(path)
    # color 1/2 = 50, count 1/2 = 50, position 0/1 = 0; micro 2/5 = 40 (mean of categories would be 33.3)
    assert doc["categories"] == {"color": 50.0, "count": 50.0, "position": 0.0}
    assert doc["accuracy"] == 40.0
    assert doc["n"] == 5 and doc["n_failed"] == 1 and doc["n_duplicates"] == 1 and doc["n_answer_e"] == 1
    assert main(["score", "mme", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 40.0
    # the official merged output is a JSON list: same result
    as_list = tmp_path / "mme.json"
    as_list.write_text(json.dumps(records))
    assert score_file(as_list)["accuracy"] == 40.0


def test_prompt_and_reader(tmp_path):
    rec = _rec("p1", "color", "B", None)
    rec.pop("Output")
    expected = ("What colour is the roof? The choices are listed below: \n\n" + "\n".join(CHOICES) + "\n"
                "Select the best answer to the above multiple-choice question based on the image. "
                "Respond with only the letter (A, B, C, D, or E) of the correct option.")
    assert mme_prompt(rec) == expected
    assert "The best answer is" not in mme_prompt(rec)
    path = tmp_path / "MME_RealWorld_RS.json"
    bad = {k: v for k, v in rec.items() if k != "Answer choices"} | {"Question_id": "p2"}
    path.write_text(json.dumps([rec, bad]))
    items = read_mme(path)
    assert items[0].image == tmp_path / "remote_sensing/x.png" and items[0].error is None
    assert items[1].question_id == "p2" and "Answer choices" in items[1].error
