"""What one question's run shares across model families: the record of a run, the family test, and
the cancel hooks that reach inside forward passes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import Cancelled
from .features import TileEncoder
from .focus import FocusResult
from .model.qwen_vl import QwenVLFocusModel
from .options import StopFn


def is_vl(model: Any) -> bool:
    """A stock Qwen2.5-VL / Qwen3-VL checkpoint (attention focus), not the released LLaVA + RFM."""
    return isinstance(model, QwenVLFocusModel)


def transformer_blocks(model: Any) -> list[Any]:
    """Every block a question's forward passes run: vision tower, LLM and RFM (LLaVA) or vision and
    language model (Qwen-VL)."""
    if is_vl(model):
        return [*model.hf.model.visual.blocks, *model.hf.model.language_model.layers]
    return [*model.vision_tower.encoder.layers, *model.llm.model.layers, *model.rfm.layers]


@contextlib.contextmanager
def cancel_between_layers(model: Any, should_stop: StopFn | None, beat: Any = None) -> Iterator[None]:
    """A cancel is honoured between two blocks of any forward pass, not only between stages: one prefill
    of tens of thousands of tokens takes seconds on a CPU and minutes on a slow card. `beat()` (the
    work meter's heartbeat) is called there too, so a long pass keeps sending progress."""
    if should_stop is None and beat is None:
        yield
        return

    def poll(module: Any, args: Any) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled during a forward pass")
        if beat is not None:
            beat(cancel=False)

    handles = [block.register_forward_pre_hook(poll) for block in transformer_blocks(model)]
    if beat is not None:  # and after each block: the last one of a pass is followed by its score
        handles += [block.register_forward_hook(lambda m, a, out: beat(cancel=False)) for block in transformer_blocks(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cancel_check(should_stop: StopFn | None, beat: Any = None):
    """The check between strip reads: cancel, and the work meter's heartbeat (a message when the
    last one is `work_meter.HEARTBEAT_S` old, not one per strip)."""

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled while reading pixels")
        if beat is not None:
            beat()

    return check


@dataclass
class Run:
    """What one question produced before it is turned into the result document."""

    result: FocusResult
    answer: str
    sequence_tokens: int
    budget: dict[str, int]
    encoder: TileEncoder
    timings: dict[str, float]
    n_max: int
    llm_vision_tokens: int | None = None  # what the LLM read (None: thumbnail + kept tokens)
    max_pass_tokens: int | None = None  # longest focus pass (None: text + the largest RFM pass's vision)
    answer_source: dict | None = None  # where the answer came from (None: the local model)
