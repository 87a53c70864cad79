"""Domain adaptation, measured: fine-tune all-MiniLM-L6-v2 on a real corpus with pyrag, and
report held-out gains with 95% confidence intervals and step times.

    python benchmarks/domain_adaptation.py                       # run 1, the default recipe, 20,000 passages
    python benchmarks/domain_adaptation.py --recipe default --recipe corpus --time-recipes
    python benchmarks/domain_adaptation.py --passages 100000 --time-against 20000
    python benchmarks/domain_adaptation.py --runs passage         # run 2 only

Data (benchmarks/corpora.py, `pip install pyrag[real]`; `apt-get install -y python3-doc
manpages manpages-dev linux-doc`): the first --pool passages of the Python documentation,
the Linux man pages and the Linux kernel documentation, shuffled with --seed; the corpus is
the first --passages of them, so a 20,000-passage corpus is the start of the 100,000 one.
Queries are cloze sentences (benchmarks/cloze.py) from the first --query-passages passages:
a sentence with its most telling word blanked, the answer being that word, the sentence
removed from the indexed passage. Held-out queries come from passages that no training
query uses. With the same --query-passages, a larger corpus keeps the same queries and adds
distractors. Passage embeddings are cached under $PYRAG_CACHE_DIR (corpora.encode_cached).

Measures (pyrag.eval, eval mode, no gradient): recall@10 by answer (some top-10 passage
holds the answer word: DPR's top-k accuracy, success@10 with every answer-holding passage
relevant; the headline), MRR@10 and nDCG@10 by answer, and recall@10 by own passage. Every
gain is a paired bootstrap 95% CI over the held-out queries, with the queries gained and lost.

Runs (--runs, comma-separated; default "query"):
  query    REPLUG-LSR of the query encoder with a black-box LM (CopyLM), once per --recipe.
           A recipe is NAME[:field=value,...] over TrainConfig()'s defaults (k=all: the whole
           corpus; copy_length=N|none: CopyLM's context_length); "default" is TrainConfig()
           as it is, "corpus" the whole corpus as candidates (k=all, in_batch=0).
  passage  query and passage encoders, AsyncReindexer refreshing the index in the
           background, the passage encoder trained from --passage-start on (Atlas's
           query-side first); held-out figures with the index in service and after a final
           refresh, against run 1 of the default recipe on the same queries.
  dual     RA-DIT dual: TinyClozeLM trained from scratch, the retriever unfrozen late.
Step time (--time-against N, --time-recipes): the same steps run side by side, one step of
each in turn, at this corpus size and at its first N passages, or for each recipe.

Threads: the trainer runs with --threads torch threads (default 1) and the re-index worker
with 1 more at niceness +5, one core each on a 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import random
import statistics
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the trainer owns the cores

import torch
from cloze import make_cloze_task
from corpora import encode_cached, load_minilm, real_corpus_cached
from toy_lms import CopyLM, TinyClozeLM

import pyrag
from pyrag.eval import eval_mode, evaluate, paired_bootstrap, relevant_passages
from pyrag.reindex import AsyncReindexer
from pyrag.train import SentenceTransformerEncoder, TrainConfig, Trainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=20_000, help="corpus size")
    p.add_argument("--pool", type=int, default=100_000, help="passages shuffled; the corpus is their start")
    p.add_argument("--query-passages", type=int, default=20_000, help="queries come from the first N passages")
    p.add_argument("--heldout", type=float, default=0.2, help="held-out fraction of the query passages")
    p.add_argument("--max-heldout", type=int, default=0, help="evaluate on at most N held-out queries (0: all)")
    p.add_argument("--train-split", action="store_true", help="also measure as many training queries")
    p.add_argument("--runs", default="query", help="comma-separated: query,passage,dual (none: only the timings)")
    p.add_argument(
        "--recipe",
        action="append",
        default=None,
        help="run 1 recipe NAME[:field=value,...] over TrainConfig() (repeatable; default: default)",
    )
    p.add_argument("--time-against", type=int, default=0, help="time the default recipe here and at N passages")
    p.add_argument("--time-recipes", action="store_true", help="time the recipes side by side")
    p.add_argument("--time-steps", type=int, default=20, help="timed steps per side")
    p.add_argument("--max-tokens", type=int, default=64, help="MiniLM max_seq_length (passages are truncated)")
    p.add_argument("--passage-recipe", default="", help="run 2: field=value,... over the default recipe")
    p.add_argument("--passage-start", type=int, default=100, help="run 2: the passage encoder trains from this step")
    p.add_argument(
        "--schedule",
        default="",
        help="run 2 re-index schedule (Atlas syntax; default: every 25 steps from --passage-start)",
    )
    p.add_argument("--dual-steps", type=int, default=100, help="run 3 training steps")
    p.add_argument("--dual-freeze", type=int, default=50, help="run 3: retriever frozen before this step")
    p.add_argument("--save", default="", help="write every system's per-query measures here (torch.save)")
    p.add_argument("--threads", type=int, default=1, help="trainer torch threads (the re-index worker uses 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--index-dtype",
        default="float32",
        choices=("float32", "bfloat16", "int8"),
        help="storage dtype of the index every run searches (refreshes keep it)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def say(*parts):
    print(*parts, flush=True)


# ---------------------------------------------------------------------- recipes
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_recipe(spec: str, n_passages: int) -> tuple[str, dict, dict]:
    """NAME[:field=value,...] -> (name, TrainConfig overrides, CopyLM overrides)."""
    name, _, body = spec.partition(":")
    if name == "corpus" and not body:
        body = "k=all,in_batch=0"
    return (name, *parse_overrides(body, n_passages))


def parse_overrides(body: str, n_passages: int) -> tuple[dict, dict]:
    cfg, lm = {}, {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key == "copy_length":
            lm["context_length"] = None if value == "none" else int(value)
        elif key == "encoder_layers" and value in ("all", "none"):
            cfg["encoder_layers"] = None
        elif key == "k" and value == "all":
            cfg["k"] = n_passages
        elif key in FIELDS:
            kind = type(getattr(TrainConfig(), key))
            cfg[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        else:
            raise SystemExit(f"unknown recipe field {key!r} (TrainConfig fields and copy_length)")
    return cfg, lm


def describe(cfg: TrainConfig, lm: CopyLM) -> str:
    cand = "the whole corpus" if cfg.k >= 10**4 and not cfg.in_batch else f"top {cfg.k}"
    if cfg.in_batch:
        cand += f" + the batch's top {cfg.in_batch}"
    if cfg.hard_negatives:
        cand += f" + {cfg.hard_negatives} drawn from ranks {cfg.k + 1}-{cfg.k + cfg.hard_negative_depth}"
    return (
        f"candidates {cand}; {cfg.steps} steps of {cfg.batch_size}, lr {cfg.lr_query:g}, tau_R {cfg.tau_retriever}, "
        f"tau_LM {cfg.tau_lm}, warmup {cfg.warmup_steps}, decay {cfg.lr_decay}; "
        f"CopyLM(context_length={lm.context_length}); encoder layers trained {cfg.encoder_layers or 'all'}"
    )


# ---------------------------------------------------------------------- data
class Data:
    """The corpus, its cloze task, the passage vectors and the held-out judgements."""

    def __init__(self, args, n_passages: int, model):
        t0 = time.perf_counter()
        self.index_dtype = args.index_dtype
        pool = real_corpus_cached(args.pool)
        random.Random(args.seed).shuffle(pool)
        if n_passages > len(pool):
            raise SystemExit(f"--passages {n_passages} is more than --pool {args.pool}")
        self.task = task = make_cloze_task(
            pool[:n_passages],
            heldout_fraction=args.heldout,
            query_passages=min(args.query_passages, n_passages),
            seed=args.seed,
        )
        self.heldout = task.heldout
        if args.max_heldout and len(self.heldout) > args.max_heldout:
            self.heldout = random.Random(args.seed).sample(self.heldout, args.max_heldout)
        # The train split, measured like the held-out one with --train-split (memorising shows there).
        self.train_slice = task.train[: len(self.heldout)] if args.train_split else []
        t1 = time.perf_counter()
        self.vectors = encode_cached(model, task.passages, progress=not args.no_progress)
        self.judgements = {
            "answer": relevant_passages(self.heldout, "answer", task.passages),
            "positive": relevant_passages(self.heldout, "positive"),
            "train": relevant_passages(self.train_slice, "answer", task.passages) if self.train_slice else [],
        }
        say(
            f"corpus: {len(task.passages):,} passages (the first of {len(pool):,} shuffled with seed {args.seed}); "
            f"{len(task.train):,} training and {len(self.heldout):,} held-out cloze queries; "
            f"built in {t1 - t0:.0f}s, vectors in {time.perf_counter() - t1:.0f}s"
        )
        say(f"  e.g. query {self.heldout[0].query!r} -> answer {self.heldout[0].answer!r}")

    def index(self, n: int | None = None):
        index = pyrag.DenseIndex(self.vectors.shape[1], self.index_dtype)
        index.add(self.vectors[:n])
        return index

    def measure(self, retriever) -> dict:
        """Per-query held-out measures by answer and by own passage, and train-split success:
        the queries are encoded once, in eval mode without gradient (pyrag.eval.eval_mode)."""
        texts = [e.query for e in self.heldout + self.train_slice]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar lengths pad little
        queries = torch.empty(len(texts), retriever.index.dim)
        with eval_mode(retriever.query_encoder, retriever.passage_encoder):
            for start in range(0, len(texts), 64):
                rows = order[start : start + 64]
                queries[rows] = retriever.encode_queries([texts[i] for i in rows]).float()
        return self.measure_embeddings(queries, retriever.index)

    def measure_shipped(self, model) -> dict:
        """measure() of MiniLM as shipped, its query embeddings read through the cache."""
        texts = [e.query for e in self.heldout + self.train_slice]
        return self.measure_embeddings(encode_cached(model, texts, progress=False), self.index())

    def measure_embeddings(self, queries, index) -> dict:
        retriever = pyrag.Retriever(None, index)  # takes embeddings
        heldout, train = queries[: len(self.heldout)], queries[len(self.heldout) :]
        return {
            "answer": evaluate(retriever, heldout, self.judgements["answer"], 10),
            "positive": evaluate(retriever, heldout, self.judgements["positive"], 10),
            "train": evaluate(retriever, train, self.judgements["train"], 10) if self.train_slice else None,
        }


def report(label: str, after: dict, before: dict) -> str:
    a, b = after["answer"], before["answer"]
    ci = paired_bootstrap(b.success, a.success)
    mrr = paired_bootstrap(b.mrr, a.mrr)
    own = paired_bootstrap(before["positive"].success, after["positive"].success)
    return (
        f"{label}: held-out recall@10 by answer {b.success.mean():.3f} -> {a.success.mean():.3f}, gain {ci}\n"
        f"    MRR@10 by answer {b.mrr.mean():.3f} -> {a.mrr.mean():.3f} ({mrr.mean:+.3f} [{mrr.low:+.3f}, "
        f"{mrr.high:+.3f}]); nDCG@10 {b.ndcg.mean():.3f} -> {a.ndcg.mean():.3f}; recall@10 by own passage "
        f"{before['positive'].success.mean():.3f} -> {after['positive'].success.mean():.3f} ({own.mean:+.3f} "
        f"[{own.low:+.3f}, {own.high:+.3f}])"
        + (
            f"; train split {before['train'].success.mean():.3f} -> {after['train'].success.mean():.3f}"
            if after["train"] is not None
            else ""
        )
    )


def query_retriever(minilm, index, passages, cfg):
    encoder = SentenceTransformerEncoder(copy.deepcopy(minilm))
    return pyrag.Retriever(encoder, index, passages=passages, tau=cfg.tau_retriever)


def make_config(overrides: dict, seed: int) -> TrainConfig:
    return TrainConfig(**{"log_every": 25, "seed": seed, **overrides})


# ---------------------------------------------------------------------- step time
def side_by_side(trainers: dict, steps: int) -> dict:
    """Runs one step of each trainer in turn, `steps` rounds after one warm-up round: each
    trainer sees the same machine load. Returns each one's step seconds."""
    for t in trainers.values():
        t.train_step()
    times = {name: [] for name in trainers}
    for _ in range(steps):
        for name, t in trainers.items():
            times[name].append(t.train_step().seconds)
    return times


