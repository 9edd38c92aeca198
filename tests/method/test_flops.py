"""The analytic cost reproduces the paper's Table 4 figures from token counts alone."""

import pytest

from lrs_focus.flops import QWEN2_7B, llm_prefill_flops, method_prefill_tflops

SHAPE = {k: QWEN2_7B[k] for k in ("hidden", "intermediate", "llm_layers")}


@pytest.mark.parametrize("tokens, tflops", [(21312, 243.37), (5328, 43.75), (9280, 83.56)])
def test_llm_only_rows(tokens, tflops):
    assert llm_prefill_flops(tokens, 3584, 18944, 28) / 1e12 == pytest.approx(tflops, abs=0.01)


def test_rfm_prune_row_includes_one_rfm_pass():
    # "+ RFM prune (Ours)": 5,760 tokens to the LLM after the 5-layer RFM read all 21,312
    assert method_prefill_tflops(5760, [21312], rfm_layers=5, **SHAPE) == pytest.approx(82.56, abs=0.01)
