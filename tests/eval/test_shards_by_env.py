"""Shards started by hand (RANK / WORLD_SIZE, no MASTER_ADDR: no process group, no barrier), then
`--merge-only`: what is not answered yet is counted, and merging a mode never run is an error."""

import json
import os
import subprocess
import sys

from lrs_focus.cli import main


def _eval(questions, out, *extra, env=None):
    cmd = [sys.executable, "-m", "lrs_focus.evaluate.run", "lrs", str(questions), "--model", "tiny",
           "--modes", "thumbnail", "--max-new-tokens", "2", "--out", str(out), "--no-progress", "--json", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")} | (env or {})
    env |= {"OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_hand_started_shards_then_merge_only(tmp_path, lrs_questions, evalkit, capsys):
    root = tmp_path / "data"
    records = evalkit.sample_records(lrs_questions, per_subset=1, seed=3)
    evalkit.synthesise_images(records, root, long_side=160)
    questions = evalkit.write_jsonl(root / "LRS_VQA" / "q.jsonl", records)
    out = tmp_path / "out"

    rank1 = _eval(questions, out, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert rank1.returncode == 0, rank1.stderr[-3000:]
    assert rank1.stdout == ""  # only rank 0 prints
    answered_by_1 = [json.loads(line)["question_id"] for line in open(out / "shards" / "lrs-thumbnail.rank1-of-2.jsonl")]
    assert 0 < len(answered_by_1) < len(records)

    # rank 0 has not run: the merge says how many selected questions are still unanswered
    assert main(["eval", "lrs", str(questions), "--modes", "thumbnail", "--out", str(out), "--merge-only", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["modes"]["thumbnail"]["n_missing"] == len(records) - len(answered_by_1)
    assert doc["modes"]["thumbnail"]["n"] == len(answered_by_1)

    rank0 = _eval(questions, out, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert rank0.returncode == 0, rank0.stderr[-3000:]
    doc0 = json.loads(rank0.stdout)
    assert doc0["modes"]["thumbnail"]["n_missing"] == 0 and doc0["modes"]["thumbnail"]["n"] == len(records)
    merged = [json.loads(line)["question_id"] for line in open(out / "lrs-thumbnail.jsonl")]
    assert merged == [r["question_id"] for r in records]  # question-file order, each once

    # a mode never run in this folder (or a mistyped --out): an error, no empty answers file
    assert main(["eval", "lrs", str(questions), "--modes", "thumbnail,paper", "--out", str(out), "--merge-only"]) == 2
    assert "nothing to merge for mode paper" in capsys.readouterr().err
    assert not (out / "lrs-paper.jsonl").exists()
    assert main(["eval", "lrs", str(questions), "--modes", "thumbnail", "--out", str(tmp_path / "typo"), "--merge-only"]) == 2
    assert not (tmp_path / "typo").exists()
