"""Two small LMs that score log p_LM(y | c∘x), the signal LSR training needs.

Both follow GeneratorAdapter's calling convention, `lm(queries, contexts, targets) -> [B, K]`
(contexts[i] is query i's list of K passages, None for padding, which scores 0), so either
can be swapped for a real LM behind pyrag.GeneratorAdapter.

* CopyLM is REPLUG's black box in miniature: no parameters, no gradient. It believes a
  word that the context uses, and otherwise falls back on the corpus's unigram model.
* TinyClozeLM is a small transformer trained from scratch (RA-DIT's "dual" mode trains
  it with the retriever). It reads context ∘ query and predicts the blanked word with a
  pointer into the context mixed with a softmax over hashed word buckets.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Optional

import torch
from cloze import BLANK
from torch import nn

from pyrag.train.example import words


@functools.lru_cache(maxsize=1 << 16)
def _word_counts(text: str) -> tuple[Counter, int]:
    w = words(text)
    return Counter(w), len(w)


class CopyLM:
    """p(y | c∘x) = λ·min(1, count(y, c)/L) + (1 − λ)·p_unigram(y), per word of y, where
    L is the context's own word count |c| or, given context_length, that fixed count.

    Args:
        corpus: texts for the unigram model (add-one smoothed over its vocabulary).
        copy_weight: λ, the trust in the context.
        context_length: an int L divides every context's count by L (default 30, a little
            over the benchmark corpora's median passage of 24 words); None divides by |c|, a
            copy rate. Dividing by |c| makes a short passage that holds y score up to
            |c_long|/|c_short| times a long one that holds it as often, so LSR targets
            built on it teach the retriever to prefer short passages whatever the query.
            A fixed L (about a typical passage's length) scores by occurrences alone.
    """

    def __init__(self, corpus: Sequence[str], copy_weight: float = 0.5, context_length: Optional[int] = 30):
        if not 0.0 <= copy_weight < 1.0:
            raise ValueError(f"copy_weight must be in [0, 1), got {copy_weight}")
        if context_length is not None and (
            isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1
        ):
            raise ValueError(f"context_length must be None or an int >= 1, got {context_length!r}")
        self.copy_weight = copy_weight
        self.context_length = context_length
        self._unigram = Counter()
        for text in corpus:
            self._unigram.update(words(text))
        self._total = sum(self._unigram.values()) + len(self._unigram) + 1

    def __repr__(self) -> str:
        return (
            f"CopyLM(copy_weight={self.copy_weight}, context_length={self.context_length}, vocab={len(self._unigram)})"
        )

    def __call__(
        self, queries: Sequence[str], contexts: Sequence[Sequence[Optional[str]]], targets: Sequence[str]
    ) -> torch.Tensor:
        if not len(queries) == len(contexts) == len(targets):
            raise ValueError(f"got {len(queries)} queries, {len(contexts)} context lists and {len(targets)} targets")
        k = max((len(row) for row in contexts), default=0)
        out = torch.zeros(len(queries), k)
        lam = self.copy_weight
        for i, (row, target) in enumerate(zip(contexts, targets)):
            target_words = words(target)
            prior = [(1 - lam) * (self._unigram[w] + 1) / self._total for w in target_words]
            for j, context in enumerate(row):
                if context is None:
                    continue
                counts, n = _word_counts(context)
                length = self.context_length or max(n, 1)
                out[i, j] = sum(math.log(lam * min(1.0, counts[w] / length) + p) for w, p in zip(target_words, prior))
        return out


# ----------------------------------------------------------------------------- TinyClozeLM
_PAD, _SEP, _BLANK, _FIRST_WORD = 0, 1, 2, 3


class TinyClozeLM(nn.Module):
    """A small transformer LM trained from scratch, for cloze targets.

    The input is the context's words, a separator, then the query's words, with the blank
    (`blank`: the cloze task's, make_cloze_task(blank=)) as a token of its own; words are
    hashed (CRC32) into `buckets` ids, so there is no vocabulary to build. At the blank (or,
    without one, the last query word) the model mixes two predictions of each target word w
    with a learned gate g:
        p(w) = g · Σ_{i : context_i = w} softmax_i(attention of the blank on context i)
             + (1 − g) · softmax over buckets(w).
    The pointer makes copying from the context easy to learn; at initialisation it is near
    uniform over the context, which is CopyLM's estimate. A multi-word target sums its
    words' log-probabilities.
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        buckets: int = 1 << 14,
        max_context_words: int = 96,
        max_query_words: int = 48,
        seed: int = 0,
        blank: str = BLANK,
    ):
        super().__init__()
        if not isinstance(blank, str) or not blank or any(c.isspace() for c in blank):
            raise ValueError(f"blank must be a non-empty token without spaces, got {blank!r}")
        self.blank = blank
        self.buckets = buckets
        self.max_context_words = max_context_words
        self.max_query_words = max_query_words
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the same model for the same seed, whatever ran before
        try:
            self.embed = nn.Embedding(buckets, dim, padding_idx=_PAD)
            self.position = nn.Embedding(max_context_words + max_query_words + 1, dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.pointer = nn.Linear(dim, dim, bias=False)
            self.gate = nn.Linear(dim, 1)
            self.vocab = nn.Linear(dim, buckets)
        finally:
            torch.random.set_rng_state(gen_state)

    def _ids(self, text: str, limit: int) -> list[int]:
        out = []
        for raw in text.split():
            if raw == self.blank or raw.strip(".,;:()\"'") == self.blank:
                out.append(_BLANK)
            else:
                out += [self.word_id(w) for w in words(raw)]
        return out[:limit]

    def word_id(self, word: str) -> int:
        return _FIRST_WORD + zlib.crc32(word.lower().encode()) % (self.buckets - _FIRST_WORD)

    def forward(
        self, queries: Sequence[str], contexts: Sequence[Sequence[Optional[str]]], targets: Sequence[str]
    ) -> torch.Tensor:
        """log p(y_i | c_ij ∘ x_i) [B, K]; 0 where the context is None."""
        if not len(queries) == len(contexts) == len(targets):
            raise ValueError(f"got {len(queries)} queries, {len(contexts)} context lists and {len(targets)} targets")
        b = len(queries)
        k = max((len(row) for row in contexts), default=0)
        device = self.embed.weight.device
        seqs, ctx_lens, blank_at, target_ids, where = [], [], [], [], []
        for i, (query, row, target) in enumerate(zip(queries, contexts, targets)):
            q = self._ids(query, self.max_query_words) or [_BLANK]
            y = [self.word_id(w) for w in words(target)]
            for j, context in enumerate(row):
                if context is None:
                    continue
                c = self._ids(context, self.max_context_words)
                seq = c + [_SEP] + q
                seqs.append(seq)
                ctx_lens.append(len(c))
                blank_at.append(len(c) + 1 + (q.index(_BLANK) if _BLANK in q else len(q) - 1))
                target_ids.append(y)
                where.append((i, j))
        out = torch.zeros(b, k, device=device)
        if not seqs:
            return out
        n, length = len(seqs), max(len(s) for s in seqs)
        tokens = torch.full((n, length), _PAD, dtype=torch.long)
        for r, s in enumerate(seqs):
            tokens[r, : len(s)] = torch.tensor(s)
        tokens = tokens.to(device)
        pad = tokens == _PAD
        pos = torch.arange(length, device=device)
        h = self.encoder(self.embed(tokens) + self.position(pos)[None], src_key_padding_mask=pad)
        h = self.norm(h)
        rows = torch.arange(n, device=device)
        h_blank = h[rows, torch.tensor(blank_at, device=device)]  # [n, dim]
        # Pointer over the context positions only.
        ctx_len = torch.tensor(ctx_lens, device=device)
        in_context = pos[None, :] < ctx_len[:, None]  # [n, length]
        logits = torch.einsum("nd,nld->nl", self.pointer(h_blank), h) / math.sqrt(h.shape[-1])
        log_attn = torch.log_softmax(logits.masked_fill(~in_context, float("-inf")), dim=-1)
        log_gate = nn.functional.logsigmoid(self.gate(h_blank)).squeeze(-1)  # log g
        log_not_gate = nn.functional.logsigmoid(-self.gate(h_blank)).squeeze(-1)  # log (1 - g)
        log_vocab = torch.log_softmax(self.vocab(h_blank), dim=-1)  # [n, buckets]
        # Every target word at once: y [n, T] with a mask for the shorter targets.
        t_max = max(1, max(len(y) for y in target_ids))
        y = torch.zeros(n, t_max, dtype=torch.long)
        y_mask = torch.zeros(n, t_max, dtype=torch.bool)
        for r, ids in enumerate(target_ids):
            y[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            y_mask[r, : len(ids)] = True
        y, y_mask = y.to(device), y_mask.to(device)
        hit = in_context[:, None, :] & (tokens[:, None, :] == y[:, :, None])  # [n, T, length]
        has_hit = hit.any(dim=-1)
        # A word absent from the context has copy probability 0 (log -inf); rows without a
        # hit are masked out of the logsumexp so that no NaN reaches the gradient.
        copy_terms = log_attn[:, None, :].expand_as(hit).masked_fill(~hit, float("-inf"))
        copy_terms = copy_terms.masked_fill(~has_hit[..., None], 0.0)
        log_copy = torch.where(
            has_hit, torch.logsumexp(copy_terms, dim=-1), torch.full_like(has_hit, float("-inf"), dtype=h.dtype)
        )
        word_logp = torch.logaddexp(
            log_gate[:, None] + log_copy, log_not_gate[:, None] + log_vocab.gather(1, y)
        )  # [n, T]
        scores = word_logp.masked_fill(~y_mask, 0.0).sum(dim=-1)
        idx_i = torch.tensor([i for i, _ in where], device=device)
        idx_j = torch.tensor([j for _, j in where], device=device)
        return out.index_put((idx_i, idx_j), scores)
