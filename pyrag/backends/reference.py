"""backend="reference": every op in plain PyTorch (pyrag.reference, the executable spec),
on any device."""

from __future__ import annotations

from pyrag import reference
from pyrag.ops._registry import register_impl

register_impl("topk_scores", "reference")(
    lambda queries, corpus, k, scales: reference.topk_scores(queries, corpus, k, scales=scales)
)
register_impl("lsr_weights", "reference")(reference.lsr_weights)
register_impl("lsr_kl", "reference")(reference.lsr_kl)
register_impl("lsr_kl_backward", "reference")(reference.lsr_kl_backward)
register_impl("marginal_nll", "reference")(reference.marginal_nll)
register_impl("marginal_nll_backward", "reference")(reference.marginal_nll_backward)
