"""Retrieval evaluation one can trust: per-query recall@k, success@k, MRR@k and nDCG@k of a
Retriever, always computed in eval mode and without gradient, and a paired bootstrap
confidence interval for the difference between two systems on the same queries.

    relevant = pyrag.eval.relevant_passages(examples, match="answer", passages=texts)
    before = pyrag.eval.evaluate(retriever, [e.query for e in examples], relevant, k=10)
    ...  # train
    after = pyrag.eval.evaluate(retriever, [e.query for e in examples], relevant, k=10)
    print(pyrag.eval.paired_bootstrap(before.success, after.success))  # mean gain [95% CI], gained / lost

Relevance is binary: a query's relevant passages are a set of index ids. The measures follow
trec_eval / ir-measures (R@k, Success@k, RR@k, nDCG@k with gain 1 and a log2(rank + 1)
discount); tests/test_eval.py checks them against ir-measures. With one relevant passage per
query (match="positive") recall@k and success@k coincide. With match="answer" every passage
holding the answer's words is relevant, and success@k is DPR's top-k retrieval accuracy (what
pyrag's docs call "recall@k by answer").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch

from pyrag.retriever import Passages, Retriever
from pyrag.train.example import Example, words

__all__ = [
    "MATCHES",
    "MEASURES",
    "PairedBootstrap",
    "RetrievalEval",
    "eval_mode",
    "evaluate",
    "paired_bootstrap",
    "relevant_passages",
    "score_run",
    "standard_error",
    "word_set",
]

MATCHES = ("positive", "answer")
MEASURES = ("recall", "success", "mrr", "ndcg")


@dataclass(frozen=True)
class RetrievalEval:
    """Per-query measures of one system on Q queries, each a float64 tensor [Q].

    ids: [Q, k] the retrieved index ids, best first (-1: the index had fewer than k).
    n_relevant: [Q] how many passages each query's judgement counts as relevant; a query
    with none scores 0 on every measure.
    """

    k: int
    ids: torch.Tensor
    n_relevant: torch.Tensor
    recall: torch.Tensor
    success: torch.Tensor
    mrr: torch.Tensor
    ndcg: torch.Tensor

    def __len__(self) -> int:
        return int(self.recall.shape[0])

    def measure(self, name: str) -> torch.Tensor:
        """The per-query values of `name` ("recall", "success", "mrr" or "ndcg")."""
        if name not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {name!r}")
        return getattr(self, name)

    def means(self) -> dict[str, float]:
        """{"recall@k": mean, "success@k": ..., "mrr@k": ..., "ndcg@k": ...}."""
        return {f"{m}@{self.k}": float(self.measure(m).mean()) for m in MEASURES}

    def __str__(self) -> str:
        return ", ".join(f"{name} {value:.3f}" for name, value in self.means().items())


@dataclass(frozen=True)
class PairedBootstrap:
    """The difference B − A of one measure between two systems on the same queries.

    mean: the observed mean of B − A; low / high: the percentile bootstrap interval at
    `confidence`; gained / lost / tied: queries where B's value is above / below / equal to A's.
    """

    mean: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_queries: int
    gained: int
    lost: int
    tied: int

    def __str__(self) -> str:
        return (
            f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%} CI, "
            f"{self.n_queries} queries: {self.gained} gained, {self.lost} lost)"
        )


# ---------------------------------------------------------------------- judgements
def relevant_passages(
    examples: Sequence[Example], match: str = "positive", passages: Optional[Passages] = None
) -> list[frozenset[int]]:
    """Each example's relevant passage ids.

    match="positive": {example.positive} (every example needs one).
    match="answer": every passage whose words include all of the answer's words (needs the
    passage texts, a sequence by id or a mapping id -> text). Scans the corpus once.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    if match == "positive":
        if any(e.positive is None for e in examples):
            raise ValueError("match='positive' needs examples with a positive passage id")
        return [frozenset((int(e.positive),)) for e in examples]  # type: ignore[arg-type]
    if passages is None:
        raise ValueError("match='answer' needs the passage texts (passages=)")
    answers = [frozenset(words(e.answer)) for e in examples]
    wanted = frozenset().union(*answers) if answers else frozenset()
    holders: dict[str, set[int]] = {w: set() for w in wanted}
    items = passages.items() if hasattr(passages, "items") else enumerate(passages)
    for pid, text in items:
        for w in word_set(text) & wanted:
            holders[w].add(int(pid))
    out = []
    for answer in answers:
        sets = sorted((holders[w] for w in answer), key=len)
        out.append(frozenset(set.intersection(*sets)) if sets else frozenset())
    return out


@functools.lru_cache(maxsize=1 << 18)
def word_set(text: str) -> frozenset[str]:
    """The lower-cased words of `text` (cached: a corpus is matched many times)."""
    return frozenset(words(text))


