"""Unreadable question lines become items with an error, never silently skipped."""

import json

from lrs_focus.evaluate.records import lrs_subset, read_lrs


def test_malformed_lines_are_kept_with_a_reason(tmp_path):
    path = tmp_path / "LRS_VQA" / "q.jsonl"
    path.parent.mkdir()
    good = {"question_id": "STAR_5", "image": "LRS_VQA/image/a.png", "text": "q?", "category": "count", "ground_truth": "1"}
    path.write_text(
        json.dumps(good) + "\n"
        + "{broken\n"
        + "\n"  # blank lines are not records
        + json.dumps({"question_id": "FAIR_2", "text": "q?"}) + "\n"
        + "[1, 2]\n"
    )
    items = read_lrs(path)
    assert [it.question_id for it in items] == ["STAR_5", "line-2", "FAIR_2", "line-5"]
    assert items[0].error is None and items[0].image == tmp_path / "LRS_VQA/image/a.png"
    assert "malformed JSON on line 2" in items[1].error
    assert "lacks image" in items[2].error
    assert "not a JSON object" in items[3].error


def test_subset_is_prefix_before_first_underscore():
    assert lrs_subset("GLH-Bridge_12") == "GLH-Bridge"
    assert lrs_subset("FAIR_1_2") == "FAIR"


def test_repeated_question_id_is_a_failed_line_not_an_overwrite(tmp_path):
    """Answers are keyed by id: a second question under a used id would replace the first one's
    answer in the merged file and be skipped as done on resume; it is kept as `line-<n>`."""
    path = tmp_path / "LRS_VQA" / "q.jsonl"
    path.parent.mkdir()
    rec = {"question_id": "FAIR_1", "image": "LRS_VQA/image/a.png", "text": "q?", "category": "count", "ground_truth": "1"}
    path.write_text("\n".join(json.dumps(r) for r in [rec, dict(rec, text="other?"), {"question_id": "FAIR_1"}]) + "\n")
    items = read_lrs(path)
    assert [it.question_id for it in items] == ["FAIR_1", "line-2", "line-3"]
    assert items[0].error is None and items[0].prompt == "q?"
    assert items[1].error == "question id FAIR_1 on line 2 repeats line 1"
    assert items[2].error.startswith("question id FAIR_1 on line 3 repeats line 1; ") and "lacks image" in items[2].error