def print_times(times: dict, base: str) -> None:
    ref = statistics.median(times[base])
    for name, ts in times.items():
        half = len(ts) // 2
        halves = (
            f"; first half {statistics.median(ts[:half]):.3f}s, second {statistics.median(ts[half:]):.3f}s"
            if half
            else ""
        )
        say(
            f"  {name}: median {statistics.median(ts):.3f}s/step ({len(ts)} steps{halves}), "
            f"{statistics.median(ts) / ref:.2f}x {base}"
        )
    pairs = {name: [x / y for x, y in zip(ts, times[base])] for name, ts in times.items() if name != base}
    for name, ratios in pairs.items():
        say(f"  per-round ratio {name} / {base}: median {statistics.median(ratios):.2f}")


# ---------------------------------------------------------------------- runs
def build_recipes(args, data) -> dict:
    """{name: (TrainConfig, CopyLM)} of the --recipe arguments."""
    recipes = {}
    for spec in args.recipe or ["default"]:
        name, cfg_over, lm_over = parse_recipe(spec, len(data.task.passages))
        recipes[name] = (make_config(cfg_over, args.seed), CopyLM(data.task.passages, **lm_over))
    return recipes


def run_time_recipes(args, data, minilm) -> None:
    """The recipes' step times side by side, from the same start."""
    recipes = build_recipes(args, data)
    say(f"\nstep time of the recipes side by side ({args.time_steps} rounds, {args.threads} trainer thread(s)):")
    for name, (cfg, lm) in recipes.items():
        say(f"  {name}: {describe(cfg, lm)}")
    trainers = {
        name: Trainer(
            query_retriever(minilm, data.index(), data.task.passages, cfg),
            cfg,
            data.task.train,
            lm=lm,
            progress=False,
            log=lambda line: None,
        )
        for name, (cfg, lm) in recipes.items()
    }
    print_times(side_by_side(trainers, args.time_steps), next(iter(recipes)))


