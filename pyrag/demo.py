"""End-to-end demo: build an index over a corpus and answer queries.

    python -m pyrag.demo [--n 200000] [--dim 384] [--queries 8] [--k 5]

The corpus is synthetic for now: passages are noisy copies of topic centroids, and each
query is a fresh noisy copy of one passage, so the right answer is known. It prints the
top hits with scores, the search time, and checks the hits against torch matmul + topk.
"""

from __future__ import annotations

import argparse
import time

import torch

import pyrag


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="passages in the corpus")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension")
    p.add_argument("--queries", type=int, default=8, help="queries in the batch")
    p.add_argument("--k", type=int, default=5, help="hits per query")
    args = p.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    topics = torch.nn.functional.normalize(torch.randn(1000, args.dim, generator=g), dim=1)
    topic_of = torch.randint(0, 1000, (args.n,), generator=g)
    corpus = torch.nn.functional.normalize(
        topics[topic_of] + 0.5 * torch.randn(args.n, args.dim, generator=g) / args.dim**0.5, dim=1
    )

    t0 = time.perf_counter()
    index = pyrag.DenseIndex(args.dim)
    index.add(corpus)
    t_build = time.perf_counter() - t0

    targets = torch.randint(0, args.n, (args.queries,), generator=g)
    queries = torch.nn.functional.normalize(
        corpus[targets] + 0.2 * torch.randn(args.queries, args.dim, generator=g) / args.dim**0.5, dim=1
    )

    index.search(queries, args.k)  # warm-up
    t0 = time.perf_counter()
    scores, ids = index.search(queries, args.k)
    t_search = time.perf_counter() - t0

    print(
        f"pyrag {pyrag.__version__}: {len(index):,} passages x {args.dim} dims (float32), "
        f"CPU path {pyrag.cpu_isa()}, {pyrag.get_num_threads()} threads"
    )
    print(f"index built in {t_build * 1e3:.1f} ms")
    for b in range(args.queries):
        hits = ", ".join(f"#{int(i)} ({float(s):.3f})" for s, i in zip(scores[b], ids[b]))
        mark = "ok" if int(ids[b, 0]) == int(targets[b]) else "MISS"
        print(f"query {b} (copy of passage #{int(targets[b])}): {hits}  [{mark}]")

    t0 = time.perf_counter()
    ref_scores, ref_ids = torch.topk(queries @ corpus.T, args.k, dim=1)
    t_torch = time.perf_counter() - t0
    agree = bool(torch.equal(ids, ref_ids)) or bool(torch.allclose(scores, ref_scores, rtol=1e-5, atol=1e-6))
    found = int((ids[:, 0] == targets).sum())
    print(
        f"search: {args.queries} queries x k={args.k} in {t_search * 1e3:.2f} ms "
        f"({t_search / args.queries * 1e3:.3f} ms/query); torch matmul+topk {t_torch * 1e3:.2f} ms"
    )
    print(f"source passage ranked first for {found}/{args.queries} queries; matches torch: {'yes' if agree else 'NO'}")


if __name__ == "__main__":
    main()
