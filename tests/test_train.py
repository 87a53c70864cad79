"""The reference training loops (pyrag.train): each mode trains what it should, LSR
training improves held-out recall, the unfreeze step holds, checkpoints resume exactly,
and the passage encoder trains with asynchronous re-indexing.

The corpus is synthetic but shaped like the real experiment (benchmarks/domain_adaptation.py):
topics with their own vocabulary, passages of a few sentences, cloze queries from
make_cloze_task. The encoders are tiny hashed bags of words; the query encoder starts with
generic words overweighted, as a general-purpose encoder overweights words a domain does
not care about, and training has to learn to look past them.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter

import pytest
import torch
from cloze import BLANK, make_cloze_task  # benchmarks/ (tests/conftest.py puts it on sys.path)
from toy_lms import CopyLM, TinyClozeLM

import pyrag
from pyrag.reindex import AsyncReindexer
from pyrag.train import TrainConfig, Trainer, candidates, ra_dit_loss, recall_at_k, step_time_medians
from pyrag.train.example import words

DIM = 64
COMMON_WEIGHT = 2.0  # the query encoder's overweighting of generic words
BUCKETS = 1024


def synthetic_corpus(n_topics=30, per_topic=10, seed=0):
    """Passages of 3-4 sentences, each of 4 words of the passage's topic and 2 of 40 common words."""
    rng = random.Random(seed)
    common = [f"common{i}" for i in range(40)]
    passages = []
    for t in range(n_topics):
        topic = [f"t{t}word{j}" for j in range(10)]
        for _ in range(per_topic):
            sentences = []
            for _ in range(rng.randint(3, 4)):
                ws = rng.sample(topic, 4) + rng.sample(common, 2)
                rng.shuffle(ws)
                sentences.append(" ".join(ws).capitalize() + ".")
            passages.append(" ".join(sentences))
    return passages


class BagEncoder(torch.nn.Module):
    """Mean of hashed word embeddings, L2-normalised; generic words ("common*") have their
    embeddings scaled by common_weight."""

    def __init__(self, seed=0, common_weight=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.EmbeddingBag(BUCKETS, DIM, mode="mean")
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(BUCKETS, DIM, generator=g))
            for i in range(40):
                self.embed.weight[self.word_id(f"common{i}")] *= common_weight

    @staticmethod
    def word_id(word):
        return zlib.crc32(word.encode()) % BUCKETS

    def forward(self, texts):
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            ids += [self.word_id(w) for w in words(t)] or [0]
        out = self.embed(torch.tensor(ids), torch.tensor(offsets))
        return torch.nn.functional.normalize(out, dim=-1)


@pytest.fixture(scope="module")
def task():
    return make_cloze_task(synthetic_corpus(), heldout_fraction=0.25, seed=0)


def build_index(encoder, passages, dtype="float32"):
    with torch.no_grad():
        vectors = encoder(passages)
    index = pyrag.DenseIndex(DIM, dtype)
    index.add(vectors)
    return index


def make_trainer(task, cfg, *, lm="copy", passage_training=False, schedule="0-:5", dtype="float32", **kwargs):
    torch.manual_seed(0)
    query_encoder = BagEncoder(common_weight=COMMON_WEIGHT)
    passage_encoder = BagEncoder()
    index = build_index(passage_encoder, task.passages, dtype)
    reindexer = None
    if passage_training:
        reindexer = AsyncReindexer(
            passage_encoder, task.passages, index=index, schedule=schedule, chunk_size=64, progress=False
        )
        index = reindexer.index
    retriever = pyrag.Retriever(
        query_encoder,
        index,
        passages=task.passages,
        tau=cfg.tau_retriever,
        passage_encoder=passage_encoder if passage_training else None,
    )
    if lm == "copy":
        lm = CopyLM(task.passages)
    elif lm == "tiny":
        lm = TinyClozeLM(dim=32, layers=1, heads=2, buckets=BUCKETS, max_context_words=40, seed=0)
    return Trainer(
        retriever,
        cfg,
        task.train,
        lm=lm,
        eval_data=task.heldout,
        reindexer=reindexer,
        progress=False,
        log=lambda line: None,
        **kwargs,
    )


def heldout_recall(trainer, match=None):
    return float(trainer.evaluate(match).success.mean())


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# One torch thread for every test here: the models are tiny (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


BASE = dict(steps=40, batch_size=16, k=10, tau_retriever=0.1, lr_query=0.1, lr_passage=0.1, lr_lm=3e-3, log_every=0)


