"""End to end: real records, small synthetic images, the tiny model, two processes via torchrun
(CPU, gloo), merged and scored; broken inputs are reported as failed and the run goes on."""

import json
import os
import subprocess
import sys

import pytest

from lrs_focus.cli import main


@pytest.mark.slow
def test_two_process_run_merge_and_score(tmp_path, lrs_questions, evalkit, capsys):
    root = tmp_path / "data"
    records = evalkit.sample_records(lrs_questions, per_subset=1, seed=7)  # 3 boxed + 1 count
    evalkit.synthesise_images(records, root, long_side=320)
    (root / "LRS_VQA" / "image" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = [
        dict(records[0], question_id="FAIR_900001", image="LRS_VQA/image/missing.tif"),
        dict(records[1], question_id="GLH-Bridge_900002", image="LRS_VQA/image/corrupt.png"),
    ]
    questions = evalkit.write_jsonl(root / "LRS_VQA" / "LRS_VQA_merged.jsonl", records + bad, ['{"question_id": '])
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lrs_focus.evaluate.run", "lrs", str(questions), "--model", "tiny", "--modes", "paper,thumbnail",
           "--max-new-tokens", "4", "--out", str(out), "--no-progress", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # only rank 0 prints
    assert doc["world_size"] == 2 and doc["rank"] == 0
    assert doc["model"]["random_weights"] is True
    # counts gathered from both ranks: 7 lines x 2 modes, each line handled by exactly one rank
    for mode in ("paper", "thumbnail"):
        per_rank = [counts[mode] for counts in doc["rank_counts"]]
        assert sum(c["answered"] + c["failed"] for c in per_rank) == 7
        assert sum(c["failed"] for c in per_rank) == 3 and all(c["skipped"] == 0 for c in per_rank)

    # each rank wrote its own shard; shares are disjoint and together cover every line
    for mode in ("paper", "thumbnail"):
        shards = sorted((out / "shards").glob(f"lrs-{mode}.rank*-of-2.jsonl"))
        assert len(shards) == 2
        ids = [{json.loads(line)["question_id"] for line in open(s)} for s in shards]
        assert ids[0] and ids[1] and not ids[0] & ids[1]
        merged = [json.loads(line) for line in open(out / f"lrs-{mode}.jsonl")]
        assert {r["question_id"] for r in merged} == ids[0] | ids[1]
        assert len(merged) == 7
        by_id = {r["question_id"]: r for r in merged}
        assert by_id["FAIR_900001"]["error"]["code"] == "raster_not_found"
        assert by_id["GLH-Bridge_900002"]["status"] == "failed"
        assert by_id["GLH-Bridge_900002"]["error"]["code"] in ("not_a_raster", "raster_unreadable")
        assert by_id["line-7"]["error"]["code"] == "malformed_record"
        for rec in records:
            got = by_id[rec["question_id"]]
            assert got["status"] == "ok", got
            assert got["counts"]["llm_vision_tokens"] > 0 and got["seconds"] > 0
            if mode == "paper" and "hbox" in rec:
                assert isinstance(got["covers_hbox"], bool) and got["kept_tiles"]
            if mode == "thumbnail":
                assert got["covers_hbox"] is None

    paper, thumb = doc["modes"]["paper"], doc["modes"]["thumbnail"]
    assert paper["n"] == 6 and paper["n_failed"] == 2 and paper["n_unknown"] == 1
    assert set(paper["subsets"]) == {"FAIR", "GLH-Bridge", "STAR"}
    assert paper["focus"]["n_with_hbox"] == 3 and thumb["focus"]["recall"] is None
    assert thumb["cost"]["mean_llm_vision_tokens"] < paper["cost"]["mean_llm_vision_tokens"]
    assert (out / "lrs-report.md").read_text().count("|") > 10
    assert (out / "lrs-report.png").read_bytes()[:4] == b"\x89PNG"

    # the standalone scorer agrees with the run's own scoring
    assert main(["score", "lrs", str(out / "lrs-paper.jsonl"), "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["subsets"] == paper["subsets"] and rescored["mean_AA"] == paper["mean_AA"]
