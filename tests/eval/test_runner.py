"""Runner logic with a stand-in engine: resume, failures with reasons, sharding and merge."""

import json

import pytest

from lrs_focus.evaluate import answers as answer_files
from lrs_focus.evaluate.coverage import covers_box, kept_tiles
from lrs_focus.evaluate.distributed import Shard, shard_from_env
from lrs_focus.evaluate.runner import EvalConfig, run_eval


@pytest.fixture
def small_benchmark(tmp_path, lrs_questions, evalkit):
    """4 real records with small images, + missing image, unreadable image, malformed line."""
    root = tmp_path / "data"
    records = evalkit.sample_records(lrs_questions, per_subset=1, seed=1)
    evalkit.synthesise_images(records, root, long_side=200)
    missing = dict(records[0], question_id="FAIR_900001", image="LRS_VQA/image/does-not-exist.tif")
    broken_path = root / "LRS_VQA" / "image" / "broken.tif"
    broken_path.write_bytes(b"II*\x00 this is not really a TIFF")
    broken = dict(records[1], question_id="STAR_900002", image="LRS_VQA/image/broken.tif")
    questions = evalkit.write_jsonl(root / "LRS_VQA" / "q.jsonl", [*records, missing, broken], ["{oops"])
    return questions, [r["question_id"] for r in records]


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_failures_are_recorded_and_run_goes_on_then_resume(tmp_path, small_benchmark, evalkit):
    questions, good_ids = small_benchmark
    out = tmp_path / "out"
    config = EvalConfig("lrs", questions, out, modes=["paper", "thumbnail"], progress=False)
    engine = evalkit.FakeEngine()
    doc = run_eval(config, engine=engine, shard=Shard())

    merged = _read(out / "lrs-paper.jsonl")
    by_id = {r["question_id"]: r for r in merged}
    assert len(merged) == len(by_id) == 7  # every line of the question file, once
    assert [r["question_id"] for r in merged][:4] == good_ids  # question-file order
    assert all(by_id[q]["status"] == "ok" and by_id[q]["text"] == "yes" for q in good_ids)
    assert by_id["FAIR_900001"]["status"] == "failed"
    assert by_id["FAIR_900001"]["error"]["code"] == "raster_not_found"
    assert "does-not-exist.tif" in by_id["FAIR_900001"]["error"]["message"]
    assert by_id["STAR_900002"]["error"]["code"] in ("not_a_raster", "raster_unreadable")
    assert by_id["line-7"]["error"]["code"] == "malformed_record"
    # official fields and our extras
    rec = by_id[good_ids[0]]
    for key in ("question_id", "prompt", "text", "category", "ground_truth", "answer_id", "model_id",
                "kept_tiles", "counts", "seconds", "covers_hbox", "mode"):
        assert key in rec
    assert rec["model_id"] == "fake" and rec["mode"] == "paper"
    assert rec["kept_tiles"] == [{"level": 0, "row": 0, "col": 0, "window": rec["kept_tiles"][0]["window"]}]
    thumb = {r["question_id"]: r for r in _read(out / "lrs-thumbnail.jsonl")}
    assert thumb[good_ids[0]]["covers_hbox"] is None  # nothing kept: recall does not apply

    score = doc["modes"]["paper"]
    assert score["n"] == 6 and score["n_failed"] == 2 and score["n_unknown"] == 1  # line-7 has no truth
    assert doc["modes"]["thumbnail"]["focus"]["recall"] is None
    assert doc["modes"]["paper"]["cost"]["mean_llm_vision_tokens"] == 720.0
    assert doc["modes"]["thumbnail"]["cost"]["mean_llm_vision_tokens"] == 576.0
    assert (out / "lrs-report.png").exists() and "| paper |" in doc["report"]["table"]

    # resume: answered ids are skipped; only the failed ones that reach the engine are retried
    engine2 = evalkit.FakeEngine()
    doc2 = run_eval(config, engine=engine2, shard=Shard())
    assert sorted(engine2.asked) == sorted(["STAR_900002"] * 2)  # missing image fails before the engine
    assert doc2["shard_counts"]["paper"] == {"answered": 0, "failed": 3, "skipped": 4}
    merged2 = _read(out / "lrs-paper.jsonl")
    assert [r["question_id"] for r in merged2] == [r["question_id"] for r in merged]
    assert {r["answer_id"] for r in merged2 if r["status"] == "ok"} == {
        r["answer_id"] for r in merged if r["status"] == "ok"}  # answers kept, not redone


