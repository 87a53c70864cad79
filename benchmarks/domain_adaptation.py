"""Domain adaptation, measured: fine-tune all-MiniLM-L6-v2 on a real corpus with pyrag.

    python benchmarks/domain_adaptation.py            # about 20 minutes on 2 CPU cores

Data: paragraphs of the Python documentation (Debian's python3-doc, via benchmarks/corpora.py).
Queries are cloze sentences (pyrag.train.cloze.make_cloze_task): a sentence of a passage with
its most telling word blanked, the answer being that word, and the sentence removed from
the indexed passage. Held-out queries come from passages that no training query uses; a
training passage can give several queries (--train-queries-per-passage; all their
sentences are removed), a held-out one gives one. --outside-passages adds training queries
from python3-doc passages that are not indexed (their answers are looked for in the index).

Runs, all starting from the same MiniLM and the same index:
1. REPLUG-LSR, query encoder only, with a black-box LM (CopyLM: smoothed copy/unigram,
   counting the answer's occurrences in a passage per --copy-length words, whatever the
   passage's length): held-out recall@10 before and after. The LSR candidates are the whole corpus (the
   passage vectors are the index's, so this is cheap). --validation sets aside the queries
   of a fraction of the training passages to choose the stopping step (never held-out ones).
2. The same, also training the passage encoder, with AsyncReindexer refreshing the index
   in the background: refreshes, staleness, then the median time of the same training
   steps run three times from the same state: without a refresh, while one runs (the
   final refresh, from the last step's weights), and without again.
3. RA-DIT dual: a small transformer LM (TinyClozeLM) trained from scratch by the same
   loop, the retriever frozen for the first steps and then trained by LSR on its scores.

Threads: on 2 cores the trainer runs with 1 torch thread (--threads) and the re-index
worker with 1 more at niceness +5 (AsyncReindexer's defaults): one core each. A 2-thread
trainer beside a busy third thread loses far more than it gains, because each OpenMP
parallel region waits at its barrier for whichever of its threads was descheduled.

Recall@10 is reported two ways: by answer (some top-10 passage contains the answer word:
DPR's top-k retrieval accuracy, what the LM needs and what LSR optimises) and by own
passage (the passage the query was cut from is in the top 10). The last line printed is
`recall@10 before X after Y` for run 1, by answer.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the trainer owns the cores

import torch
from cloze import make_cloze_task
from corpora import encode, load_minilm, python_doc_passages
from toy_lms import CopyLM, TinyClozeLM

import pyrag
from pyrag.reindex import AsyncReindexer, Schedule
from pyrag.train import Example, SentenceTransformerEncoder, TrainConfig, Trainer, recall_at_k


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=2000, help="corpus size (a seeded sample of python3-doc)")
    p.add_argument("--queries", type=int, default=1000, help="cloze queries, train + held-out")
    p.add_argument("--heldout", type=float, default=0.2, help="held-out fraction of the queries")
    p.add_argument("--steps", type=int, default=150, help="run 1 training steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--train-queries-per-passage",
        type=int,
        default=1,
        help="cloze queries per training passage (held-out passages give one)",
    )
    p.add_argument(
        "--outside-passages",
        type=int,
        default=0,
        help="run 1: also train on cloze queries from this many python3-doc passages outside "
        "the index (their answers are looked for in the indexed corpus)",
    )
    p.add_argument("--k", type=int, default=0, help="run 1: passages per query in the LSR loss (0: the whole corpus)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument(
        "--validation",
        type=float,
        default=0.0,
        help="run 1: fraction of the training passages whose queries choose the stopping step "
        "(0: no early stopping, train all --steps)",
    )
    p.add_argument("--validate-every", type=int, default=25)
    p.add_argument(
        "--train-layers",
        type=int,
        default=0,
        help="fine-tune only the last N transformer layers of MiniLM (0: all of it)",
    )
    p.add_argument("--tau-retriever", type=float, default=0.1)
    p.add_argument("--tau-lm", type=float, default=1.0)
    p.add_argument(
        "--copy-length",
        type=int,
        default=30,
        help="CopyLM's context_length: its copy rate is count(answer, passage) / this "
        "(0: / the passage's own length, which favours short passages)",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="MiniLM max_seq_length (passages are truncated)")
    p.add_argument("--passage-steps", type=int, default=50, help="run 2 training steps")
    p.add_argument("--passage-batch", type=int, default=4)
    p.add_argument("--passage-k", type=int, default=8)
    p.add_argument("--schedule", default="0-:20", help="run 2 re-index schedule")
    p.add_argument(
        "--timing-steps",
        type=int,
        default=12,
        help="run 2: steps timed with and without a refresh running (each, A-B-A)",
    )
    p.add_argument("--dual-steps", type=int, default=100, help="run 3 training steps")
    p.add_argument("--dual-freeze", type=int, default=50, help="run 3: retriever frozen before this step")
    p.add_argument("--skip", default="", help="comma-separated runs to skip: passage,dual")
    p.add_argument("--threads", type=int, default=1, help="trainer torch threads (the re-index worker always uses 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--index-dtype",
        default="float32",
        choices=("float32", "bfloat16", "int8"),
        help="storage dtype of the index every run searches (refreshes keep it)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def trainable(encoder, last_layers: int):
    """Freezes all of MiniLM but its last `last_layers` transformer layers (0: none):
    with a few hundred queries, fewer free weights memorise less."""
    if last_layers:
        encoder.requires_grad_(False)
        layers = [
            m
            for name, m in encoder.named_modules()
            if name.endswith(tuple(f"encoder.layer.{i}" for i in range(6 - last_layers, 6)))
        ]
        for layer in layers:
            layer.requires_grad_(True)
        if len(layers) != last_layers:
            raise ValueError(f"found {len(layers)} of the last {last_layers} MiniLM layers")
    return encoder


def say(*parts):
    print(*parts, flush=True)


def split_validation(train, fraction: float, seed: int):
    """(training queries, validation queries): the queries of a seeded `fraction` of the
    training passages are set aside to choose when to stop. Held-out queries never are."""
    pids = sorted({e.positive for e in train})
    random.Random(seed).shuffle(pids)
    chosen = set(pids[: round(len(pids) * fraction)])
    return [e for e in train if e.positive not in chosen], [e for e in train if e.positive in chosen]


def train_with_early_stopping(trainer, validation, every: int):
    """Trains to trainer.config.steps, measuring recall@10 by answer on `validation` every
    `every` steps, and restores the query encoder's weights at the best measurement
    (step 0 included). Returns (best step, its validation recall)."""
    encoder = trainer.retriever.query_encoder

    def measure():
        encoder.eval()  # no dropout
        return recall_at_k(trainer.retriever, validation, match="answer")

    best = (0, measure(), copy.deepcopy(encoder.state_dict()))
    say(f"  step 0: validation recall@10 {best[1]:.3f}")
    while trainer.state.step < trainer.config.steps:
        trainer.train(min(trainer.state.step + every, trainer.config.steps))
        recall = measure()
        say(f"  step {trainer.state.step}: validation recall@10 {recall:.3f}")
        if recall > best[1]:
            best = (trainer.state.step, recall, copy.deepcopy(encoder.state_dict()))
    encoder.load_state_dict(best[2])
    return best[0], best[1]


def paired_step_times(trainer, reindexer, steps: int):
    """Times the same `steps` training steps three times, from the same weights and
    optimiser state and on the same batches: with no refresh running, while a refresh
    runs, and with none again (A-B-A, so that a drift in the machine's other load shows
    up as a difference between the two A's). The refresh snapshots the weights the
    steps start from, so when it completes, the index matches the restored models.

    Returns (step records without a refresh, step records with one running).
    """
    retriever = trainer.retriever
    modules = (retriever.query_encoder, retriever.passage_encoder)
    saved = (
        [copy.deepcopy(m.state_dict()) for m in modules],
        copy.deepcopy(trainer.optimizer.state_dict()),
        trainer.state.step,
    )

    def restore():
        for m, state in zip(modules, saved[0]):
            m.load_state_dict(state)
        trainer.optimizer.load_state_dict(copy.deepcopy(saved[1]))
        trainer.state.step = saved[2]

    reindexer.wait()
    reindexer.schedule = Schedule("none")  # only the refresh started below runs
    without, during = [], []
    for phase in ("without", "with", "without"):
        restore()
        if phase == "with":
            reindexer.refresh(trainer.state.step)
        records = [trainer.train_step() for _ in range(steps)]
        (during if phase == "with" else without).extend(records)
    restore()
    # Only steps that a refresh spanned from start to end count as "with"; without
    # counts steps that saw none.
    return ([r for r in without if r.refreshing is False], [r for r in during if r.refreshing is True])


def main(argv=None):
    args = parse_args(argv)
    if args.outside_passages < 0:
        raise SystemExit(f"--outside-passages must be >= 0, got {args.outside_passages}")
    skip = set(filter(None, args.skip.split(",")))
    progress = not args.no_progress
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    passages = python_doc_passages()
    random.Random(args.seed).shuffle(passages)
    task = make_cloze_task(
        passages[: args.passages],
        heldout_fraction=args.heldout,
        max_queries=args.queries,
        seed=args.seed,
        train_queries_per_passage=args.train_queries_per_passage,
    )
    say(
        f"corpus: {len(task.passages)} python3-doc passages; {len(task.train)} training and "
        f"{len(task.heldout)} held-out cloze queries; torch threads {torch.get_num_threads()}"
    )
    say(f"  e.g. query {task.heldout[0].query!r} -> answer {task.heldout[0].answer!r}")
    outside = []  # training queries whose own passage is not indexed (positive unknown)
    if args.outside_passages:
        more = passages[args.passages : args.passages + args.outside_passages]
        extra = make_cloze_task(more, heldout_fraction=0.01, max_queries=len(more), seed=args.seed)
        outside = [Example(e.query, e.answer) for e in extra.train + extra.heldout]
        say(f"  run 1 also trains on {len(outside)} queries from {len(more)} passages outside the index")

    minilm = load_minilm()
    # Batches pad to their longest member, so the cap sets the cost of every step that
    # re-embeds passages; 64 word pieces keep all of most passages (median 24 words).
    minilm.max_seq_length = args.max_tokens
    t0 = time.perf_counter()
    vectors = encode(minilm, task.passages, batch_size=64, progress=progress)
    say(f"index v0: {len(task.passages)} passages encoded in {time.perf_counter() - t0:.0f}s")
    lm = CopyLM(task.passages, context_length=args.copy_length or None)

    def fresh_index():
        index = pyrag.DenseIndex(vectors.shape[1], args.index_dtype)
        index.add(vectors)
        return index

    # ------------------------------------------------------------------ run 1
    say("\n[1] REPLUG-LSR, query encoder only, black-box CopyLM")
    query_encoder = trainable(SentenceTransformerEncoder(copy.deepcopy(minilm)), args.train_layers)
    retriever = pyrag.Retriever(query_encoder, fresh_index(), passages=task.passages, tau=args.tau_retriever)
    # Only the query encoder trains, so every candidate's score is a dot product with a
    # stored vector: scoring the whole corpus costs little more than its top 20, and
    # gives every query passages that hold its answer (a top 20 without one gives a flat
    # LSR target, which only teaches the retriever to flatten its scores).
    k = args.k or len(task.passages)
    cfg = TrainConfig(
        mode="replug_lsr",
        steps=args.steps,
        batch_size=args.batch,
        k=k,
        tau_retriever=args.tau_retriever,
        tau_lm=args.tau_lm,
        lr_query=args.lr,
        log_every=25,
        seed=args.seed,
    )
    train, validation = task.train, []
    if args.validation:
        train, validation = split_validation(task.train, args.validation, args.seed)
    train_slice = train[: len(task.heldout)]  # indexed passages: recall by own passage is defined
    train = train + outside
    trainer = Trainer(retriever, cfg, train, lm=lm, eval_data=task.heldout, progress=progress)
    before, before_gold = trainer.evaluate("answer"), trainer.evaluate("positive")
    say(
        f"held-out recall@10 before: {before:.3f} (answer in a top-10 passage), "
        f"{before_gold:.3f} (the query's own passage in the top 10)"
    )
    t0 = time.perf_counter()
    if validation:
        best_step, best_val = train_with_early_stopping(trainer, validation, args.validate_every)
        say(
            f"early stopping: validation recall@10 by answer ({len(validation)} queries of training "
            f"passages, not trained on) was best at step {best_step}: {best_val:.3f}; keeping those weights"
        )
    else:
        trainer.train()
        best_step = args.steps
    after, after_gold = trainer.evaluate("answer"), trainer.evaluate("positive")
    say(
        f"held-out recall@10 after step {best_step} of {args.steps}: {after:.3f} ({after - before:+.3f}) by answer, "
        f"{after_gold:.3f} ({after_gold - before_gold:+.3f}) by own passage; train-split "
        f"{recall_at_k(retriever, train_slice, match='answer'):.3f} / {recall_at_k(retriever, train_slice):.3f}; "
        f"{time.perf_counter() - t0:.0f}s, median step "
        f"{statistics.median(r.seconds for r in trainer.state.history):.2f}s"
    )
    del trainer, retriever, query_encoder

    # ------------------------------------------------------------------ run 2
    if "passage" not in skip:
        say("\n[2] REPLUG-LSR, query and passage encoders, asynchronous re-indexing")
        query_encoder = trainable(SentenceTransformerEncoder(copy.deepcopy(minilm)), args.train_layers)
        passage_encoder = trainable(SentenceTransformerEncoder(copy.deepcopy(minilm)), args.train_layers)
        reindexer = AsyncReindexer(
            passage_encoder,
            task.passages,
            index=fresh_index(),
            schedule=args.schedule,
            policy="skip",
            chunk_size=64,
            num_threads=1,
            nice=5,
            progress=False,
        )
        with reindexer:
            retriever = pyrag.Retriever(
                query_encoder,
                reindexer.index,
                passages=task.passages,
                passage_encoder=passage_encoder,
                tau=args.tau_retriever,
            )
            cfg = TrainConfig(
                mode="replug_lsr",
                steps=args.passage_steps,
                batch_size=args.passage_batch,
                k=args.passage_k,
                tau_retriever=args.tau_retriever,
                tau_lm=args.tau_lm,
                lr_query=args.lr,
                lr_passage=args.lr,
                train_passage_encoder=True,
                log_every=10,
                seed=args.seed,
            )
            trainer = Trainer(
                retriever, cfg, task.train, lm=lm, eval_data=task.heldout, reindexer=reindexer, progress=progress
            )
            t0 = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - t0
            stale = [r.staleness for r in trainer.state.history]
            # The index in service lags the passage encoder (staleness above): evaluate
            # with it, then with a final refresh from the last step's weights.
            reindexer.wait()
            stale_version, stale_step = reindexer.version, reindexer.index.step
            stale_recall = trainer.evaluate("answer"), trainer.evaluate("positive")
            s = reindexer.stats
            say(
                f"{args.passage_steps} steps in {train_s:.0f}s; refreshes completed {s.completed}, "
                f"skipped {s.skipped}, failed {s.failed}; mean refresh {s.total_duration_s / max(s.started, 1):.0f}s"
            )
            say(f"staleness (steps behind the encoder): median {statistics.median(stale):.0f}, max {max(stale)}")
            # Step time with and without a refresh running, on the same steps; the refresh
            # it starts is the final one, from the last training step's weights.
            without, during = paired_step_times(trainer, reindexer, args.timing_steps)
            reindexer.wait()
            if without and during:
                idle = statistics.median(r.seconds for r in without)
                busy = statistics.median(r.seconds for r in during)
                first, second = without[: len(without) // 2], without[len(without) // 2 :]
                say(
                    f"step time median over the same {args.timing_steps} steps (A-B-A): {busy:.3f}s with a "
                    f"refresh running ({len(during)} steps), {idle:.3f}s without ({len(without)} steps, "
                    f"{statistics.median(r.seconds for r in first):.3f}s before and "
                    f"{statistics.median(r.seconds for r in second):.3f}s after): ratio {busy / idle:.2f}x"
                )
            else:
                say(f"step time: not enough steps of each kind ({len(during)} with a refresh, {len(without)} without)")
            recall2, recall2_gold = trainer.evaluate("answer"), trainer.evaluate("positive")
            say(
                f"held-out recall@10 with the index in service at the end (v{stale_version}, from step "
                f"{stale_step}): {stale_recall[0]:.3f} by answer, {stale_recall[1]:.3f} by own passage"
            )
            say(
                f"held-out recall@10 after a final refresh (v{reindexer.version}): "
                f"{recall2:.3f} ({recall2 - before:+.3f}) by answer, {recall2_gold:.3f} "
                f"({recall2_gold - before_gold:+.3f}) by own passage"
            )
        del trainer, retriever, query_encoder, passage_encoder, reindexer

    # ------------------------------------------------------------------ run 3
    if "dual" not in skip:
        say("\n[3] RA-DIT dual: TinyClozeLM trained from scratch, retriever (query encoder) by LSR")
        query_encoder = trainable(SentenceTransformerEncoder(copy.deepcopy(minilm)), args.train_layers)
        retriever = pyrag.Retriever(query_encoder, fresh_index(), passages=task.passages, tau=args.tau_retriever)
        tiny = TinyClozeLM(seed=args.seed)
        cfg = TrainConfig(
            mode="ra_dit",
            steps=args.dual_steps,
            batch_size=args.batch,
            k=10,
            tau_retriever=args.tau_retriever,
            tau_lm=args.tau_lm,
            lr_query=args.lr,
            lr_lm=3e-3,
            freeze_retriever_steps=args.dual_freeze,
            log_every=25,
            seed=args.seed,
        )
        trainer = Trainer(retriever, cfg, task.train, lm=tiny, eval_data=task.heldout, progress=progress)
        heldout = task.heldout
        queries, answers = [e.query for e in heldout], [e.answer for e in heldout]
        with torch.no_grad():
            contexts = retriever(queries, k=10).passages  # fixed: the initial retriever's top 10

        def lm_logp():
            with torch.no_grad():
                return tiny(queries, contexts, answers).mean().item()

        lm_before = lm_logp()
        t0 = time.perf_counter()
        trainer.train()
        say(f"TinyClozeLM held-out mean log p(answer | one of the top-10 passages): {lm_before:.2f} -> {lm_logp():.2f}")
        recall3, recall3_gold = trainer.evaluate("answer"), trainer.evaluate("positive")
        say(
            f"held-out recall@10 after {args.dual_steps} dual steps: {recall3:.3f} ({recall3 - before:+.3f}) "
            f"by answer, {recall3_gold:.3f} ({recall3_gold - before_gold:+.3f}) by own passage; "
            f"{time.perf_counter() - t0:.0f}s"
        )

    say(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    say(f"recall@10 before {before:.3f} after {after:.3f}")


if __name__ == "__main__":
    sys.exit(main())