def run_query(args, data, minilm, before):
    recipes = build_recipes(args, data)
    results = {}
    for name, (cfg, lm) in recipes.items():
        say(f"\n[1] REPLUG-LSR, query encoder, recipe {name!r}: {describe(cfg, lm)}")
        retriever = query_retriever(minilm, data.index(), data.task.passages, cfg)
        trainer = Trainer(retriever, cfg, data.task.train, lm=lm, progress=not args.no_progress)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        after = data.measure(retriever)
        steps = [r.seconds for r in trainer.state.history]
        say(report(f"recipe {name!r}", after, before))
        say(f"    {seconds:.0f}s training, median step {statistics.median(steps):.3f}s")
        results[name] = (after, statistics.median(steps), trainer)
        del trainer
    if len(results) > 1:
        say("\nrecipes against each other (paired on the same held-out queries, recall@10 by answer):")
        names = list(results)
        gains = {m: float(results[m][0]["answer"].success.mean() - before["answer"].success.mean()) for m in names}
        best = max(gains, key=gains.get)
        for m in names:
            share = gains[m] / gains[best] if gains[best] > 0 else float("nan")
            say(
                f"  {m}: gain {gains[m]:+.4f}, {share:.0%} of the best ({best}); median step "
                f"{results[m][1]:.3f}s (each measured during its own run; --time-recipes for side by side)"
            )
            if m != best:
                diff = paired_bootstrap(results[best][0]["answer"].success, results[m][0]["answer"].success)
                say(f"    {m} - {best}: {diff}")
    return results


