"""The LVLM on transformers: config, assembly, released-layout loading, tiny preset, prompts.

    from lrs_focus.model.loading import load_model      # (model, tokenizer, info)
    from lrs_focus.model.tiny import build_tiny         # (model, tokenizer), random weights
    from lrs_focus.model.modeling import LrsFocusModel, MultimodalSequence, qk_logits
"""
