"""`lrs-focus train` and `lrs-focus train needle --quick --json` through the real CLI entry point."""

import json

import pytest

from lrs_focus.cli import main


@pytest.mark.slow
def test_train_needle_quick_json(capsys, tmp_path):
    assert main(["train", "needle", "--quick", "--json", "--workdir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("before", "after"):
        assert 0.0 <= doc["rfm_recall_top25"][key] <= 1.0
        assert doc["rfm_recall_top25_by_level"]["base"][key] == doc["rfm_recall_top25"][key]
        assert 0.0 <= doc["rfm_recall_top25_control"]["base"][key] <= 1.0
    assert set(doc["accuracy"]) >= {"thumbnail", "all_tiles", "coarse_to_fine"}
    assert all(0.0 <= v <= 1.0 for v in doc["accuracy"].values())
    tokens = doc["llm_vision_tokens"]
    assert tokens["all_tiles"] > tokens["thumbnail"] > 0 and tokens["coarse_to_fine"] > tokens["thumbnail"]
    assert (tmp_path / "checkpoint" / "config.json").exists()


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
