"""Collective calls that fail together.

Every collective operation of a ShardedIndex starts with one small exchange: each rank
sends its status (ok, or the type and text of the error it hit while checking its own
input or computing its part), the operation and call number it is in, and a few integers
the operation needs (sizes, k, a version). If any rank failed, every rank raises before
any data-dependent exchange: the failing rank its own exception, the others the same
type with the first failing rank's message. If the ranks are in different calls (one
skipped a call, or called another operation), every rank raises a CollectiveError
instead of exchanging mismatched data. A rank that dies, or never makes the call, is
reported by torch.distributed itself within the group's timeout; the group is then
unusable and every later call raises at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist

from pyrag.index import IndexFormatError
from pyrag.index.storage import FormatError
from pyrag.reindex import ReindexError


class CollectiveError(RuntimeError):
    """A collective call of pyrag.distributed failed on another rank (with an error that
    has no more specific type), the ranks were in different calls, or the process group
    itself failed (a rank died, or did not make the call within the group's timeout).
    The message names the rank and its error."""


# Error types that cross ranks as themselves (most specific first); any other becomes a
# CollectiveError naming the original type.
_KINDS: tuple[type[BaseException], ...] = (
    CollectiveError, IndexFormatError, FormatError, FileNotFoundError, KeyError, TypeError, ValueError, ReindexError,
)  # fmt: skip
_OPS = ("create", "add", "remove", "search", "get", "save", "load", "refresh", "checkpoint")
_HEAD = 5  # status, error kind, op, call number, index token
# Every call's first exchange has the same size, whatever the operation: ranks in
# different calls must still meet in it (gloo aborts the process on a size mismatch).
_PAYLOAD = 6
MESSAGE_BYTES = 1024


def _kind(error: BaseException) -> int:
    for i, cls in enumerate(_KINDS):
        if isinstance(error, cls):
            return i + 1
    return 0


def _text(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # str(KeyError) adds quotes
    else:
        text = str(error)
    return text if _kind(error) else f"{type(error).__name__}: {text}"


class Comm:
    """One process group as ShardedIndex uses it: the rank, the world size, the device
    its tensors travel on (CUDA for NCCL, else the CPU), and the status exchange."""

    def __init__(self, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given process group")
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        self.token = 0  # the index this Comm serves, agreed at creation (checked in every call)
        self.calls = 0
        self.broken: Optional[str] = None  # the group failed (a rank died, a timeout)
        self.poisoned: Optional[str] = None  # the ranks' shards no longer agree
        # One collective operation at a time per process: its exchanges must not
        # interleave with those of another thread's call.
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ status exchange
    def exchange(self, op: str, payload: Sequence[int], error: Optional[BaseException] = None) -> torch.Tensor:
        """Every rank's payload, int64 [world, len(payload)] on the CPU; raises on every rank
        if any rank passed an error or the ranks are not in the same call."""
        self.calls += 1
        head = [1 if error is not None else 0, _kind(error) if error is not None else 0, _OPS.index(op)]
        if len(payload) > _PAYLOAD:
            raise ValueError(f"at most {_PAYLOAD} integers travel with a status")  # pragma: no cover - pyrag's own use
        values = [int(v) for v in payload] + [0] * (_PAYLOAD - len(payload))
        mine = torch.tensor(head + [self.calls, self.token] + values, dtype=torch.int64)
        table = self.all_gather(mine.to(self.device), f"{op} (status)").cpu().reshape(self.world, -1)
        failed = table[:, 0].nonzero().flatten().tolist()
        if failed:
            text = _text(error).encode("utf-8")[:MESSAGE_BYTES] if error is not None else b""
            buf = torch.zeros(MESSAGE_BYTES + 8, dtype=torch.uint8)
            buf[:8] = torch.tensor([len(text)], dtype=torch.int64).view(torch.uint8)
            buf[8 : 8 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else buf[8:8]
            texts = self.all_gather(buf.to(self.device), f"{op} (errors)").cpu().reshape(self.world, -1)
            if error is not None:
                raise error
            r = failed[0]
            size = int(texts[r, :8].view(torch.int64))
            message = bytes(texts[r, 8 : 8 + size].tolist()).decode("utf-8", errors="replace")
            kind = int(table[r, 1])
            cls = _KINDS[kind - 1] if kind else CollectiveError
            raise cls(f"rank {r}: {message}")
        if bool((table[:, 2:_HEAD] != table[0, 2:_HEAD]).any()):
            calls = ", ".join(
                f"rank {r} in {_OPS[int(table[r, 2])]} (call {int(table[r, 3])}, index {int(table[r, 4]):#x})"
                for r in range(self.world)
            )
            raise CollectiveError(
                f"the ranks are in different collective calls: {calls}. Every rank must make the same "
                f"ShardedIndex calls, on the same index, in the same order"
            )
        return table[:, _HEAD : _HEAD + len(payload)]

    # ------------------------------------------------------------------ data exchanges
    def all_gather(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """[world * len(t), ...]: every rank's t (same shape everywhere), in rank order."""
        parts = [torch.empty_like(t) for _ in range(self.world)]
        self._run(what, lambda: dist.all_gather(parts, t.contiguous(), group=self.group))
        return torch.cat(parts)

    def all_gather_rows(self, t: torch.Tensor, counts: Sequence[int], what: str) -> torch.Tensor:
        """Rows [counts[r], ...] from each rank r (counts known everywhere), concatenated in
        rank order: one all_gather, padded to the largest count."""
        widest = max(counts)
        if widest == 0:
            return t.new_empty((0, *t.shape[1:]))
        padded = t.new_zeros((widest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        gathered = self.all_gather(padded.to(self.device), what).reshape(self.world, widest, *t.shape[1:])
        return torch.cat([gathered[r, : counts[r]] for r in range(self.world)])

    def all_to_all(self, chunks: Sequence[torch.Tensor], recv_counts: Sequence[int], what: str) -> list[torch.Tensor]:
        """Sends the 1-D chunks[r] to rank r and returns what each rank sent here (of
        recv_counts[r] elements, known in advance): one all_to_all."""
        send = torch.cat([c.reshape(-1) for c in chunks]).to(self.device)
        recv = send.new_empty(sum(recv_counts))
        in_splits = [c.numel() for c in chunks]
        out_splits = list(recv_counts)
        self._run(
            what,
            lambda: dist.all_to_all_single(recv, send, out_splits, in_splits, group=self.group),
        )
        return list(recv.cpu().split(out_splits))

    def all_reduce_max(self, t: torch.Tensor, what: str) -> torch.Tensor:
        out = t.to(self.device).clone()
        self._run(what, lambda: dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group))
        return out.cpu()

    def _run(self, what: str, fn: Any) -> None:
        if self.broken is not None:
            raise CollectiveError(
                f"the process group failed in an earlier call ({self.broken}); it cannot be used again: "
                f"destroy it and start a new one"
            )
        try:
            fn()
        except Exception as e:  # a rank died, or did not make the call within the timeout
            self.broken = f"{what}: {type(e).__name__}: {e}"
            raise CollectiveError(
                f"{what} failed on rank {self.rank}: {type(e).__name__}: {e} (a rank died, or did not make "
                f"the same call within the process group's timeout)"
            ) from e