def test_shards_are_disjoint_and_merge_covers_all(tmp_path, small_benchmark, evalkit):
    questions, good_ids = small_benchmark
    out = tmp_path / "out"
    config = EvalConfig("lrs", questions, out, modes=["paper"], progress=False)
    doc1 = run_eval(config, engine=evalkit.FakeEngine(), shard=Shard(1, 2))
    assert "modes" not in doc1  # only rank 0 merges and scores
    doc0 = run_eval(config, engine=evalkit.FakeEngine(), shard=Shard(0, 2))
    ids0 = {r["question_id"] for r in _read(answer_files.shard_path(out, "lrs", "paper", 0, 2))}
    ids1 = {r["question_id"] for r in _read(answer_files.shard_path(out, "lrs", "paper", 1, 2))}
    assert ids0 and ids1 and not ids0 & ids1
    merged = {r["question_id"] for r in _read(doc0["answers"]["paper"])}
    assert merged == ids0 | ids1 and len(merged) == 7


def test_shard_from_env():
    assert shard_from_env({}) == Shard(0, 1, 0)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    assert shard_from_env({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, 1)
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_bad_mode_fails_before_any_work(tmp_path, small_benchmark, evalkit):
    from lrs_focus.errors import BadOptions

    questions, _ = small_benchmark
    engine = evalkit.FakeEngine()
    with pytest.raises(BadOptions, match="modes"):
        run_eval(EvalConfig("lrs", questions, tmp_path / "o", modes=["zoom"]), engine=engine)
    with pytest.raises(BadOptions, match="alpha"):
        run_eval(EvalConfig("lrs", questions, tmp_path / "o", options={"alpha": 2.0}), engine=engine)
    for limit in (-1, 0):  # `--limit -1` used to answer all questions but the last
        with pytest.raises(BadOptions, match="limit"):
            run_eval(EvalConfig("lrs", questions, tmp_path / "o", limit=limit), engine=engine)
    assert engine.asked == []


def _trace(kept_cells, stopped_at=1):
    """Base 2x2 over a 1000x800 raster, then a 4x4 level; `kept_cells` kept at level 1."""
    def level(i, n):
        return {"level": i, "grid": [n, n], "tiles": [
            {"row": r, "col": c, "window": [c * 1000 // n, r * 800 // n, (c + 1) * 1000 // n, (r + 1) * 800 // n],
             "kept": (i == 1 and (r, c) in kept_cells) or i == 0}
            for r in range(n) for c in range(n)]}
    return {"levels": [level(0, 2), level(1, 4)], "stopped_at": stopped_at}


def test_coverage_of_hbox():
    trace = _trace({(0, 0)})  # kept: x 0-250, y 0-200 of a 1000x800 raster
    assert [t["window"] for t in kept_tiles(trace)] == [[0, 0, 250, 200]]
    assert covers_box(trace, [100, 100, 120, 120])
    assert not covers_box(trace, [600, 500, 700, 600])
    assert not covers_box(trace, [250, 0, 300, 50])  # touching the edge is not covering
    # the box is in the original image's pixels (4000x3200): scaled by 1/4 onto the raster
    assert covers_box(trace, [400, 400, 480, 480], image_size=[4000, 3200])
    assert not covers_box(trace, [1200, 900, 1300, 1000], image_size=[4000, 3200])  # 300-325, 225-250
    # stopped at the base level: its kept tiles count
    assert covers_box(_trace(set(), stopped_at=0), [600, 500, 700, 600])
    assert covers_box({"levels": [], "stopped_at": None}, [0, 0, 1, 1]) is None


def test_resume_after_a_partial_run_with_another_world_size(tmp_path, small_benchmark, evalkit):
    """Rank 0 of 2 ran alone (rank 1 died); a later single-process run answers only the rest."""
    questions, good_ids = small_benchmark
    out = tmp_path / "out"
    config = EvalConfig("lrs", questions, out, modes=["paper"], progress=False, report=False)
    first = evalkit.FakeEngine()
    run_eval(config, engine=first, shard=Shard(0, 2))
    second = evalkit.FakeEngine()
    doc = run_eval(config, engine=second, shard=Shard())
    answered_first = {q for q in first.asked if q in good_ids}
    assert answered_first and not answered_first & set(second.asked)
    assert set(good_ids) <= answered_first | set(second.asked)
    merged = _read(doc["answers"]["paper"])
    assert len(merged) == 7 and {r["question_id"] for r in merged if r["status"] == "ok"} == set(good_ids)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_take_whole_images_disjoint_and_covering(world):
    items = [(f"q{i}", f"img{[0, 1, 0, 2, 1, 3, 0, 2, 4][i]}") for i in range(9)]
    shares = [Shard(r, world).take_groups(items, key=lambda it: it[1]) for r in range(world)]
    assert sorted(q for share in shares for q in share) == sorted(items)  # disjoint and covering
    for share in shares:
        images = [img for _, img in share]
        runs = [img for i, img in enumerate(images) if i == 0 or images[i - 1] != img]
        assert len(runs) == len(set(images))  # each image's questions back to back, on one rank only
        for img in set(images):  # in question-file order within an image
            qs = [q for q, i in share if i == img]
            assert qs == [q for q, i in items if i == img]


def test_questions_about_one_image_run_back_to_back(tmp_path, small_benchmark, evalkit):
    questions, good_ids = small_benchmark
    lines = [json.loads(line) for line in open(questions) if line.startswith("{\"")]
    first = lines[0]
    extra = [dict(first, question_id=f"FAIR_80000{i}", text=f"follow-up {i}") for i in range(2)]
    interleaved = [lines[0], lines[1], extra[0], lines[2], extra[1]]
    qfile = evalkit.write_jsonl(tmp_path / "q.jsonl", interleaved, [])
    image_root = questions.parent.parent
    seen = []

    class Recording(evalkit.FakeEngine):
        def ask(self, raster, question, options=None, **kw):
            seen.append(raster)
            return super().ask(raster, question, options, **kw)

    config = EvalConfig("lrs", qfile, tmp_path / "out", image_root=image_root, modes=["paper"], progress=False)
    run_eval(config, engine=Recording(), shard=Shard())
    assert seen[:3] == [seen[0]] * 3 and seen[0].endswith(first["image"].split("/")[-1])
    merged = [r["question_id"] for r in _read(tmp_path / "out" / "lrs-paper.jsonl")]
    assert merged == [r["question_id"] for r in interleaved]  # the answers file keeps the question order


def test_repeated_question_id_keeps_both_lines_in_order(tmp_path, small_benchmark, evalkit):
    questions, good_ids = small_benchmark
    lines = [json.loads(line) for line in open(questions) if line.startswith("{\"")]
    repeated = [lines[0], lines[1], dict(lines[2], question_id=lines[0]["question_id"]), lines[3]]
    qfile = evalkit.write_jsonl(tmp_path / "q.jsonl", repeated, [])
    config = EvalConfig("lrs", qfile, tmp_path / "out", image_root=questions.parent.parent, modes=["paper"],
                        progress=False, report=False)
    doc = run_eval(config, engine=evalkit.FakeEngine(), shard=Shard())
    merged = _read(doc["answers"]["paper"])
    assert [r["question_id"] for r in merged] == [good_ids[0], good_ids[1], "line-3", good_ids[3]]
    assert merged[0]["status"] == "ok" and merged[0]["prompt"] == lines[0]["text"]  # not overwritten
    assert merged[2]["error"]["code"] == "malformed_record" and "repeats line 1" in merged[2]["error"]["message"]
    assert doc["shard_counts"]["paper"] == {"answered": 3, "failed": 1, "skipped": 0}


def test_torn_last_shard_line_does_not_swallow_the_next_answer(tmp_path, small_benchmark, evalkit, caplog):
    """A run killed in the middle of writing a line leaves it without its newline; the next run
    used to append its first answer onto it, and that answer vanished from the merged file."""
    questions, good_ids = small_benchmark
    out = tmp_path / "out"
    config = EvalConfig("lrs", questions, out, modes=["paper"], progress=False, report=False, limit=3)
    run_eval(config, engine=evalkit.FakeEngine(), shard=Shard())
    shard = answer_files.shard_path(out, "lrs", "paper", 0, 1)
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # the third line torn
    (out / "lrs-paper.jsonl").unlink()
    engine = evalkit.FakeEngine()
    doc = run_eval(config, engine=engine, shard=Shard())
    assert engine.asked == [json.loads(lines[2])["question_id"]]
    assert [r["question_id"] for r in _read(doc["answers"]["paper"])] == good_ids[:3]
    assert "1 unreadable line(s) skipped" in caplog.text


def test_unusable_out_or_empty_selection_refused_before_the_model_loads(tmp_path, small_benchmark, capsys):
    """A 7B checkpoint loads for minutes: an --out under a file, or a --subset the file lacks, used
    to be found only afterwards. A model that cannot load shows which check came first."""
    from lrs_focus.cli import main

    questions, _ = small_benchmark
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base = ["eval", "lrs", str(questions), "--model", str(tmp_path / "no-such-checkpoint"), "--no-progress"]
    assert main([*base, "--out", str(blocker / "run")]) == 2
    assert "error [io_error]" in capsys.readouterr().err
    fair = tmp_path / "fair.jsonl"
    fair.write_text("".join(line for line in open(questions) if '"FAIR_' in line))
    assert main(["eval", "lrs", str(fair), *base[3:], "--subset", "STAR", "--out", str(tmp_path / "o")]) == 2
    assert "no questions selected" in capsys.readouterr().err
