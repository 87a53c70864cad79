"""Where a training step's encoder time goes: MiniLM's forward, backward and AdamW on a
batch of real cloze queries, one thread (issue 19's step-time work).

    python benchmarks/dev_encoder_step.py [--rounds 8] [--batch 16]

Uses domain_adaptation.py's 20,000-passage corpus and its training queries (the passage
vectors come from the embedding cache). Prints how much of a padded batch is real tokens,
then the median forward / backward / clip+AdamW time of: AdamW per tensor, foreach and
fused; one forward against length-sorted sub-batches; and the last n blocks trained.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain_adaptation as da
from topk_cases import cpu_model

from pyrag.train import SentenceTransformerEncoder
from pyrag.train.encoders import train_last_blocks


def padding_share(tokenizer, queries, batch, max_tokens, draws=200) -> float:
    """Mean share of real tokens in a batch padded to its longest member."""
    lens = [len(tokenizer(q, truncation=True, max_length=max_tokens)["input_ids"]) for q in queries]
    gen = torch.Generator().manual_seed(0)
    shares = []
    for _ in range(draws):
        pick = [lens[i] for i in torch.randperm(len(lens), generator=gen)[:batch].tolist()]
        shares.append(sum(pick) / (len(pick) * max(pick)))
    return statistics.mean(shares)


def time_steps(minilm, queries, batch, rounds, optimizer, sub_batches, layers):
    encoder = SentenceTransformerEncoder(copy.deepcopy(minilm), sub_batches=sub_batches).train()
    if layers:
        train_last_blocks(encoder, layers)
    params = [p for p in encoder.parameters() if p.requires_grad]
    kinds = {"per tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opt = torch.optim.AdamW(params, lr=5e-5, **kinds[optimizer])
    fwd, bwd, upd = [], [], []
    for r in range(rounds + 1):  # round 0 warms up
        texts = [queries[(r * batch + i) % len(queries)] for i in range(batch)]
        t0 = time.perf_counter()
        emb = encoder(texts)
        loss = (emb @ emb.T).logsumexp(1).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if r:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            upd.append(t3 - t2)
    f, b, u = (statistics.median(x) * 1e3 for x in (fwd, bwd, upd))
    print(
        f"  AdamW {optimizer:10s} sub-batches {sub_batches}  blocks {layers or 'all'}: forward {f:4.0f} ms, "
        f"backward {b:4.0f} ms, clip+AdamW {u:4.0f} ms, total {f + b + u:5.0f} ms",
        flush=True,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--passages", type=int, default=20_000, help="corpus size (domain_adaptation.py's --passages)")
    p.add_argument("--pool", type=int, default=100_000, help="domain_adaptation.py's --pool")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    minilm = da.load_minilm()
    minilm.max_seq_length = args.max_tokens
    corpus_args = ["--no-progress", "--pool", str(args.pool), "--query-passages", str(args.passages)]
    data = da.Data(da.parse_args(corpus_args), args.passages, minilm)
    queries = [e.query for e in data.task.train]
    share = padding_share(minilm.tokenizer, queries[:2000], args.batch, args.max_tokens)
    print(f"{cpu_model()}, 1 thread; batch {args.batch}: real tokens {share:.0%} of one padded forward")
    for optimizer in ("per tensor", "foreach", "fused"):
        time_steps(minilm, queries, args.batch, args.rounds, optimizer, 1, None)
    for sub_batches in (2, 4):
        time_steps(minilm, queries, args.batch, args.rounds, "fused", sub_batches, None)
    for layers in (4, 2):
        time_steps(minilm, queries, args.batch, args.rounds, "fused", 4, layers)


if __name__ == "__main__":
    sys.exit(main())
