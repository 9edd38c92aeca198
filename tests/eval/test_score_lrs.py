"""LRS-VQA scorer on crafted answers files; every expected number is worked out below by hand."""

import json

import pytest

from lrs_focus.cli import main
from lrs_focus.evaluate import score_lrs


def _ans(qid, category, gt, text, **extra):
    return {"question_id": qid, "category": category, "ground_truth": gt, "text": text, **extra}


CRAFTED = [
    # FAIR --------------------------------------------------------------------------------
    _ans("FAIR_1", "object color", "gray", "Grey"),  # lower-cased grey/gray share a synset: right
    _ans("FAIR_2", "count", "2", "two"),  # digit vs number word, one synset: right
    _ans("FAIR_3", "count", "3", "4"),  # wrong
    _ans("FAIR_4", "object category", "car", "automobile"),  # synonyms: right
    _ans("FAIR_5", "reasoning", "yes", "no"),  # antonyms, no shared synset: wrong
    _ans("FAIR_6", "reasoning", "yes", ""),  # empty answer: wrong
    _ans("FAIR_7", "reasoning", "no", "yes"),  # superseded by the duplicate below
    _ans("FAIR_7", "reasoning", "no", "No"),  # duplicate id: the last line counts -> right
    # STAR --------------------------------------------------------------------------------
    _ans("STAR_1", "rural or urban", "urban", "urban"),  # exact: right
    _ans("STAR_2", "object shape", "round", "circular"),  # synonyms: right
    _ans("STAR_3", "object color", "white", "", status="failed",
         error={"code": "raster_not_found", "message": "image not found"}),  # failed: wrong
    _ans("STAR_4", "object color", "white", "white", covers_hbox=True,
         counts={"llm_vision_tokens": 700}, seconds=2.0),  # right, with cost and focus
    _ans("STAR_5", "object color", "red", "blue", covers_hbox=False,
         counts={"llm_vision_tokens": 900}, seconds=4.0),  # wrong
    # unknown ------------------------------------------------------------------------------
    _ans("XYZ_1", "count", "1", "1"),  # no such sub-dataset
    {"question_id": "STAR_9", "text": "yes"},  # no ground truth / category
]
# FAIR categories: object color 1/1 = 100; count 1/2 = 50; object category 1/1 = 100;
#   reasoning 1/3 (FAIR_5 wrong, FAIR_6 wrong, FAIR_7 right) = 33.33...
#   AA = (100 + 50 + 100 + 100/3) / 4 = 70.8333...; OA = 4/7 = 57.142857...
# STAR categories: rural or urban 1/1 = 100; object shape 1/1 = 100;
#   object color 1/3 (STAR_3 failed, STAR_4 right, STAR_5 wrong) = 33.33...
#   AA = (100 + 100 + 100/3) / 3 = 77.777...; OA = 3/5 (STAR_1, STAR_2, STAR_4) = 60
# mean_AA = (70.8333 + 77.7778) / 2 = 74.3055...; overall OA = (4 + 3)/(7 + 5) = 58.333...
# focus recall: STAR_4 covered, STAR_5 not -> 50 %; mean tokens (700+900)/2 = 800,
#   mean seconds 3.0 (records without counts do not enter the means)


@pytest.fixture
def crafted_file(tmp_path):
    path = tmp_path / "answers.jsonl"
    with open(path, "w") as fh:
        for rec in CRAFTED:
            fh.write(json.dumps(rec) + "\n")
        fh.write("{not json\n")  # malformed line
    return path


def test_crafted_numbers(crafted_file):
    doc = score_lrs.score_file(crafted_file)
    fair, star = doc["subsets"]["FAIR"], doc["subsets"]["STAR"]
    assert set(doc["subsets"]) == {"FAIR", "STAR"}
    assert fair["categories"] == pytest.approx(
        {"object color": 100.0, "count": 50.0, "object category": 100.0, "reasoning": 100 / 3}
    )
    assert fair["category_counts"] == {"object color": 1, "count": 2, "object category": 1, "reasoning": 3}
    assert fair["AA"] == pytest.approx(70.833333, abs=1e-4)
    assert fair["OA"] == pytest.approx(57.142857, abs=1e-4)
    assert star["categories"] == pytest.approx(
        {"rural or urban": 100.0, "object shape": 100.0, "object color": 100 / 3}
    )
    assert star["AA"] == pytest.approx(77.777778, abs=1e-4)
    assert star["OA"] == pytest.approx(60.0)
    assert doc["mean_AA"] == pytest.approx(74.305556, abs=1e-4)
    assert doc["OA"] == pytest.approx(58.333333, abs=1e-4)
    assert doc["n"] == 12
    assert doc["n_failed"] == 1
    assert doc["n_synonym_matches"] == 4  # FAIR_1, FAIR_2, FAIR_4, STAR_2
    assert doc["n_unknown"] == 2 and set(doc["unknown_ids"]) == {"XYZ_1", "STAR_9"}
    assert doc["n_duplicates"] == 1
    assert doc["n_malformed"] == 1
    assert doc["focus"] == {"recall": 50.0, "n_with_hbox": 2, "n_covered": 1}
    assert doc["cost"]["mean_llm_vision_tokens"] == 800.0
    assert doc["cost"]["mean_seconds"] == 3.0


