"""Cloze queries from a corpus: self-supervised training data for domain adaptation.

A corpus without labelled queries still teaches a retriever its domain. For a passage
P, take one of its sentences S, blank its rarest content word w that P also uses outside
S, and remove S from P: the query is S with w blanked, the answer is w, and the passage
that supports it is P without S (so retrieval cannot match the sentence verbatim and has
to find the passage by its topic). An LM reading the right passage can recover w; that is
the signal LSR training distils into the retriever.

The split is by passage: every held-out query comes from a passage that no training query
comes from, so held-out recall measures what generalises beyond the training passages.

A passage's queries and its indexed text depend only on the passage, the seed and the
number of queries it gives, not on the rest of the corpus (each passage draws from its own
seeded generator; only which answer word is rarest depends on the corpus). So a corpus that
extends another (the first 20,000 passages of a 100,000) indexes the same texts for the
passages they share, and their embeddings can be cached once (corpora.encode_cached).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from pyrag.train import Example
from pyrag.train.example import words

BLANK = "____"  # the default blank; make_cloze_task(blank=) and TinyClozeLM(blank=) take another

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
# Function words and words too generic in technical prose to identify a passage.
_STOPWORDS = frozenset(
    """
    a about above after again against all also although always among an and any are as at
    be because been before being below between both but by can cannot could did do does
    doing done during each either else even every few for from further given had has have
    having here how however if in into is it its itself just like made make many may might
    more most much must need never new no nor not now of off often on once one only or other
    otherwise our out over own same see set several shall should since so some such than that
    the their them then there these they this those though through thus to too two under
    until up upon use used uses using very via was way we were what when where whether which
    while who whom whose why will with within without would yet you your
""".split()
)


@dataclass
class ClozeTask:
    passages: list[str]  # the corpus to index (query sentences removed)
    train: list[Example]
    heldout: list[Example]


def make_cloze_task(
    passages: Sequence[str],
    *,
    heldout_fraction: float = 0.2,
    max_queries: Optional[int] = None,
    train_queries_per_passage: int = 1,
    min_sentence_words: int = 6,
    min_answer_chars: int = 4,
    seed: int = 0,
    blank: str = BLANK,
    query_passages: Optional[int] = None,
) -> ClozeTask:
    """Cloze queries over `passages`, split by passage into train and held-out.

    A held-out passage gives one query; a training passage gives up to
    train_queries_per_passage, from distinct sentences, all removed from its indexed text
    (each answer still occurs in what remains). Passages with no usable sentence stay in
    the corpus unchanged (as distractors). max_queries caps the number of passages that
    give queries (train + held-out), taking the first ones in input order (shuffle the
    corpus first): the queries themselves when train_queries_per_passage is 1. The
    held-out passages are the round(heldout_fraction · n) with the smallest draws of their
    own generators. The held-out queries do not depend on train_queries_per_passage.
    blank: the text that replaces the answer in a query.
    query_passages: only passages[:query_passages] give queries; the rest are distractors
        (default: all). A larger corpus with the same query_passages then has the same
        queries (up to which answer word is rarest) and, for the passages the smaller one
        has, the same texts.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not isinstance(train_queries_per_passage, int) or train_queries_per_passage < 1:
        raise ValueError(f"train_queries_per_passage must be an int >= 1, got {train_queries_per_passage!r}")
    if len(passages) == 0:
        raise ValueError("passages is empty")
    if not isinstance(blank, str) or not blank or any(c.isspace() for c in blank):
        raise ValueError(f"blank must be a non-empty token without spaces, got {blank!r}")
    doc_freq = Counter()
    for p in passages:
        doc_freq.update(set(words(p)))

    corpus = list(passages)
    candidates = []  # (draw, passage id, its sentences, its clozes: (sentence index, query, answer))
    if query_passages is not None and (not isinstance(query_passages, int) or query_passages < 2):
        raise ValueError(f"query_passages must be None or an int >= 2, got {query_passages!r}")
    for pid, passage in enumerate(passages[:query_passages]):
        if max_queries is not None and len(candidates) == max_queries:
            break
        rng = random.Random(f"{seed}\x00{passage}")  # the passage's own: the corpus around it does not matter
        draw = rng.random()
        sentences, clozes = _clozes(
            passage, doc_freq, train_queries_per_passage, min_sentence_words, min_answer_chars, rng, blank
        )
        if clozes:
            candidates.append((draw, pid, sentences, clozes))
    if len(candidates) < 2:
        raise ValueError(f"only {len(candidates)} passages yield a cloze query; need at least 2")
    n_heldout = max(1, round(len(candidates) * heldout_fraction))
    held = {pid for _, pid, _, _ in sorted(candidates)[:n_heldout]}
    train, heldout = [], []
    for _, pid, sentences, clozes in candidates:
        if pid in held:
            clozes = clozes[:1]
        used = {i for i, _, _ in clozes}
        corpus[pid] = " ".join(s for i, s in enumerate(sentences) if i not in used)
        (heldout if pid in held else train).extend(Example(q, a, pid) for _, q, a in clozes)
    return ClozeTask(corpus, train=train, heldout=heldout)


def _clozes(
    passage: str,
    doc_freq: Counter,
    limit: int,
    min_sentence_words: int,
    min_answer_chars: int,
    rng: random.Random,
    blank: str,
):
    """(the passage's sentences, up to `limit` clozes (sentence index, query, answer)).

    Sentences are tried in a seeded order; each cloze's answer, and every earlier one's,
    must occur in the passage without all the chosen sentences, so any prefix of the list
    is a valid set of queries for the passage."""
    sentences = _SENTENCE_END.split(passage.strip())
    if len(sentences) < 2:
        return sentences, []
    order = list(range(len(sentences)))
    rng.shuffle(order)
    chosen: list[tuple[int, str, str]] = []
    for i in order:
        if len(chosen) == limit or len(chosen) + 1 == len(sentences):  # keep one sentence
            break
        sentence = sentences[i]
        if len(sentence.split()) < min_sentence_words:
            continue
        removed = {j for j, _, _ in chosen} | {i}
        rest_words = set(words(" ".join(s for j, s in enumerate(sentences) if j not in removed)))
        if any(a not in rest_words for _, _, a in chosen):
            continue
        options = [
            w
            for w in dict.fromkeys(words(sentence))
            if len(w) >= min_answer_chars and w not in _STOPWORDS and w in rest_words
        ]
        if not options:
            continue
        answer = min(options, key=lambda w: doc_freq[w])  # the most telling word
        query = re.sub(
            rf"(?<![A-Za-z0-9_]){re.escape(answer)}(?![A-Za-z0-9_])", lambda _: blank, sentence, flags=re.IGNORECASE
        )
        chosen.append((i, query, answer))
    return sentences, chosen
