"""The torch.library ops, torch.ops.pyrag.*: one module per op with its schema, fake
(meta) implementation and autograd. Importing this package defines every op and
registers every backend's implementations (pyrag/backends/)."""

from pyrag.ops import lsr, marginal_nll, topk_scores  # noqa: F401  (define the ops)
from pyrag.ops._registry import (
    BACKENDS,
    BackendUnavailableError,
    get_num_threads,
    implemented_backends,
    set_num_threads,
)

from pyrag import backends  # noqa: F401  isort: skip  (registers the implementations)

OPS = ("topk_scores", "lsr_weights", "lsr_kl", "lsr_kl_backward", "marginal_nll", "marginal_nll_backward")

__all__ = ["BACKENDS", "OPS", "BackendUnavailableError", "get_num_threads", "implemented_backends", "set_num_threads"]