# ---------------------------------------------------------------------- measures
def score_run(
    ids: torch.Tensor, relevant: Sequence[frozenset[int] | set[int]], k: Optional[int] = None
) -> RetrievalEval:
    """The measures of a ranked run: ids [Q, >=k] index ids best first (-1 is padding and
    never relevant), relevant[i] the relevant ids of query i. k defaults to ids.shape[1]."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        raise TypeError("ids must be an integer tensor [Q, k]")
    if len(relevant) != ids.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} rows but relevant has {len(relevant)} entries")
    k = ids.shape[1] if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k must be an int in [1, {ids.shape[1]}], got {k!r}")
    ids = ids[:, :k].to("cpu", torch.int64)
    hits = torch.tensor(
        [[i >= 0 and i in rel for i in row] for row, rel in zip(ids.tolist(), relevant)], dtype=torch.bool
    ).reshape(ids.shape)
    n_rel = torch.tensor([len(r) for r in relevant], dtype=torch.float64)
    found = hits.sum(dim=1).to(torch.float64)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1)
    first = torch.where(hits.any(dim=1), hits.to(torch.int64).argmax(dim=1) + 1, 0)
    ideal = torch.cumsum(discount, 0)[(n_rel.clamp(max=k).long() - 1).clamp(min=0)]
    has_rel = n_rel > 0
    return RetrievalEval(
        k=k,
        ids=ids,
        n_relevant=n_rel.long(),
        recall=torch.where(has_rel, found / n_rel.clamp(min=1), 0.0),
        success=(found > 0).to(torch.float64),
        mrr=torch.where(first > 0, 1.0 / first.clamp(min=1).to(torch.float64), 0.0),
        ndcg=torch.where(has_rel, (hits.to(torch.float64) * discount).sum(dim=1) / ideal, 0.0),
    )


@contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Puts every nn.Module among `modules` (and all their submodules) in eval mode and
    turns gradient off; restores each submodule's own mode on exit."""
    saved = [(m, m.training) for mod in modules if isinstance(mod, torch.nn.Module) for m in mod.modules()]
    try:
        for m, _ in saved:
            m.training = False  # eval() per submodule, without calling overridden train()
        with torch.no_grad():
            yield
    finally:
        for m, mode in saved:
            m.training = mode


def evaluate(
    retriever: Retriever,
    queries: Sequence[Any],
    relevant: Sequence[frozenset[int] | set[int]],
    k: int = 10,
    *,
    batch_size: int = 64,
) -> RetrievalEval:
    """Searches the retriever's index for each query and scores the top k against `relevant`
    (see relevant_passages). queries: what the query encoder takes, or a [Q, dim] tensor of
    embeddings for a Retriever without one. The query and passage encoders run in eval mode (no dropout)
    and without gradient; their modes are restored afterwards."""
    if len(queries) == 0:
        raise ValueError("evaluate needs at least one query")
    if len(relevant) != len(queries):
        raise ValueError(f"got {len(queries)} queries but {len(relevant)} relevance sets")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = []
    with eval_mode(retriever.query_encoder, retriever.passage_encoder):
        snap = retriever.index.snapshot()  # one index version for every query
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            q = retriever.encode_queries(chunk if isinstance(chunk, torch.Tensor) else list(chunk))
            rows.append(snap.search(q.to(torch.float32).cpu(), k)[1])
    return score_run(torch.cat(rows), relevant, k)


def paired_bootstrap(
    a: torch.Tensor | Sequence[float],
    b: torch.Tensor | Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedBootstrap:
    """A percentile bootstrap confidence interval for mean(b − a), resampling queries with
    replacement (both systems keep their pairing): the uncertainty of a gain measured on
    these queries, as if they were a sample of the queries one cares about. Deterministic
    for a given seed."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same queries: got {x.numel()} and {y.numel()} values")
    if x.numel() < 2:
        raise ValueError("a paired bootstrap needs at least 2 queries")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("a and b must be finite")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    diff = y - x
    n = diff.numel()
    gen = torch.Generator().manual_seed(seed)
    means = []
    chunk = max(1, (1 << 22) // n)  # resamples per chunk: about 4M indices at a time
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        idx = torch.randint(n, (m, n), generator=gen)
        means.append(diff[idx].mean(dim=1))
    dist = torch.cat(means)
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(dist, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return PairedBootstrap(
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
        n_queries=n,
        gained=int((diff > 0).sum()),
        lost=int((diff < 0).sum()),
        tied=int((diff == 0).sum()),
    )


def standard_error(values: torch.Tensor | Sequence[float]) -> float:
    """The standard error of the mean of per-query values (sample standard deviation / √n)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise ValueError("a standard error needs at least 2 values")
    return float(v.std(unbiased=True)) / math.sqrt(v.numel())
