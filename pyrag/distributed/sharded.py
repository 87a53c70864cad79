"""ShardedIndex: one index over the ranks of a torch.distributed process group.

Every rank holds one shard, a DenseIndex of the index's dtype, and every operation is
collective: all ranks of the group call it, in the same order. A search gathers the
queries of every rank once, runs the fused DenseIndex search of each shard over all of
them, sends each query's [k] candidates to the rank that asked (one all_to_all), and
that rank merges them by (score descending, id ascending): the answer of one DenseIndex
holding every row, bit for bit, because every score comes from the same kernel and ties
go to the smaller id in both. Nothing proportional to the number of rows crosses ranks.

Failures (see collective.py): each operation checks its local input, then exchanges a
status with the other ranks before any data; an error on one rank is raised on every
rank. Mutations check globally before they change anything, so a rejected add or remove
changes nothing anywhere.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from pyrag._inputs import INT64_MAX, as_cpu_rows, as_ids, as_tensor
from pyrag.distributed import manifest
from pyrag.distributed.collective import CollectiveError, Comm
from pyrag.distributed.merge import merge_topk
from pyrag.index import DenseIndex, IndexFormatError, storage
from pyrag.index.dense import DTYPES
from pyrag.ops._checks import check_finite, check_k

_META = "sharded."  # DenseIndex.save metadata of a shard file
log = logging.getLogger("pyrag.distributed")


class _State(NamedTuple):
    """What readers see: replaced whole by a mutation, never changed."""

    shard: DenseIndex  # a read-only snapshot of this rank's shard
    version: int  # the same on every rank
    total: int  # rows on all ranks
    max_id: int  # this rank's largest id, -1 when empty
    step: int  # the encoder step that produced the vectors (a ShardedReindexer's), else 0


class ShardedIndex:
    """An exact inner-product index sharded over the ranks of a torch.distributed group.

    Construction and every method below except the properties are collective: every rank
    of the group calls them, in the same order (see docs/distributed.md).

    Args:
        dim: vector dimension (the same on every rank, checked).
        dtype: storage dtype of every shard: "float32", "bfloat16" or "int8" (checked).
        group: the process group (default: the default group). gloo groups exchange CPU
            tensors, NCCL groups CUDA tensors of the current device; the shards live in
            host memory either way.
        keep_originals: bfloat16 / int8: keep the float32 originals for exact=True.
        originals_dir: where each rank keeps them (default: the system temp directory).
    """

    def __init__(
        self,
        dim: int,
        dtype: str = "float32",
        *,
        group: Any = None,
        keep_originals: bool = True,
        originals_dir: Optional[str] = None,
    ) -> None:
        comm = Comm(group)
        shard, error = None, None
        try:
            shard = DenseIndex(dim, dtype, keep_originals=keep_originals, originals_dir=originals_dir)
        except Exception as e:
            error = e
        self._start(comm, shard, error)

    @classmethod
    def from_shard(cls, shard: DenseIndex, *, group: Any = None) -> ShardedIndex:
        """Collective: a ShardedIndex over each rank's existing DenseIndex, which becomes
        that rank's shard (use it only through the ShardedIndex from then on). Checks that
        the dims, dtypes and options agree and that no id is on two ranks (each rank
        receives about 1 / world of all ids once for that)."""
        comm = Comm(group)
        error = (
            None
            if isinstance(shard, DenseIndex)
            else TypeError(f"shard must be a pyrag.DenseIndex, got {type(shard).__name__}")
        )
        self = cls.__new__(cls)
        self._start(comm, shard if error is None else None, error, check_ids=True)
        return self

    def _start(
        self,
        comm: Comm,
        shard: Optional[DenseIndex],
        error: Optional[BaseException],
        *,
        check_ids: bool = False,
        version: int = 0,
        step: int = 0,
        metadata: Optional[dict[str, str]] = None,
    ) -> None:
        """Agrees with the other ranks on dim, dtype and options, then serves `shard`."""
        max_id = -1
        if shard is not None and error is None:
            try:
                max_id = int(shard.ids.max()) if len(shard) else -1
            except Exception as e:
                error = e
        payload = [0] * 5
        if shard is not None and error is None:
            payload = [
                shard.dim,
                DTYPES.index(shard.dtype),
                int(shard.keep_originals),
                len(shard),
                manifest.new_token(),
            ]
        table = comm.exchange("create", payload, error)
        assert shard is not None
        for col, what in ((0, "dim"), (1, "dtype"), (2, "keep_originals")):
            values = table[:, col].tolist()
            if len(set(values)) > 1:
                shown = [DTYPES[v] for v in values] if what == "dtype" else values
                raise ValueError(f"the ranks passed different {what}: {shown} (by rank)")
        comm.token = int(table[0, 4])
        self._comm = comm
        self._dim, self._dtype = shard.dim, shard.dtype
        self._frozen = False
        self._kept_by: Optional[str] = None  # a ShardedReindexer replaces the shard whole
        self.metadata: dict[str, str] = dict(metadata or {})
        if check_ids:
            self._check_unique_ids(shard)
        self._shard = shard
        self._state = _State(shard.snapshot(), version, int(table[:, 3].sum()), max_id, step)

    def _check_unique_ids(self, shard: DenseIndex) -> None:
        """Every id on one rank only: each id goes to rank (id mod world), which looks for
        duplicates among what it receives."""
        comm = self._comm
        ids = shard.ids
        dest = ids % comm.world
        order = torch.argsort(dest, stable=True)
        counts = torch.bincount(dest, minlength=comm.world)
        matrix = comm.all_gather(counts.to(comm.device), "create (id counts)").cpu().reshape(comm.world, comm.world)
        chunks = list(ids[order].split(counts.tolist()))
        got = torch.cat(comm.all_to_all(chunks, matrix[:, comm.rank].tolist(), "create (ids)"))
        error = None
        if got.numel() > 1:
            s = torch.sort(got).values
            dup = s[1:][s[1:] == s[:-1]]
            if dup.numel():
                error = ValueError(f"ids are on more than one rank: {dup.unique()[:5].tolist()}")
        comm.exchange("create", [], error)

    # ------------------------------------------------------------------ properties (local)
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        """The storage dtype of every shard."""
        return self._dtype

    @property
    def keep_originals(self) -> bool:
        """Whether exact=True search is available (always for float32)."""
        return self._state.shard.keep_originals

    @property
    def version(self) -> int:
        """The number of collective mutations (adds and removes that changed rows, refreshes
        put in service) since the index was created; the same on every rank, saved and
        restored with it."""
        return self._state.version

    @property
    def step(self) -> int:
        """The training step whose encoder produced the vectors (0 unless a
        ShardedReindexer refreshed them)."""
        return self._state.step

    def __len__(self) -> int:
        """The number of rows on all ranks. Known on every rank without communication:
        every mutation is collective, and each rank learns the others' counts there."""
        return self._state.total

    @property
    def local_len(self) -> int:
        """The number of rows of this rank's shard."""
        return len(self._state.shard)

    @property
    def rank(self) -> int:
        return self._comm.rank

    @property
    def world_size(self) -> int:
        return self._comm.world

    @property
    def group(self) -> Any:
        return self._comm.group

    @property
    def shard(self) -> DenseIndex:
        """A read-only snapshot of this rank's shard."""
        return self._state.shard

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(dim={self._dim}, dtype={self._dtype!r}, size={len(self)}, rank={self.rank}, "
            f"world_size={self.world_size}, local_len={self.local_len}, version={self.version})"
        )

    def snapshot(self) -> ShardedIndex:
        """A read-only view of the index as it is now (O(1), no communication): its
        searches and gets read one state, whatever is added, removed or refreshed meanwhile.
        They are still collective, and every rank must search the same version."""
        view = copy.copy(self)
        view._frozen = True
        return view

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, *, exact: bool = False, backend: str = "auto") -> tuple[Any, Any]:
        """Collective: the global k best ids for this rank's queries: (scores [B_r, k]
        float32, ids [B_r, k] int64), exactly what one DenseIndex holding every row returns
        (same scores, order and ties to the smaller id, (-inf, -1) padding past the total).

        Args:
            queries: float32 [B_r, dim] or [dim], torch or numpy (the result follows). B_r
                may differ between ranks, and be 0.
            k: results per query, the same on every rank.
            exact: as DenseIndex.search, the same on every rank.
            backend: the backend each shard searches with (DenseIndex.search).
        """
        comm = self._comm
        with comm.lock:
            state = self._state
            as_numpy = isinstance(queries, np.ndarray)
            q, single, error = torch.empty(0, self._dim), False, None
            try:
                q = as_tensor(queries, "queries")
                if q.dim() not in (1, 2) or q.shape[-1] != self._dim:
                    raise ValueError(f"queries have shape {tuple(q.shape)} but the index has dim {self._dim}")
                check_k(k)
                if q.dtype != torch.float32:
                    raise TypeError(f"queries must be float32, got {q.dtype}; convert them explicitly")
                q = q.detach()
                check_finite(q, "queries")
                if exact and not state.shard.keep_originals:
                    raise ValueError(
                        "exact=True needs the float32 originals; this index was made with keep_originals=False"
                    )
                single = q.dim() == 1
                q = q.reshape(-1, self._dim)
            except Exception as e:
                error = e
            ok = error is None
            payload = [q.shape[0] if ok else 0, k if ok else 0, int(bool(exact)), state.version, len(state.shard)]
            table = comm.exchange("search", payload, error)
            self._same("k", table[:, 1])
            self._same("exact", table[:, 2])
            self._same_version(table[:, 3])
            counts, lens = table[:, 0].tolist(), table[:, 4].tolist()
            if sum(counts) == 0:
                scores, ids = torch.empty((0, k)), torch.empty((0, k), dtype=torch.int64)
            else:
                every_query = comm.all_gather_rows(q, counts, "search (queries)")
                ks = [min(k, n) for n in lens]
                scores, ids = self._exchange_candidates(state, every_query, counts, ks, exact, backend)
                scores, ids = merge_topk(scores, ids, k)
        if single:
            scores, ids = scores[0], ids[0]
        if as_numpy:
            return scores.numpy(), ids.numpy()
        return scores, ids

    def _exchange_candidates(
        self, state: _State, queries: torch.Tensor, counts: list[int], ks: list[int], exact: bool, backend: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Searches this shard for every rank's queries and sends each rank the candidates
        of its own: [status, ids, score bits] as one int64 chunk per rank. Returns this
        rank's candidates from every shard: (scores, ids) [B_me, sum of ks]."""
        comm = self._comm
        me, b = comm.rank, queries.shape[0]
        k_me = ks[me]
        error = None
        scores = torch.empty((b, 0))
        ids = torch.empty((b, 0), dtype=torch.int64)
        if k_me:
            try:
                scores, ids = state.shard.search(queries, k_me, exact=exact, backend=backend)
            except Exception as e:
                error = e
        starts = np.cumsum([0] + counts).tolist()
        chunks = []
        for r in range(comm.world):
            if error is None:
                rows = slice(starts[r], starts[r + 1])
                bits = scores[rows].contiguous().view(torch.int32).to(torch.int64)
                chunks.append(torch.cat([ids.new_zeros(1), ids[rows].reshape(-1), bits.reshape(-1)]))
            else:
                chunk = torch.zeros(1 + 2 * counts[r] * k_me, dtype=torch.int64)
                chunk[0] = 1
                chunks.append(chunk)
        got = comm.all_to_all(chunks, [1 + 2 * counts[me] * ks[s] for s in range(comm.world)], "search (candidates)")
        if error is not None or any(int(g[0]) for g in got):
            comm.exchange("search", [], error)  # raises on every rank
        n = counts[me]
        out_ids, out_scores = [], []
        for s, g in enumerate(got):
            m = n * ks[s]
            out_ids.append(g[1 : 1 + m].reshape(n, ks[s]))
            out_scores.append(g[1 + m :].to(torch.int32).view(torch.float32).reshape(n, ks[s]))
        return torch.cat(out_scores, dim=1), torch.cat(out_ids, dim=1)

    # ------------------------------------------------------------------ get
    def get(self, ids: Any) -> torch.Tensor:
        """Collective: the stored vectors of this rank's `ids`, wherever they live, as
        float32 [*ids.shape, dim] (as DenseIndex.get: -1 gives zeros; an id on no rank is
        a KeyError, on every rank). Costs O(all ids asked · dim) in messages."""
        comm = self._comm
        with comm.lock:
            state = self._state
            flat, error = torch.empty(0, dtype=torch.int64), None
            shape: tuple[int, ...] = (0,)
            try:
                t = as_tensor(ids, "ids") if isinstance(ids, (torch.Tensor, np.ndarray)) else as_ids(ids)
                if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                    raise TypeError(f"ids must be integers, got {t.dtype}")
                shape = tuple(t.shape)
                flat = as_ids(t)
            except Exception as e:
                error = e
            table = comm.exchange("get", [flat.numel(), state.version], error)
            self._same_version(table[:, 1])
            counts = table[:, 0].tolist()
            every_id, owner = self._owners(state, flat, counts, "get")
            me, dim = comm.rank, self._dim
            unknown = (owner < 0) & (every_id != -1)
            if bool(unknown.any()):
                raise KeyError(f"ids not in the index: {every_id[unknown].unique()[:5].tolist()}")
            starts = np.cumsum([0] + counts).tolist()
            error = None
            chunks = []
            for r in range(comm.world):
                seg = slice(starts[r], starts[r + 1])
                mine = every_id[seg][owner[seg] == me]
                try:
                    vectors = state.shard.get(mine) if error is None else None
                except Exception as e:
                    error, vectors = e, None
                status = torch.tensor([0.0 if error is None else 1.0])
                if vectors is None:
                    vectors = torch.zeros((mine.numel(), dim))
                chunks.append(torch.cat([status, vectors.reshape(-1)]))
            my_owner = owner[starts[me] : starts[me + 1]]
            expect = [1 + int((my_owner == s).sum()) * dim for s in range(comm.world)]
            got = comm.all_to_all(chunks, expect, "get (vectors)")
            if error is not None or any(float(g[0]) != 0.0 for g in got):
                comm.exchange("get", [], error)  # raises on every rank
            out = torch.zeros((flat.numel(), dim), dtype=torch.float32)
            for s, g in enumerate(got):
                out[my_owner == s] = g[1:].reshape(-1, dim)
        return out.reshape(*shape, dim)

    def _owners(
        self, state: _State, flat: torch.Tensor, counts: list[int], op: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's ids, concatenated in rank order, and the rank holding each (-1: none)."""
        comm = self._comm
        every_id = comm.all_gather_rows(flat, counts, f"{op} (ids)").cpu()
        owner = torch.full((every_id.numel(),), -1, dtype=torch.int64)
        if every_id.numel():
            owner[state.shard.contains(every_id.clamp(min=0)) & (every_id >= 0)] = comm.rank
            owner = comm.all_reduce_max(owner, f"{op} (owners)")
        return every_id, owner

    # ------------------------------------------------------------------ mutation
    def add(self, vectors: Any, ids: Any = None) -> torch.Tensor:
        """Collective: adds this rank's float32 vectors [n_r, dim] (n_r may be 0) to its
        shard and returns their ids.

        Without ids, ids continue from the largest id on any rank (or given in this call)
        plus one, in rank order: unique across ranks. Explicit ids that are on any rank
        already, or given by two ranks, are a ValueError on every rank, and then nothing
        is added anywhere.
        """
        comm = self._comm
        with comm.lock:
            state = self._state
            x, given, error = torch.empty((0, self._dim)), None, None
            try:
                self._check_mutable()
                x = _check_rows(vectors, self._dim, self._dtype)
                given = None if ids is None else _check_new_ids(ids, x.shape[0])
            except Exception as e:
                error = e
            n = x.shape[0] if error is None else 0
            payload = [n, int(given is not None), int(given.max()) if given is not None and n else -1, state.max_id]
            table = comm.exchange("add", payload, error)
            ns, has, top = table[:, 0].tolist(), table[:, 1].tolist(), int(table[:, 2:4].max())
            if any(has):
                explicit = given if given is not None else torch.empty(0, dtype=torch.int64)
                every = comm.all_gather_rows(explicit, [c if h else 0 for c, h in zip(ns, has)], "add (ids)").cpu()
                error = None
                try:
                    s = torch.sort(every).values
                    twice = s[1:][s[1:] == s[:-1]]
                    if twice.numel():
                        raise ValueError(f"ids given by more than one rank: {twice.unique()[:5].tolist()}")
                    clash = every[state.shard.contains(every)]
                    if clash.numel():
                        raise ValueError(f"ids already in the index: {clash[:5].tolist()}")
                except Exception as e:
                    error = e
                comm.exchange("add", [], error)
            me = comm.rank
            automatic = sum(c for c, h in zip(ns, has) if not h)
            if top + automatic > INT64_MAX:
                raise ValueError(f"automatic ids would pass the largest int64 ({INT64_MAX}); pass ids=")
            if given is None:
                start = top + 1 + sum(c for c, h in zip(ns[:me], has[:me]) if not h)
                given = torch.arange(start, start + n, dtype=torch.int64)
            error = None
            try:
                if n:
                    self._shard.add(x, given)
            except Exception as e:
                error = e
            try:
                comm.exchange("add", [], error)
            except BaseException:
                if error is None and n:  # another rank failed: take ours back out
                    self._undo(lambda: self._shard.remove(given))
                raise
            total = sum(ns)
            self._state = _State(
                self._shard.snapshot(), state.version + (total > 0), state.total + total,
                max(state.max_id, int(given.max())) if n else state.max_id, state.step,
            )  # fmt: skip
        return given

    def remove(self, ids: Any) -> int:
        """Collective: removes the ids every rank passes, wherever they live, and returns
        how many were removed in all. An id on no rank is a KeyError and one passed twice
        a ValueError, on every rank, and then nothing changes anywhere. O(N / world) per
        rank: a shard that loses rows is repacked."""
        comm = self._comm
        with comm.lock:
            state = self._state
            flat, error = torch.empty(0, dtype=torch.int64), None
            try:
                self._check_mutable()
                flat = as_ids(ids)
            except Exception as e:
                error = e
            table = comm.exchange("remove", [flat.numel()], error)
            counts = table[:, 0].tolist()
            every_id, owner = self._owners(state, flat, counts, "remove")
            if every_id.unique().numel() != every_id.numel():
                raise ValueError("ids to remove contain duplicates (on one rank or across ranks)")
            unknown = owner < 0
            if bool(unknown.any()):
                raise KeyError(f"ids not in the index: {every_id[unknown][:5].tolist()}")
            mine = every_id[owner == comm.rank]
            error = None
            try:
                if mine.numel():
                    self._shard.remove(mine)
            except Exception as e:
                error = e
            try:
                comm.exchange("remove", [], error)
            except BaseException as e:
                # Rows removed on some ranks cannot be put back as they were stored.
                comm.poisoned = f"a remove failed on some ranks after others had removed their rows ({e})"
                raise
            max_id = state.max_id
            if mine.numel() and bool((mine == max_id).any()):
                max_id = int(self._shard.ids.max()) if len(self._shard) else -1
            gone = every_id.numel()
            self._state = _State(
                self._shard.snapshot(), state.version + (gone > 0), state.total - gone, max_id, state.step
            )
        return gone

    def _check_mutable(self) -> None:
        if self._frozen:
            raise TypeError("this is a read-only snapshot of a ShardedIndex; add and remove on the index itself")
        if self._kept_by is not None:
            raise TypeError(f"this ShardedIndex is kept by a {self._kept_by}, which replaces it whole at each refresh")

    def _undo(self, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # pragma: no cover - only after a failure on top of a failure
            self._comm.poisoned = f"undoing an add that failed on another rank failed too ({e})"

    def _install(self, shard: DenseIndex, *, step: int, version: Optional[int] = None) -> None:
        """Serves `shard` (a refresh agreed on by every rank): the next version, or `version`."""
        state = self._state
        self._shard = shard
        max_id = int(shard.ids.max()) if len(shard) else -1
        new_version = state.version + 1 if version is None else version
        self._state = _State(shard.snapshot(), new_version, state.total, max_id, step)

    # ------------------------------------------------------------------ checks
    def _same(self, what: str, values: torch.Tensor) -> None:
        if bool((values != values[0]).any()):
            raise ValueError(f"the ranks passed different {what}: {values.tolist()} (by rank)")

    def _same_version(self, versions: torch.Tensor) -> None:
        if bool((versions != versions[0]).any()):
            raise CollectiveError(
                f"the ranks read different versions of the index: {versions.tolist()} (by rank); every rank "
                f"must search a snapshot taken at the same point of the collective calls"
            )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: storage.PathLike, *, metadata: Optional[Mapping[str, str]] = None) -> None:
        """Collective: writes one file per shard (DenseIndex.save) into `directory`, a
        folder every rank sees (a shared file system), then manifest.json last, atomically
        (world size, dim, dtype, version, counts, each shard file's size and checksum), then
        removes the files of earlier saves. An interrupted save leaves the previous one
        loadable. metadata: strings stored in the manifest (`.metadata` after load)."""
        comm = self._comm
        with comm.lock:
            state = self._state
            path, meta, error = "", {}, None
            try:
                path = os.fspath(directory)
                for key, value in (metadata or {}).items():
                    if not isinstance(key, str) or not isinstance(value, str):
                        raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
                    meta[key] = value
                os.makedirs(path, exist_ok=True)
            except Exception as e:
                error = e
            table = comm.exchange("save", [manifest.new_token(), state.version], error)
            self._same_version(table[:, 1])
            token, world, me = int(table[0, 0]), comm.world, comm.rank
            name = manifest.shard_file(me, world, token)
            size, crc, error = 0, 0, None
            try:
                shard_meta = {f"{_META}token": f"{token:016x}", f"{_META}rank": str(me), f"{_META}world": str(world)}
                state.shard.save(os.path.join(path, name), metadata=shard_meta)
                size, checksum = manifest.describe(os.path.join(path, name))
                crc = int(checksum.removeprefix("crc32:"), 16)
            except Exception as e:
                error = e
            table = comm.exchange("save", [size, crc, len(state.shard)], error)
            error = None
            keep: set[str] = set()
            if me == 0:
                try:
                    shards = [
                        {"file": manifest.shard_file(r, world, token), "bytes": int(table[r, 0]),
                         "checksum": f"crc32:{int(table[r, 1]):08x}", "rows": int(table[r, 2])}
                        for r in range(world)
                    ]  # fmt: skip
                    body = {
                        "format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "dim": self._dim,
                        "dtype": self._dtype, "keep_originals": state.shard.keep_originals, "world_size": world,
                        "count": state.total, "version": state.version, "step": state.step, "token": token,
                        "metadata": meta, "shards": shards,
                    }  # fmt: skip
                    manifest.write(path, body)
                    keep = {str(s["file"]) for s in shards}
                except Exception as e:
                    error = e
            comm.exchange("save", [], error)
            error = None
            try:  # a directory that is not shared would leave the other ranks without the manifest
                if manifest.read(path)["token"] != token:
                    raise FileNotFoundError(f"{path}: another save's manifest is there; is it on a shared file system?")
            except Exception as e:
                error = e
            comm.exchange("save", [], error)
            if me == 0:
                for stale in manifest.stale_files(path, keep):
                    try:
                        os.unlink(stale)
                    except OSError as e:  # the save is complete: a file left over is not an error
                        log.warning("could not remove %s from an earlier save: %s", stale, e)

    @classmethod
    def load(
        cls, directory: storage.PathLike, group: Any = None, *, mmap: bool = False, verify: bool = True
    ) -> ShardedIndex:
        """Collective: opens a ShardedIndex written by save, on any number of ranks.

        On as many ranks as it was saved from, rank r opens shard file r (DenseIndex.load:
        mmap, verify). On M ranks from N files, the rows are dealt out in file order (rank
        r gets the global rows [r * total // M, (r + 1) * total // M)), copied as stored,
        ids preserved. Every file is checked against the manifest (size, checksum, save)
        and by its own checksum (verify=True).
        """
        comm = Comm(group)
        path, doc, error = "", {}, None
        try:
            path = os.fspath(directory)
            doc = manifest.read(path)
        except Exception as e:
            error = e
        table = comm.exchange("load", [doc.get("token", 0)], error)
        if bool((table[:, 0] != table[0, 0]).any()):
            raise IndexFormatError(
                f"{path}: the ranks read different manifests (saves {table[:, 0].tolist()}); the directory must be "
                f"on a file system every rank sees"
            )
        shard, error = None, None
        try:
            shard = _open_shards(path, doc, comm.world, comm.rank, mmap=mmap, verify=verify)
        except Exception as e:
            error = e
        self = cls.__new__(cls)
        self._start(
            comm, shard, error, version=doc.get("version", 0), step=doc.get("step", 0), metadata=doc.get("metadata")
        )
        if len(self) != doc["count"]:  # pragma: no cover - the manifest's counts were checked file by file
            raise IndexFormatError(f"{path}: loaded {len(self)} rows but the manifest counts {doc['count']}")
        return self


def _open_shards(path: str, doc: dict[str, Any], world: int, rank: int, *, mmap: bool, verify: bool) -> DenseIndex:
    """This rank's shard of a saved index: its own file when the world size is the same,
    else the rows dealt to it, copied from the files that hold them."""
    files = doc["shards"]

    def open_file(f: int, map_it: bool) -> DenseIndex:
        entry = files[f]
        file = os.path.join(path, entry["file"])
        size, checksum = manifest.describe(file)
        if size != entry["bytes"] or checksum != entry["checksum"]:
            raise IndexFormatError(f"{file}: does not match the manifest (size or checksum); it is not this save's")
        index = DenseIndex.load(file, mmap=map_it, verify=verify)
        if (
            index.metadata.get(f"{_META}token") != f"{doc['token']:016x}"
            or len(index) != entry["rows"] or index.dim != doc["dim"] or index.dtype != doc["dtype"]
            or index.keep_originals != doc["keep_originals"]
        ):  # fmt: skip
            raise IndexFormatError(f"{file}: does not match the manifest")
        return index

    if len(files) == world:
        return open_file(rank, mmap)
    parts = manifest.deal([f["rows"] for f in files], world, rank)
    shard = DenseIndex(doc["dim"], doc["dtype"], keep_originals=doc["keep_originals"])
    shard.reserve(sum(b - a for _, a, b in parts))
    for f, a, b in parts:
        source = open_file(f, True)  # mapped: only the rows dealt here are read (after the checksum pass)
        shard.add_from(source, source.ids[a:b])
    return shard


def _check_rows(vectors: Any, dim: int, dtype: str) -> torch.Tensor:
    """Vectors to add as DenseIndex.add checks them: float32 [n, dim], finite, and
    |x| <= 1e30 for a quantised dtype."""
    x = as_cpu_rows(vectors, "vectors")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors have shape {tuple(x.shape)} but the index has dim {dim}")
    if x.dtype != torch.float32:
        raise TypeError(
            f"vectors are {x.dtype} but the index takes float32 vectors (and stores {dtype}); convert them explicitly"
        )
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(x, "vectors")
        if dtype != "float32" and max(-lo, hi) > 1e30:
            raise ValueError(f"vectors hold values up to {max(-lo, hi):.3g}; a {dtype} index takes |x| <= 1e30")
    return x


def _check_new_ids(ids: Any, n: int) -> torch.Tensor:
    new_ids = as_ids(ids)
    if new_ids.numel() != n:
        raise ValueError(f"got {new_ids.numel()} ids for {n} vectors")
    if bool((new_ids < 0).any()):
        raise ValueError("ids must be non-negative (-1 marks padding in results)")
    if new_ids.unique().numel() != n:
        raise ValueError("ids contain duplicates")
    return new_ids.clone()
