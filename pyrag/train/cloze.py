"""Cloze queries from a corpus: self-supervised training data for domain adaptation.

A corpus without labelled queries still teaches a retriever its domain. For a passage
P, take one of its sentences S, blank its rarest content word w that P also uses outside
S, and remove S from P: the query is S with w blanked, the answer is w, and the passage
that supports it is P without S (so retrieval cannot match the sentence verbatim and has
to find the passage by its topic). An LM reading the right passage can recover w; that is
the signal LSR training distils into the retriever.

The split is by passage: every held-out query comes from a passage that no training query
comes from, so held-out recall measures what generalises beyond the training passages.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

BLANK = "____"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]+")
# Function words and words too generic in technical prose to identify a passage.
_STOPWORDS = frozenset("""
    a about above after again against all also although always among an and any are as at
    be because been before being below between both but by can cannot could did do does
    doing done during each either else even every few for from further given had has have
    having here how however if in into is it its itself just like made make many may might
    more most much must need never new no nor not now of off often on once one only or other
    otherwise our out over own same see set several shall should since so some such than that
    the their them then there these they this those though through thus to too two under
    until up upon use used uses using very via was way we were what when where whether which
    while who whom whose why will with within without would yet you your
""".split())


@dataclass(frozen=True)
class Example:
    """One training or evaluation query: the question text, the answer the LM should
    produce, and the id of the passage that supports it (None when unknown)."""
    query: str
    answer: str
    positive: Optional[int] = None


@dataclass
class ClozeTask:
    passages: list[str]        # the corpus to index (query sentences removed)
    train: list[Example]
    heldout: list[Example]


def words(text: str) -> list[str]:
    """Lower-cased word tokens, as the cloze builder and CopyLM see text."""
    return [w.lower() for w in _WORD.findall(text)]


def make_cloze_task(passages: Sequence[str], *, heldout_fraction: float = 0.2,
                    max_queries: Optional[int] = None, min_sentence_words: int = 6,
                    min_answer_chars: int = 4, seed: int = 0) -> ClozeTask:
    """Cloze queries over `passages`, split by passage into train and held-out.

    At most one query per passage; passages with no usable sentence stay in the corpus
    unchanged (as distractors). max_queries caps the number of queries (train + held-out).
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if len(passages) == 0:
        raise ValueError("passages is empty")
    doc_freq = Counter()
    for p in passages:
        doc_freq.update(set(words(p)))

    rng = random.Random(seed)
    corpus = list(passages)
    candidates = []  # (passage id, query, answer)
    for pid, passage in enumerate(passages):
        cloze = _cloze(passage, doc_freq, min_sentence_words, min_answer_chars, rng)
        if cloze is not None:
            query, answer, rest = cloze
            candidates.append((pid, query, answer, rest))
    rng.shuffle(candidates)
    if max_queries is not None:
        candidates = candidates[:max_queries]
    if len(candidates) < 2:
        raise ValueError(f"only {len(candidates)} passages yield a cloze query; need at least 2")
    n_heldout = max(1, round(len(candidates) * heldout_fraction))
    examples = []
    for pid, query, answer, rest in candidates:
        corpus[pid] = rest
        examples.append(Example(query, answer, pid))
    return ClozeTask(corpus, train=examples[n_heldout:], heldout=examples[:n_heldout])


def _cloze(passage: str, doc_freq: Counter, min_sentence_words: int, min_answer_chars: int,
           rng: random.Random):
    sentences = _SENTENCE_END.split(passage.strip())
    if len(sentences) < 2:
        return None
    order = list(range(len(sentences)))
    rng.shuffle(order)
    for i in order:
        sentence = sentences[i]
        if len(sentence.split()) < min_sentence_words:
            continue
        rest = " ".join(sentences[:i] + sentences[i + 1:])
        rest_words = set(words(rest))
        choices = [w for w in dict.fromkeys(words(sentence))
                   if len(w) >= min_answer_chars and w not in _STOPWORDS and w in rest_words]
        if not choices:
            continue
        answer = min(choices, key=lambda w: doc_freq[w])  # the most telling word
        query = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(answer)}(?![A-Za-z0-9_])", BLANK, sentence,
                       flags=re.IGNORECASE)
        return query, answer, rest
    return None
