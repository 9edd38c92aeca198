"""A stand-in engine for the service tests, and (run as a script) a server process around it.

The fake honours the `AskEngine` contract of engine.py: progress at every stage, `should_stop`
polled at every stage boundary (raising errors.Cancelled), failures raised as the backend's
errors. The question steers it, so remote tests can ask for a failure: "fail:<code>" (codes
raster_not_found, out_of_memory, cuda_out_of_memory, or anything else for a crash),
"sleep:<seconds per stage>", "stuck:<seconds>" (one stage that ignores should_stop, like a long
uncancellable C call), "big:<bytes>" (a result padded to that size).
With `tokenizer=True` it has a whitespace tokenizer, like a real engine's `engine.tokenizer`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from lrs_focus import errors

STAGES = ("open", "pyramid", "encode", "focus", "generate")


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError: the service recognises it by class name."""


def whitespace_tokenizer(text: str) -> dict:
    return {"input_ids": list(range(len(text.split())))}


class FakeEngine:
    def __init__(self, stage_s: float = 0.0, tokenizer: bool = False):
        self.stage_s = stage_s
        self.calls = 0
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.rasters: list[str] = []  # the paths the engine was handed
        if tokenizer:
            self.tokenizer = whitespace_tokenizer

    def describe(self):
        return {"model": "fake", "device": "cpu", "dtype": "float32", "random_weights": True}

    def ask(self, raster, question, options=None, progress=None, should_stop=None, job_id=""):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self._ask(raster, question, options, progress, should_stop, job_id)
        finally:
            with self.lock:
                self.active -= 1

    def _ask(self, raster, question, options, progress, should_stop, job_id):
        self.rasters.append(raster)
        stage_s = self.stage_s
        if question.startswith("sleep:"):
            stage_s = float(question.split(":", 1)[1])
        if question.startswith("stuck:"):
            time.sleep(float(question.split(":", 1)[1]))
        for i, stage in enumerate(STAGES):
            if should_stop is not None and should_stop():
                raise errors.Cancelled(f"cancelled before stage {stage}")
            if progress is not None:
                progress(stage, 0 if stage == "encode" else None, i / len(STAGES), f"stage {stage}")
            if stage == "open" and question.startswith("fail:"):
                code = question.split(":", 1)[1]
                if code == "raster_not_found":
                    raise errors.RasterNotFound(f"no raster at {raster}")
                if code == "out_of_memory":
                    raise MemoryError("fake out of memory")
                if code == "cuda_out_of_memory":
                    pinned = bytearray(50 << 20)  # noqa: F841 (freed with the traceback)
                    raise OutOfMemoryError("CUDA error: fake allocation of 50 MiB failed")
                raise RuntimeError("fake model crash")
            time.sleep(stage_s)
        if progress is not None:
            progress("done", None, 1.0, "")
        padding = "x" * int(question.split(":", 1)[1]) if question.startswith("big:") else ""
        return {"answer": f"fake answer to {question!r}", "job_id": job_id, "padding": padding,
                "trace": {"levels": []}, "counts": {"tiles_encoded": 0, "vit_tokens": 0, "llm_vision_tokens": 0,
                                                    "prefill_tflops": 0.0},
                "features": {"type": "FeatureCollection", "features": []}, "crs_wkt": "",
                "timings": {"total": stage_s * len(STAGES)},
                "options": options.to_dict() if options is not None else {}}


def main() -> int:
    from lrs_focus.service import Server, ServiceLimits

    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("--stage-s", type=float, default=0.0)
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--keys-dir")
    p.add_argument("--force-curve", action="store_true")
    p.add_argument("--allow-root", action="append", default=None, help="apply an AccessPolicy with these roots")
    p.add_argument("--stalled-peer-timeout", type=float, default=None)
    a = p.parse_args()
    limits = ServiceLimits() if a.stalled_peer_timeout is None else \
        ServiceLimits(stalled_peer_timeout_s=a.stalled_peer_timeout)
    access = None
    if a.allow_root is not None:
        from lrs_focus.access import AccessPolicy

        access = AccessPolicy(roots=tuple(a.allow_root))
    server = Server(FakeEngine(a.stage_s), a.endpoint, queue_size=a.queue_size, keys_dir=a.keys_dir,
                    force_curve=a.force_curve, access=access, limits=limits)
    print(f"READY {server.endpoint}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
