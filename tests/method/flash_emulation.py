"""flash-attn's masking on a CPU: transformers' own FA2 code path with the kernels replaced by torch.

`transformers.integrations.flash_attention.flash_attention_forward` -> `_flash_attention_forward`
unpads q/k/v with a 2-D mask (`_upad_input`), calls `flash_attn_varlen_func` on the packed
sequences and pads the output back with zeros; without a mask it calls `flash_attn_func`. Here the
two kernels are sdpa per sequence (causal, bottom-right aligned, GQA), so everything transformers
does around them (which queries survive the unpadding, what the padded rows hold) is exercised as
on a CUDA machine with flash-attn installed. Installed by setting the module globals that
`lazy_import_flash_attention` returns once an implementation is loaded.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    """One sequence, FA layout (n, heads, dim) -> (n_q, heads, dim); causal aligned bottom-right as FA2 >= 2.1."""
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    if k.shape[0] != q.shape[0]:
        k, v = (x.repeat_interleave(q.shape[0] // x.shape[0], dim=0) for x in (k, v))
    mask = None
    if causal:
        n_q, n_k = q.shape[1], k.shape[1]
        mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(0, 1)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False):
    out = torch.zeros_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = (int(x) for x in (cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]))
        out[qs:qe] = _sdpa(q[qs:qe], k[ks:ke], v[ks:ke], causal, softmax_scale)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    return torch.stack([_sdpa(q[b], k[b], v[b], causal, softmax_scale) for b in range(q.shape[0])])


@contextlib.contextmanager
def emulated_flash_attention_2() -> Iterator[None]:
    """While active, "flash_attention_2" runs transformers' FA2 path with the torch kernels above."""
    from transformers import modeling_flash_attention_utils as fa

    names = ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
             "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn")
    saved = {n: getattr(fa, n) for n in names}
    fa._loaded_implementation = "flash_attention_2"
    fa._flash_fn, fa._flash_varlen_fn, fa._flash_with_kvcache_fn = flash_attn_func, flash_attn_varlen_func, None
    fa._pad_fn, fa._unpad_fn = fa._pad_input, fa._unpad_input
    fa._process_flash_kwargs_fn = fa._lazy_define_process_function(flash_attn_varlen_func)
    fa._process_with_kvcache_kwargs_fn = dict
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(fa, n, v)
