"""Benchmark question files -> `EvalItem`s (image path, prompt, the original record).

A line that cannot be read becomes an item carrying `error` instead of being skipped, so the
runner writes it out as a failed answer: nothing is dropped silently.

LRS-VQA (`LRS_VQA_merged.jsonl`): `image` is relative to the parent of the `LRS_VQA/` folder,
so the default image root is the question file's grandparent. MME-RealWorld-RS
(`MME_RealWorld_RS.json`, a JSON list; JSONL accepted too): `Image` is relative to the folder of
the question file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

#: LRS-VQA sub-datasets, in the paper's table order; a question id is "<SUBSET>_<n>".
LRS_SUBSETS = ("FAIR", "GLH-Bridge", "STAR")
LRS_REQUIRED = ("question_id", "image", "text")
MME_REQUIRED = ("Question_id", "Image", "Text", "Answer choices")

#: MME-RealWorld's multiple-choice instruction. The official trailing "The best answer is:" is
#: left out, as in the paper: with it, Vicuna-based models answer "A" almost always.
MME_INSTRUCTION = (
    "Select the best answer to the above multiple-choice question based on the image. "
    "Respond with only the letter (A, B, C, D, or E) of the correct option."
)


@dataclass
class EvalItem:
    question_id: str
    image: Optional[Path]
    prompt: str
    record: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # set when the record itself is unusable


def lrs_subset(question_id: str) -> str:
    """The sub-dataset of an LRS-VQA id: the part before the first '_' (as the official script)."""
    return str(question_id).split("_", 1)[0]


def default_lrs_image_root(questions: Path) -> Path:
    return Path(questions).resolve().parent.parent


def default_mme_image_root(questions: Path) -> Path:
    return Path(questions).resolve().parent


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any, Optional[str]]]:
    """(line number, parsed value or None, error or None) for each non-blank line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"malformed JSON on line {number}: {exc.msg}"


def _item(record: Any, number: int, error: Optional[str], id_key: str, required: tuple[str, ...]):
    """Common validation: returns (question_id, error) for a parsed record."""
    if error is None and not isinstance(record, dict):
        error = f"line {number} is not a JSON object"
    qid = str(record.get(id_key)) if isinstance(record, dict) and record.get(id_key) is not None else None
    if error is None:
        missing = [k for k in required if not isinstance(record, dict) or record.get(k) in (None, "")]
        if missing:
            error = f"record on line {number} lacks {', '.join(missing)}"
    return qid or f"line-{number}", error


def _items(values, id_key: str, required, root: Path, image_key: str,
           prompt: Callable[[dict[str, Any]], str]) -> list[EvalItem]:
    """(line number, record, read error) -> EvalItems; a bad record becomes a failed item, kept.

    A repeated question id becomes a failed item `line-<n>`: answers are keyed by id, so a second
    question under the same id would otherwise overwrite the first one's answer (and be skipped as
    done on resume)."""
    items, first_line = [], {}
    for number, record, error in values:
        qid, error = _item(record, number, error, id_key, required)
        if qid in first_line:
            repeat = f"question id {qid} on line {number} repeats line {first_line[qid]}"
            qid, error = f"line-{number}", repeat + (f"; {error}" if error else "")
        else:
            first_line[qid] = number
        if error:
            items.append(EvalItem(qid, None, "", record if isinstance(record, dict) else {}, error))
            continue
        items.append(EvalItem(qid, root / record[image_key], prompt(record), record))
    return items


def read_lrs(questions: Path, image_root: Optional[Path] = None) -> list[EvalItem]:
    """Every line of an LRS-VQA question file, in file order."""
    questions = Path(questions)
    root = Path(image_root) if image_root else default_lrs_image_root(questions)
    return _items(iter_json_lines(questions), "question_id", LRS_REQUIRED, root, "image", lambda r: r["text"])


def mme_prompt(record: dict[str, Any]) -> str:
    """The multiple-choice prompt of the paper's MME-RealWorld runner (without '<image>\\n')."""
    choices = "\n".join(record["Answer choices"])
    return f"{record['Text']} The choices are listed below: \n\n{choices}\n{MME_INSTRUCTION}"


def _mme_values(questions: Path) -> Iterator[tuple[int, Any, Optional[str]]]:
    text = Path(questions).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            yield 0, None, f"malformed JSON in {questions}: {exc.msg} (line {exc.lineno})"
            return
        for index, value in enumerate(values, start=1):
            yield index, value, None
    else:
        yield from iter_json_lines(questions)


def read_mme(questions: Path, image_root: Optional[Path] = None) -> list[EvalItem]:
    """MME-RealWorld(-RS) records, from the official JSON list or JSONL."""
    questions = Path(questions)
    root = Path(image_root) if image_root else default_mme_image_root(questions)
    return _items(_mme_values(questions), "Question_id", MME_REQUIRED, root, "Image", mme_prompt)


READERS = {"lrs": read_lrs, "mme": read_mme}