def run_time_against(args, data, small_data, minilm):
    """The default recipe's step time at this size and at small_data's, side by side."""
    cfg, _ = parse_overrides("", len(data.task.passages))
    cfg = make_config(cfg, args.seed)
    trainers = {}
    for label, d in (
        (f"{len(small_data.task.passages):,} passages", small_data),
        (f"{len(data.task.passages):,} passages", data),
    ):
        lm = CopyLM(d.task.passages)
        retriever = query_retriever(minilm, d.index(), d.task.passages, cfg)
        # The same training examples for both: the small corpus is the start of the large one.
        trainers[label] = Trainer(retriever, cfg, data.task.train, lm=lm, progress=False, log=lambda line: None)
    say(
        f"\nstep time of the default recipe ({describe(cfg, CopyLM(['x']))}), the same batches at both sizes, "
        f"one step of each in turn, {args.time_steps} rounds, {args.threads} trainer thread(s):"
    )
    print_times(side_by_side(trainers, args.time_steps), next(iter(trainers)))


def run_passage(args, data, minilm, before, run1):
    """Run 2: query and passage encoders, asynchronous re-indexing."""
    n = len(data.task.passages)
    over, lm_over = parse_overrides(args.passage_recipe, n)
    cfg = make_config(
        {"train_passage_encoder": True, "passage_start": args.passage_start, "log_every": 10, **over}, args.seed
    )
    lm = CopyLM(data.task.passages, **lm_over)
    say(
        f"\n[2] REPLUG-LSR, query and passage encoders, asynchronous re-indexing, "
        f"passage encoder from step {args.passage_start}: {describe(cfg, lm)}"
    )
    query_encoder = SentenceTransformerEncoder(copy.deepcopy(minilm))
    passage_encoder = SentenceTransformerEncoder(copy.deepcopy(minilm))
    schedule = args.schedule or f"{args.passage_start + 25}-:25"
    reindexer = AsyncReindexer(
        passage_encoder,
        data.task.passages,
        index=data.index(),
        schedule=schedule,
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
            passages=data.task.passages,
            passage_encoder=passage_encoder,
            tau=cfg.tau_retriever,
        )
        trainer = Trainer(retriever, cfg, data.task.train, lm=lm, reindexer=reindexer, progress=not args.no_progress)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        history = trainer.state.history
        query_only = [r.seconds for r in history if r.step <= args.passage_start]
        both = [r.seconds for r in history if r.step > args.passage_start]
        stale = [r.staleness for r in history if r.step > args.passage_start]
        reindexer.wait()
        s = reindexer.stats
        say(
            f"{cfg.steps} steps in {train_s:.0f}s: median step {statistics.median(query_only or [0]):.2f}s query "
            f"encoder only, {statistics.median(both or [0]):.2f}s with the passage encoder; refreshes completed "
            f"{s.completed}, skipped {s.skipped}, mean refresh {s.total_duration_s / max(s.started, 1):.0f}s; "
            f"staleness while the passage encoder trained: median {statistics.median(stale or [0]):.0f}, "
            f"max {max(stale or [0])} steps"
        )
        in_service = data.measure(retriever)
        say(
            report(
                f"run 2, index in service (v{reindexer.version}, from step {reindexer.index.step})", in_service, before
            )
        )
        t0 = time.perf_counter()
        reindexer.refresh(trainer.state.step)
        reindexer.wait()
        say(f"final refresh of {n:,} passages: {time.perf_counter() - t0:.0f}s")
        after = data.measure(retriever)
        say(report(f"run 2 after a final refresh (v{reindexer.version})", after, before))
        if run1 is not None:
            diff = paired_bootstrap(run1["answer"].success, after["answer"].success)
            say(f"  run 2 - run 1 (default recipe), recall@10 by answer: {diff}")
    return after


