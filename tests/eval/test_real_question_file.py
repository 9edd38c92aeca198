"""The scorer over every record of the real LRS-VQA question file (7,333 records)."""

import json

from lrs_focus.cli import main
from lrs_focus.evaluate.records import read_lrs

EXPECTED = {
    "FAIR": {"count": 400, "object category": 387, "object shape": 285, "object status": 400,
             "reasoning": 400, "rural or urban": 400},
    "GLH-Bridge": {"count": 400, "object background": 245, "object color": 165, "rural or urban": 252},
    "STAR": {"count": 399, "object category": 600, "object color": 600, "object shape": 600,
             "object status": 600, "reasoning": 600, "rural or urban": 600},
}


def test_reader_reads_every_record(lrs_questions):
    items = read_lrs(lrs_questions)
    assert len(items) == 7333
    assert all(it.error is None for it in items)
    assert len({it.question_id for it in items}) == 7333
    first = items[0]
    assert first.question_id == "FAIR_1"
    # images are relative to the parent of LRS_VQA/, i.e. the question file's grandparent
    assert first.image == lrs_questions.resolve().parent.parent / "LRS_VQA/image/15565.tif"
    assert first.prompt.endswith("\n Answer the question using a single word or phrase.")
    assert sum("hbox" in it.record for it in items) == 6134


def test_scorer_counts_per_subset_and_category(lrs_questions, tmp_path, capsys):
    """Answer every question with its ground truth: 100 % everywhere, counts as in the file."""
    answers = tmp_path / "oracle.jsonl"
    with open(answers, "w") as fh:
        for it in read_lrs(lrs_questions):
            fh.write(json.dumps({"question_id": it.question_id, "text": it.record["ground_truth"]}) + "\n")
    assert main(["score", "lrs", str(answers), "--questions", str(lrs_questions), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    counts = {name: s["category_counts"] for name, s in doc["subsets"].items()}
    assert counts == EXPECTED
    assert {name: s["n"] for name, s in doc["subsets"].items()} == {"FAIR": 2272, "GLH-Bridge": 1062, "STAR": 3999}
    assert {name: len(s["categories"]) for name, s in doc["subsets"].items()} == {"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}
    assert doc["mean_AA"] == 100.0 and doc["n"] == 7333
    assert doc["n_unknown"] == 0 and doc["n_missing"] == 0 and doc["n_failed"] == 0
    # the same answers scored from their own fields only (no question file) must agree
    assert main(["score", "lrs", str(answers), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_unknown"] == 7333  # no ground truth in the answers