def test_is_correct_rules():
    assert score_lrs.is_correct("Gray", "grey")
    assert score_lrs.is_correct("two", "2")
    assert not score_lrs.is_correct("yes", "no")
    assert not score_lrs.is_correct("", "yes")
    assert not score_lrs.is_correct(None, "yes")
    assert not score_lrs.is_correct("white.", "white")  # no punctuation stripping (official since d8d28bf)


def test_question_file_gives_truth_unknown_and_missing(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in [
        {"question_id": "FAIR_1", "image": "LRS_VQA/image/1.tif", "text": "colour?", "category": "object color", "ground_truth": "gray"},
        {"question_id": "FAIR_2", "image": "LRS_VQA/image/1.tif", "text": "how many?", "category": "count", "ground_truth": "2"},
        {"question_id": "FAIR_3", "image": "LRS_VQA/image/1.tif", "text": "status?", "category": "object status", "ground_truth": "parked"},
    ]) + "\n")
    answers = tmp_path / "a.jsonl"
    answers.write_text("\n".join(json.dumps(a) for a in [
        {"question_id": "FAIR_1", "text": "grey", "ground_truth": "WRONG", "category": "x"},  # file's truth wins
        {"question_id": "FAIR_2", "text": "3"},
        {"question_id": "FAIR_99", "text": "yes"},  # not in the question file
    ]) + "\n")
    doc = score_lrs.score_file(answers, questions)
    # FAIR: object color 1/1 = 100, count 0/1 = 0 -> AA 50, OA 50; FAIR_3 unanswered
    assert doc["subsets"]["FAIR"]["categories"] == {"object color": 100.0, "count": 0.0}
    assert doc["subsets"]["FAIR"]["AA"] == 50.0 and doc["subsets"]["FAIR"]["OA"] == 50.0
    assert doc["n_unknown"] == 1 and doc["unknown_ids"] == ["FAIR_99"]
    assert doc["n_missing"] == 1


def test_cli_json_contract(crafted_file, capsys):
    assert main(["score", "lrs", str(crafted_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["subsets"]) == {"FAIR", "STAR"}
    for subset in doc["subsets"].values():
        assert {"AA", "OA", "categories"} <= set(subset)
        assert all(0.0 <= v <= 100.0 for v in subset["categories"].values())
    assert doc["mean_AA"] == pytest.approx(74.305556, abs=1e-4)


def test_cli_text_table_and_report(crafted_file, tmp_path, capsys):
    assert main(["score", "lrs", str(crafted_file), str(crafted_file), "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| FAIR | reasoning | 3 | 33.33 |" in out
    assert "| FAIR | 7 | 70.83 | 57.14 |" in out
    assert "Comparison" in out
    assert (tmp_path / "rep" / "lrs-report.csv").read_text().startswith("mode,")
    assert (tmp_path / "rep" / "lrs-report.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_answers_file_is_an_error(tmp_path, capsys):
    assert main(["score", "lrs", str(tmp_path / "nope.jsonl")]) == 2
    assert "answers file not found" in capsys.readouterr().err


def test_numbers_in_answers_compare_as_text(tmp_path, capsys):
    """`"text": 2` (a tool that stores counts as numbers) ended `score lrs` in a traceback."""
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in [
        _ans("FAIR_1", "count", "2", 2), _ans("FAIR_2", "count", 3, "three"), _ans("FAIR_3", "count", "4", 5),
    ]) + "\n")
    assert main(["score", "lrs", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["subsets"]["FAIR"]["correct"] == 2 and doc["subsets"]["FAIR"]["n"] == 3