# ----------------------------------------------------------------------------- cloze
def test_cloze_task_is_split_by_passage(task):
    train_pos = {e.positive for e in task.train}
    heldout_pos = {e.positive for e in task.heldout}
    assert not train_pos & heldout_pos
    assert len(task.heldout) == round(0.25 * (len(task.train) + len(task.heldout)))
    for e in task.train + task.heldout:
        assert BLANK in e.query and e.answer not in words(e.query)
        # the passage supports the answer but no longer holds the query's sentence
        assert e.answer in words(task.passages[e.positive])
        assert e.query.replace(BLANK, e.answer).lower() not in task.passages[e.positive].lower()


def test_cloze_task_takes_several_queries_per_training_passage(task):
    multi = make_cloze_task(synthetic_corpus(), heldout_fraction=0.25, seed=0, train_queries_per_passage=3)
    assert multi.heldout == task.heldout  # held-out passages still give one query each
    heldout_pos = {e.positive for e in multi.heldout}
    assert not heldout_pos & {e.positive for e in multi.train}
    per_passage = Counter(e.positive for e in multi.train)
    assert max(per_passage.values()) == 3 and len(multi.train) > len(task.train)
    assert set(per_passage) == {e.positive for e in task.train}
    for e in multi.train:
        # every query's answer survives the removal of all its passage's query sentences
        assert e.answer in words(multi.passages[e.positive])
        assert e.query.replace(BLANK, e.answer).lower() not in multi.passages[e.positive].lower()
    for pid in heldout_pos:
        assert multi.passages[pid] == task.passages[pid]


def test_a_larger_corpus_keeps_the_queries_and_texts_of_its_start():
    corpus = synthetic_corpus()
    random.Random(1).shuffle(corpus)
    small = make_cloze_task(corpus[:120], heldout_fraction=0.25, query_passages=100)
    large = make_cloze_task(corpus, heldout_fraction=0.25, query_passages=100)
    assert large.passages[:120] == small.passages  # the embeddings of the start can be reused
    assert large.passages[120:] == corpus[120:]  # distractors, untouched
    for a, b in ((small.train, large.train), (small.heldout, large.heldout)):
        # The same sentences of the same passages (the blanked word is the rarest in each corpus).
        assert [(e.query.replace(BLANK, e.answer).lower(), e.positive) for e in a] == [
            (e.query.replace(BLANK, e.answer).lower(), e.positive) for e in b
        ]
    assert max(e.positive for e in large.train + large.heldout) < 100


def test_the_blank_is_a_setting():
    task3 = make_cloze_task(synthetic_corpus(), heldout_fraction=0.25, blank="___")
    assert all("___" in e.query and "____" not in e.query for e in task3.train)
    lm3 = TinyClozeLM(dim=16, layers=1, heads=2, buckets=256, seed=3, blank="___")
    lm4 = TinyClozeLM(dim=16, layers=1, heads=2, buckets=256, seed=3)
    contexts = [["a dog runs", "the cat sleeps"]]
    with torch.no_grad():
        torch.testing.assert_close(
            lm3(["the ___ runs fast"], contexts, ["dog"]), lm4([f"the {BLANK} runs fast"], contexts, ["dog"])
        )
        # Another blank is read as a plain word: the prediction is made elsewhere.
        assert not torch.allclose(
            lm4(["the ___ runs fast"], contexts, ["dog"]), lm3(["the ___ runs fast"], contexts, ["dog"])
        )
    for bad in ("", "two words", 3):
        with pytest.raises(ValueError, match="blank"):
            make_cloze_task(synthetic_corpus(2, 3), blank=bad)
        with pytest.raises(ValueError, match="blank"):
            TinyClozeLM(blank=bad)


@pytest.mark.parametrize(
    "kwargs",
    [dict(heldout_fraction=0.0), dict(heldout_fraction=1.0), dict(train_queries_per_passage=0), dict(query_passages=1)],
)
def test_cloze_task_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        make_cloze_task(synthetic_corpus(2, 3), **kwargs)


