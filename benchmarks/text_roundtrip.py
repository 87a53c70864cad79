"""Search latency and size on disk of text indexes built by `pyrag build`.

    python benchmarks/text_roundtrip.py STORE [STORE ...] [--queries 64] [--repeats 5]

For each store (a directory written by `pyrag build`, any dtype) it reports the passages,
the bytes on disk (vector file, SQLite), the load time (mmap), and the latency of
TextIndex.search for one question at a time: the query encoding (the store's encoder,
MiniLM for `pyrag build`'s default) and the search itself (the fused top-k over the
vectors plus the SQLite lookup of the k hits) measured apart, median over the questions;
and the time per question in a batch of all of them. The questions are the first
--queries passages' first sentences, so that each has a known source passage: the
report also gives how often that passage is the top hit. Names the CPU, pyrag's ISA
path and the threads, and prints the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pyrag
from pyrag.bench import machine
from pyrag.text.encoders import encode


def _bytes(store: Path) -> dict:
    vec = sum(p.stat().st_size for p in (store / "vectors").iterdir())
    db = sum(p.stat().st_size for p in store.iterdir() if p.is_file())
    return {"vectors": vec, "sqlite": db, "total": vec + db}


def measure(store: Path, n_queries: int, repeats: int, k: int) -> dict:
    t0 = time.perf_counter()
    index = pyrag.TextIndex.load(store, mmap=True)
    t_load = time.perf_counter() - t0
    encoder = index.encoder
    ids = index.ids
    step = max(1, len(ids) // n_queries)
    sample = index.get(ids[::step][:n_queries])
    questions = [p.text.split(". ")[0][:200] for p in sample]
    encode(encoder, questions[:4], queries=True)  # warm-up: the model's first calls
    index.search(questions[:4], k)
    t_enc, t_search, top1 = [], [], 0
    for p, q in zip(sample, questions):
        for _ in range(repeats):
            t0 = time.perf_counter()
            v = encode(encoder, [q], queries=True)
            t1 = time.perf_counter()
            hits = index.search(v[0], k)
            t2 = time.perf_counter()
            t_enc.append(t1 - t0)
            t_search.append(t2 - t1)
        top1 += hits[0].id == p.id
    qv = encode(encoder, questions, queries=True)
    batch = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index.search(qv, k)
        batch.append(time.perf_counter() - t0)
    out = {
        "store": str(store),
        "dtype": index.dtype,
        "passages": len(index),
        "dim": index.dim,
        "bytes": _bytes(store),
        "load_mmap_s": round(t_load, 3),
        "k": k,
        "queries": len(questions),
        "encode_query_ms_median": round(statistics.median(t_enc) * 1e3, 2),
        "search_ms_median": round(statistics.median(t_search) * 1e3, 3),
        "search_ms_p90": round(sorted(t_search)[int(0.9 * len(t_search))] * 1e3, 3),
        "batch_search_ms_per_query": round(statistics.median(batch) / len(questions) * 1e3, 3),
        "source_passage_first": f"{top1}/{len(questions)}",
    }
    index.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    m = machine()
    print(
        f"{m['cpu']}; pyrag ISA {m['pyrag_isa']}; {m['threads']} threads; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    rows = []
    for store in args.stores:
        r = measure(store, args.queries, args.repeats, args.k)
        rows.append(r)
        b = r["bytes"]
        print(
            f"{r['dtype']:>8}: {r['passages']:,} passages; vectors {b['vectors'] / 2**20:.1f} MiB, "
            f"SQLite {b['sqlite'] / 2**20:.1f} MiB; load (mmap) {r['load_mmap_s']:.2f} s; per question: "
            f"encode {r['encode_query_ms_median']:.1f} ms + search {r['search_ms_median']:.2f} ms "
            f"(p90 {r['search_ms_p90']:.2f}); batched {r['batch_search_ms_per_query']:.3f} ms/question; "
            f"source passage first {r['source_passage_first']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