def run_dual(args, data, minilm, before):
    say("\n[3] RA-DIT dual: TinyClozeLM trained from scratch, retriever (query encoder) by LSR")
    cfg = make_config(
        dict(mode="ra_dit", steps=args.dual_steps, lr_lm=3e-3, freeze_retriever_steps=args.dual_freeze), args.seed
    )
    retriever = query_retriever(minilm, data.index(), data.task.passages, cfg)
    tiny = TinyClozeLM(seed=args.seed)
    trainer = Trainer(retriever, cfg, data.task.train, lm=tiny, progress=not args.no_progress)
    trainer.train()
    say(report(f"run 3 after {args.dual_steps} dual steps", data.measure(retriever), before))


def main(argv=None):
    args = parse_args(argv)
    runs = set(filter(None, args.runs.split(","))) - {"none"}
    if runs - {"query", "passage", "dual"}:
        raise SystemExit(f"--runs takes query, passage and dual, got {args.runs!r}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    minilm = load_minilm()
    # Batches pad to their longest member, so the cap sets the cost of every step that
    # embeds passages; 64 word pieces keep all of most passages (median 24 words).
    minilm.max_seq_length = args.max_tokens
    say(f"torch threads {torch.get_num_threads()}, CPU ISA {pyrag.cpu_isa()}, {os.cpu_count()} cores")
    data = Data(args, args.passages, minilm)
    before = data.measure_shipped(minilm)
    saved = {"MiniLM": before}
    b = before["answer"]
    say(
        f"MiniLM as shipped: held-out recall@10 by answer {b.success.mean():.3f}, MRR@10 {b.mrr.mean():.3f}, "
        f"nDCG@10 {b.ndcg.mean():.3f}; by own passage {before['positive'].success.mean():.3f}"
    )
    if args.time_against:
        small = Data(args, args.time_against, minilm)
        run_time_against(args, data, small, minilm)
        del small
    if args.time_recipes:
        run_time_recipes(args, data, minilm)
    run1 = None
    if "query" in runs:
        results = run_query(args, data, minilm, before)
        run1 = results.get("default", next(iter(results.values())))[0]
        saved.update({f"run 1 {name}": r[0] for name, r in results.items()})
    if "passage" in runs:
        saved["run 2"] = run_passage(args, data, minilm, before, run1)
    if "dual" in runs:
        run_dual(args, data, minilm, before)
    if args.save:
        per_query = {
            name: {f"{match} {m}": v[match].measure(m) for match in ("answer", "positive") for m in ("success", "mrr")}
            for name, v in saved.items()
        }
        torch.save({"queries": [e.query for e in data.heldout], "systems": per_query}, args.save)
        say(f"per-query measures of {', '.join(per_query)} saved to {args.save}")
    say(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    if run1 is not None:
        say(f"recall@10 before {b.success.mean():.3f} after {run1['answer'].success.mean():.3f}")


if __name__ == "__main__":
    sys.exit(main())
