"""`lrs-focus train` and `lrs-focus train needle --quick` through the real CLI (a subprocess, as a user runs it)."""

import json
import subprocess
import sys

import pytest

from lrs_focus.cli import main

#: keys whose values are measured times, not results
TIMES = ("timings", "cpu_seconds", "seconds_per_question")


def _needle(tmp_path, *extra):
    proc = subprocess.run([sys.executable, "-m", "lrs_focus.cli", "train", "needle", "--quick", "--json",
                           "--workdir", str(tmp_path), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # stdout holds exactly one JSON document; logs went to stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return _needle(tmp_path_factory.mktemp("needle"))


def test_quick_needle_json_shape(quick):
    doc = quick
    assert {"n_questions", "chance_top25", "teacher_recall_top25", "control_recall_top25", "rfm_recall_top25",
            "accuracy", "llm_vision_tokens"} <= set(doc)
    n = doc["n_questions"]
    assert n == 4  # NeedleConfig.quick: 4 held-out scenes, one question each
    assert set(doc["control_recall_top25"]) == set(doc["rfm_recall_top25"]) == {"before", "after"}
    assert {"thumbnail", "all_tiles", "coarse_to_fine"} <= set(doc["accuracy"])
    assert {"all_tiles", "coarse_to_fine"} <= set(doc["llm_vision_tokens"])
    recalls = [doc["teacher_recall_top25"], *doc["rfm_recall_top25"].values(), *doc["accuracy"].values(),
               *(r[k] for r in doc["control_runs"] for k in ("before", "after"))]
    assert all(0.0 <= r <= 1.0 and abs(r * n - round(r * n)) < 1e-9 for r in recalls), recalls  # counts of n
    assert 0.0 < doc["chance_top25"] < 1.0
    assert doc["teacher_layer"] == doc["config"]["rfm_layer_list"][-1]
    assert doc["teacher_recall_top25"] == doc["teacher_recall_top25_by_layer"]["after_distillation"][str(doc["teacher_layer"])]
    assert sum(doc["answer_counts"].values()) == n
    assert doc["cpu_seconds"]["total"] > 0 and doc["timings"]["total"] > 0


def test_quick_needle_tokens_follow_the_modes(quick):
    """What a short run shows without depending on what it learned: the token budget of each mode."""
    tokens, tiles = quick["llm_vision_tokens"], quick["tiles_encoded"]
    assert tokens["thumbnail"] == 64  # the tiny model's 8x8 thumbnail, nothing else
    assert tokens["thumbnail"] < tokens["base_tiles"] < tokens["all_tiles"]
    assert tokens["coarse_to_fine"] < tokens["all_tiles"] / 3  # 25% kept per level, newline tokens aside
    assert tiles["thumbnail"] == 0 and tiles["base_tiles"] == 9  # 672-px quick scenes: 3x3 base tiles
    assert tiles["coarse_to_fine"] < tiles["all_tiles"]


def test_quick_needle_controls_distillation_lowers_their_loss(quick):
    runs, histories = quick["control_runs"], quick["training"]["controls"]
    assert len(runs) == len(histories) == quick["config"]["controls"] == 2
    for key in ("before", "after"):
        assert quick["control_recall_top25"][key] == pytest.approx(sum(r[key] for r in runs) / len(runs))
    for control in histories:
        assert control[-1]["distill"] < control[0]["distill"], control
        assert all(h["lm"] == 0.0 for h in control)  # controls train the RFM only, on distillation alone


def test_same_seed_same_numbers_other_seed_other_data(quick, tmp_path):
    again = _needle(tmp_path / "same")
    assert {k: v for k, v in again.items() if k not in TIMES} == {k: v for k, v in quick.items() if k not in TIMES}
    other = _needle(tmp_path / "other", "--seed", "1")
    assert [e["id"] for e in other["examples"]] != [e["id"] for e in quick["examples"]]


def test_needle_text_summary(capsys, tmp_path):
    assert main(["train", "needle", "--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out questions: 4" in out and "control RFM" in out and "CPU" in out


def test_train_on_llava_json_writes_loadable_checkpoint(capsys, tmp_path, needle_json):
    out = tmp_path / "ckpt"
    code = main(["train", "--data", str(needle_json), "--model", "tiny", "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--lr", "1e-3", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["checkpoint"] == str(out) and doc["last"]["lm"] > 0
    from lrs_focus.model.loading import load_model

    _, _, info = load_model(str(out))
    assert info["random_weights"] is False


def test_train_without_data_is_a_clear_error(capsys):
    assert main(["train"]) == 2
    assert "--data" in capsys.readouterr().err