# ----------------------------------------------------------------------------- LMs
def test_copy_lm_matches_its_formula():
    lm = CopyLM(["alpha beta beta gamma", "delta"], copy_weight=0.5, context_length=None)
    out = lm(["q1", "q2"], [["beta beta alpha", None], ["gamma", "delta delta"]], ["beta", "zeta"])
    total = 4 + 1 + 4 + 1  # 5 words, 4 distinct, add-one over the vocabulary plus unknown
    p_beta = 0.5 * (2 + 1) / total
    p_zeta = 0.5 * (0 + 1) / total
    expected = torch.tensor(
        [
            [torch.log(torch.tensor(0.5 * 2 / 3 + p_beta)), 0.0],
            [torch.log(torch.tensor(p_zeta)), torch.log(torch.tensor(p_zeta))],
        ]
    )
    torch.testing.assert_close(out, expected)


def test_copy_lm_fixed_context_length_counts_occurrences():
    lm = CopyLM(["alpha beta beta gamma", "delta"], copy_weight=0.5, context_length=2)
    contexts = [["beta", "beta alpha gamma delta", "beta beta beta", "gamma"]]
    out = lm(["q"], contexts, ["beta"])
    p_beta = 0.5 * (2 + 1) / (4 + 1 + 4 + 1)
    # One occurrence scores the same in a 1-word and a 4-word context; the rate caps at 1.
    expected = torch.log(torch.tensor([[0.5 * 1 / 2 + p_beta, 0.5 * 1 / 2 + p_beta, 0.5 + p_beta, p_beta]]))
    torch.testing.assert_close(out, expected)
    # Dividing by |c| instead ranks the 1-word context four times the 4-word one.
    by_length = CopyLM(["alpha beta beta gamma", "delta"], copy_weight=0.5, context_length=None)(
        ["q"], contexts, ["beta"]
    )
    assert by_length[0, 0] > by_length[0, 1]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_copy_lm_rejects_bad_context_length(bad):
    with pytest.raises(ValueError, match="context_length"):
        CopyLM(["alpha"], context_length=bad)


def test_tiny_cloze_lm_scores_and_gradients():
    lm = TinyClozeLM(dim=16, layers=1, heads=2, buckets=256, seed=3)
    queries = [f"the {BLANK} runs fast", "no blank here"]
    contexts = [["a dog runs", "the cat sleeps", None], ["alpha beta", "gamma", "beta"]]
    out = lm(queries, contexts, ["dog", "beta"])
    assert out.shape == (2, 3) and out[0, 2] == 0
    assert bool(torch.isfinite(out).all()) and bool((out[:, :2] < 0).all())
    out.sum().backward()
    grads = [p.grad for p in lm.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    again = TinyClozeLM(dim=16, layers=1, heads=2, buckets=256, seed=3)
    torch.testing.assert_close(again(queries, contexts, ["dog", "beta"]), out.detach())


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="rag"),
        dict(k=0),
        dict(tau_retriever=0.0),
        dict(lr_lm=-1.0),
        dict(dual_schedule="both"),
        dict(freeze_retriever_steps=-1),
        dict(warmup_steps=-1),
        dict(lr_decay="cosine"),
        dict(in_batch=-1),
        dict(in_batch=11, k=10),
        dict(hard_negative_depth=0),
        dict(passage_start=-1),
        dict(eval_match="gold"),
        dict(k=True),
    ],
)
def test_config_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_trainer_rejects_inconsistent_setups(task):
    with pytest.raises(TypeError, match="trains the LM"):
        make_trainer(task, TrainConfig(mode="ra_dit", **BASE), lm="copy")
    with pytest.raises(ValueError, match="needs an lm"):
        make_trainer(task, TrainConfig(**BASE), lm=None)
    cfg = TrainConfig(train_passage_encoder=True, **BASE)
    with pytest.raises(ValueError, match="re-embed"):
        make_trainer(task, cfg)


# ----------------------------------------------------------------------------- candidates
def retriever_over(passages, *, live=False):
    torch.manual_seed(0)
    passage_encoder = BagEncoder()
    return pyrag.Retriever(
        BagEncoder(common_weight=COMMON_WEIGHT),
        build_index(passage_encoder, passages),
        passages=passages,
        passage_encoder=passage_encoder if live else None,
    )


