"""The torch.library ops (torch.ops.pyrag.*): one module per op, each registering its
schema, fake implementation, autograd and backends."""
from pyrag.ops import lsr, marginal_nll  # noqa: F401  (registers pyrag::lsr_*, pyrag::marginal_nll*)
from pyrag.ops._common import BACKENDS, BackendUnavailableError, get_num_threads, set_num_threads
from pyrag.ops.topk_scores import topk_scores
from pyrag.ops import triton_backend  # noqa: F401  (registers backend="triton"; imports no triton)

# Registers backend="cuda" / "cuda_emu" (imports no compiled module until an op runs).
from pyrag.ops import cuda_backend  # noqa: E402,F401  isort: skip

__all__ = ["BACKENDS", "BackendUnavailableError", "get_num_threads", "set_num_threads", "topk_scores"]