def test_candidates_are_the_top_k_the_batch_top_m_and_hard_negatives(task):
    retriever = retriever_over(task.passages)
    queries = [e.query for e in task.train[:6]]
    cfg = TrainConfig(k=5, in_batch=2, hard_negatives=3, hard_negative_depth=10)
    cand = candidates(retriever, queries, cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = retriever.encode_queries(queries)
        _, ranked = retriever.index.search(q, 15)
    shared = set(ranked[:, :2].flatten().tolist())
    for i, row in enumerate(cand.ids.tolist()):
        valid = [p for p in row if p >= 0]
        assert len(valid) == len(set(valid))  # each passage once
        own, deeper = set(ranked[i, :5].tolist()), set(ranked[i, 5:15].tolist())
        negatives = set(valid) - own - shared
        assert own <= set(valid) and shared <= set(valid)
        assert len(negatives) <= 3 and negatives <= deeper
        assert len(set(valid) & deeper) >= 3  # the draws may coincide with others' top 2
        assert cand.retrieved[i].tolist() == [p in own for p in row]
        assert cand.passages[i] == [task.passages[p] if p >= 0 else None for p in row]
    # The scores are q . x of the stored vectors, differentiable, -inf on padding.
    expected = (q[:, None, :] * retriever.index.get(cand.ids)).sum(-1).masked_fill(~cand.mask, float("-inf"))
    torch.testing.assert_close(cand.scores.detach(), expected)
    assert cand.scores.requires_grad and cand.mask.tolist() == (cand.ids >= 0).tolist()
    again = candidates(retriever, queries, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.ids, cand.ids)  # the draws follow the generator
    # Only the top k: a [B, k] block, all of it retrieved.
    top = candidates(retriever, queries, TrainConfig(k=5))
    assert torch.equal(top.ids, ranked[:, :5]) and bool(top.retrieved.all())
    # The whole corpus: k = len(index).
    whole = candidates(retriever, queries[:2], TrainConfig(k=len(task.passages)))
    assert [sorted(r) for r in whole.ids.tolist()] == [list(range(len(task.passages)))] * 2


class CountingLM:
    """CopyLM that counts the (query, passage) pairs it scores."""

    def __init__(self, passages):
        self.lm, self.pairs = CopyLM(passages), 0

    def __call__(self, queries, contexts, targets):
        self.pairs += sum(c is not None for row in contexts for c in row)
        return self.lm(queries, contexts, targets)


@pytest.mark.parametrize("in_batch", [0, 1, 3])
def test_a_step_costs_the_same_lm_calls_whatever_the_corpus_size(task, in_batch):
    """The same queries over the corpus and over 10x as many passages: the LM scores at most
    k + (B - 1) * in_batch passages per query in both."""
    big = task.passages + synthetic_corpus(n_topics=300, seed=1)[300:]
    assert len(big) >= 10 * len(task.passages)
    cfg = TrainConfig(k=5, in_batch=in_batch)
    queries, answers = [e.query for e in task.train[:8]], [e.answer for e in task.train[:8]]
    counts = []
    for passages in (task.passages, big):
        lm = CountingLM(passages)
        pyrag.train.replug_lsr_loss(retriever_over(passages), lm, queries, answers, cfg).backward()
        counts.append(lm.pairs)
    assert counts[0] <= 8 * (5 + 7 * in_batch) and counts[1] <= 8 * (5 + 7 * in_batch)
    assert abs(counts[0] - counts[1]) <= 8 * 7 * in_batch  # only the overlap of the batch's lists differs


def test_candidates_reembed_with_the_live_passage_encoder(task):
    retriever = retriever_over(task.passages, live=True)
    queries = [e.query for e in task.train[:4]]
    cfg = TrainConfig(k=4, in_batch=4)
    cand = candidates(retriever, queries, cfg)
    cand.scores.masked_fill(~cand.mask, 0).sum().backward()
    assert retriever.passage_encoder.embed.weight.grad is not None
    retriever.passage_encoder.zero_grad(set_to_none=True)
    stored = candidates(retriever, queries, cfg, reembed=False)
    stored.scores.masked_fill(~stored.mask, 0).sum().backward()
    assert retriever.passage_encoder.embed.weight.grad is None  # the stored vectors: no gradient there
    torch.testing.assert_close(stored.scores.detach(), cand.scores.detach())  # the encoder has not moved yet
    with pytest.raises(ValueError, match="passage_encoder"):
        candidates(retriever_over(task.passages), queries, cfg, reembed=True)


def test_ra_dit_trains_the_lm_on_the_retrieved_passages_only(task):
    retriever = retriever_over(task.passages)
    queries, answers = [e.query for e in task.train[:4]], [e.answer for e in task.train[:4]]
    cfg = TrainConfig(mode="ra_dit", k=3, in_batch=3)
    lm = TinyClozeLM(dim=16, layers=1, heads=2, buckets=BUCKETS, seed=0)
    loss = ra_dit_loss(retriever, lm, queries, answers, cfg, train_retriever=False)
    cand = candidates(retriever, queries, cfg)
    with torch.no_grad():
        scores = lm(queries, cand.passages, answers)
    assert cand.retrieved.sum(dim=1).tolist() == [3] * 4 and cand.ids.shape[1] > 3
    torch.testing.assert_close(loss.detach(), -scores.masked_fill(~cand.retrieved, 0).sum(dim=1).mean())


# ----------------------------------------------------------------------------- training
def test_lsr_training_improves_heldout_recall(task):
    trainer = make_trainer(task, TrainConfig(mode="replug_lsr", **BASE))
    before = heldout_recall(trainer)
    trainer.train()
    after = heldout_recall(trainer)
    assert after >= before + 0.15, (before, after)


@pytest.mark.parametrize("mode", ["dpr", "marginal", "ra_dit"])
def test_each_mode_lowers_its_heldout_loss_and_raises_recall(task, mode):
    """Every mode generalises: its own objective (which includes the LM's part where the
    LM trains) falls on held-out queries, and held-out recall rises."""
    cfg = TrainConfig(mode=mode, hard_negatives=2 if mode == "dpr" else 0, **{**BASE, "lr_lm": 3e-2})
    trainer = make_trainer(task, cfg, lm="tiny" if mode != "dpr" else None)

    def heldout_loss():
        for m in trainer._modules.values():
            m.eval()
        with torch.no_grad():
            return trainer.loss(cfg.steps, task.heldout[:48]).item()

    recall_before, loss_before = heldout_recall(trainer), heldout_loss()
    trainer.train()
    assert heldout_loss() < 0.9 * loss_before
    assert heldout_recall(trainer) >= recall_before + 0.07


def test_retriever_stays_frozen_until_its_unfreeze_step(task):
    cfg = TrainConfig(mode="ra_dit", freeze_retriever_steps=5, **{**BASE, "steps": 8})
    trainer = make_trainer(task, cfg, lm="tiny")
    q0, lm0 = params(trainer.retriever.query_encoder), params(trainer.lm)
    trainer.train(5)
    assert same(params(trainer.retriever.query_encoder), q0)
    assert not same(params(trainer.lm), lm0)
    trainer.train()
    assert not same(params(trainer.retriever.query_encoder), q0)


def test_learning_rate_schedule(task):
    cfg = TrainConfig(mode="ra_dit", warmup_steps=4, lr_decay="linear", **{**BASE, "steps": 10, "lr_lm": 1e-2})
    trainer = make_trainer(task, cfg, lm="tiny")
    assert [trainer.lr_scale(s) for s in range(11)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]
    )
    seen = []
    for _ in range(10):
        trainer.train_step()
        seen.append({g["role"]: g["lr"] for g in trainer.optimizer.param_groups})
    expected = [trainer.lr_scale(s) for s in range(10)]
    assert [lr["query_encoder"] for lr in seen] == pytest.approx([cfg.lr_query * f for f in expected])
    assert [lr["lm"] for lr in seen] == pytest.approx([cfg.lr_lm * f for f in expected])
    constant = make_trainer(task, TrainConfig(mode="ra_dit", warmup_steps=3, **{**BASE, "steps": 10}), lm="tiny")
    assert [constant.lr_scale(s) for s in (0, 2, 3, 9, 50)] == pytest.approx([1 / 3, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "mode, lm, schedule",
    [
        ("replug_lsr", "copy", {}),
        ("ra_dit", "tiny", {}),
        ("replug_lsr", "copy", dict(warmup_steps=4, lr_decay="linear")),
    ],
)
def test_checkpoint_resume_continues_identically(task, tmp_path, mode, lm, schedule):
    cfg = TrainConfig(mode=mode, **{**BASE, "steps": 12}, **schedule)
    straight = make_trainer(task, cfg, lm=lm)
    straight.train()

    first = make_trainer(task, cfg, lm=lm)
    first.train(6)
    first.save_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(123)  # whatever happens between the runs
    resumed = make_trainer(task, cfg, lm=lm)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.state.step == 6
    resumed.train()

    assert [r.loss for r in first.state.history + resumed.state.history] == [r.loss for r in straight.state.history]
    for a, b in zip(resumed._modules.values(), straight._modules.values()):
        assert same(params(a), params(b))


def test_checkpoint_of_another_mode_is_rejected(task, tmp_path):
    trainer = make_trainer(task, TrainConfig(**{**BASE, "steps": 2}))
    trainer.train()
    trainer.save_checkpoint(tmp_path / "ckpt")
    other = make_trainer(task, TrainConfig(mode="dpr", **{**BASE, "steps": 2}), lm=None)
    with pytest.raises(ValueError, match="mode"):
        other.load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_passage_encoder_trains_with_async_reindexing(task, tmp_path, dtype):
    cfg = TrainConfig(mode="replug_lsr", train_passage_encoder=True, **BASE)
    trainer = make_trainer(task, cfg, passage_training=True, schedule="0-:5", dtype=dtype)
    reindexer = trainer.reindexer
    passage0 = params(trainer.retriever.passage_encoder)
    with reindexer:
        before = heldout_recall(trainer)
        trainer.train()
        reindexer.wait(60)
        after = heldout_recall(trainer)
        assert after >= before + 0.1
        assert not same(params(trainer.retriever.passage_encoder), passage0)
        assert reindexer.stats.completed >= 2 and reindexer.version == reindexer.stats.completed
        history = trainer.state.history
        assert [r.index_version for r in history] == sorted(r.index_version for r in history)
        assert all(0 <= r.staleness <= r.step for r in history)
        busy, idle, n_busy, n_idle = step_time_medians(history)
        assert n_busy + n_idle <= len(history)

        # The index in service is the passage encoder at the snapshot step; a checkpoint
        # carries it, with its version, to the resumed run.
        trainer.save_checkpoint(tmp_path / "ckpt")
        saved = reindexer.index.snapshot()
    resumed = make_trainer(task, cfg, passage_training=True)  # a float32 index until the load
    with resumed.reindexer:
        resumed.load_checkpoint(tmp_path / "ckpt")
        now = resumed.reindexer.index.snapshot()
        assert (now.version, now.step, now.dtype) == (saved.version, saved.step, dtype)
        assert torch.equal(now.index.vectors(), saved.index.vectors())
        assert torch.equal(now.index.ids, saved.index.ids)
        assert recall_at_k(resumed.retriever, task.heldout) == after


def test_the_passage_encoder_waits_for_passage_start(task):
    """Atlas's query-side first: before passage_start only the query encoder moves, and the
    candidates are scored with the stored vectors."""
    cfg = TrainConfig(mode="replug_lsr", train_passage_encoder=True, passage_start=4, **{**BASE, "steps": 7})
    trainer = make_trainer(task, cfg, passage_training=True, schedule="none")
    with trainer.reindexer:
        q0, p0 = params(trainer.retriever.query_encoder), params(trainer.retriever.passage_encoder)
        trainer.train(4)
        assert not same(params(trainer.retriever.query_encoder), q0)
        assert same(params(trainer.retriever.passage_encoder), p0)
        trainer.train()
        assert not same(params(trainer.retriever.passage_encoder), p0)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_a_checkpoint_at_index_version_0_restores_the_dtype(task, tmp_path, dtype):
    cfg = TrainConfig(mode="replug_lsr", train_passage_encoder=True, **BASE)
    trainer = make_trainer(task, cfg, passage_training=True, schedule="none", dtype=dtype)
    with trainer.reindexer:
        trainer.save_checkpoint(tmp_path / "ckpt")
        trainer.save_checkpoint(tmp_path / "ckpt")  # a second save replaces the first's index file
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "ckpt").iterdir()) == ["index", "trainer.safetensors"]
    resumed = make_trainer(task, cfg, passage_training=True, dtype="float32")
    with resumed.reindexer:
        resumed.load_checkpoint(tmp_path / "ckpt")
        assert resumed.reindexer.index.dtype == dtype and resumed.reindexer.version == 0


def test_recall_at_k_by_positive_and_by_answer(task):
    trainer = make_trainer(task, TrainConfig(**BASE))
    retriever, examples = trainer.retriever, task.heldout
    with torch.no_grad():
        _, ids = retriever.index.search(retriever.encode_queries([e.query for e in examples]), 5)
    by_positive = sum(e.positive in row for e, row in zip(examples, ids.tolist())) / len(examples)
    by_answer = sum(
        any(e.answer in words(task.passages[i]) for i in row) for e, row in zip(examples, ids.tolist())
    ) / len(examples)
    assert recall_at_k(retriever, examples, 5) == by_positive
    assert recall_at_k(retriever, examples, 5, match="answer") == by_answer
    assert by_answer >= by_positive  # the positive passage contains its answer
    with pytest.raises(ValueError):
        recall_at_k(retriever, examples, 5, match="gold")
