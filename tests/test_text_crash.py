"""Crash consistency of a TextIndex directory: a child process runs add_texts,
upsert_texts and delete in a loop and is SIGKILLed at a random moment; the store must
then load, and hold exactly the state after the last operation the child reported done,
or after the one it was in (if that one reached its commit point), with every passage's
text, metadata and vector agreeing.

PYRAG_KILL_TRIALS sets the number of trials (default 6, two per dtype); the summary
line (printed with -s) counts the trials, the operations completed, and how many kills
landed inside a commit (the store's folder held an uncommitted or superseded vector file,
or the child had committed an operation it had not reported).
"""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from pyrag.text import TextIndex

# Shared by the parent (to replay) and the child (to run): the operations of a trial.
OPS = r'''
import hashlib, random, torch
DIM = 16

def vec(text):
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    return torch.nn.functional.normalize(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)), dim=0)

def encoder(texts):
    return torch.stack([vec(t) for t in texts]) if texts else torch.empty(0, DIM)

def initial():
    return {f"init-{i}": f"initial passage {i}" for i in range(20)}

def operations(seed, n):
    """Yields (kind, ids, texts) and keeps the state each leaves: state[id] = text."""
    rng = random.Random(seed)
    state = initial()
    for i in range(n):
        r = rng.random()
        if r < 0.5 or len(state) < 5:
            ids = [f"op{i}-{j}" for j in range(rng.randint(1, 8))]
            op = ("add", ids, [f"text {x}" for x in ids])
        elif r < 0.75:
            ids = rng.sample(sorted(state), rng.randint(1, 3)) + [f"op{i}-new"]
            op = ("upsert", ids, [f"text {x} v{i}" for x in ids])
        else:
            op = ("delete", rng.sample(sorted(state), rng.randint(1, 4)), None)
        kind, ids, texts = op
        if kind == "delete":
            for x in ids:
                del state[x]
        else:
            state.update(zip(ids, texts))
        yield op, dict(state)
'''

CHILD = (
    OPS
    + r"""
import sys
from pyrag.text import TextIndex
path, seed = sys.argv[1], int(sys.argv[2])
index = TextIndex.load(path, encoder=encoder)
print("ready", flush=True)
for i, ((kind, ids, texts), _) in enumerate(operations(seed, 100000)):
    if kind == "add":
        index.add_texts(texts, [{"id": x} for x in ids], ids)
    elif kind == "upsert":
        index.upsert_texts(texts, [{"id": x} for x in ids], ids)
    else:
        index.delete(ids)
    print(f"done {i}", flush=True)
"""
)

ns: dict = {}
exec(OPS, ns)
TRIALS = int(os.environ.get("PYRAG_KILL_TRIALS", "6"))
DTYPES = ["float32", "bfloat16", "int8"]


def _run_trial(tmp_path, trial: int, dtype: str) -> dict:
    path = tmp_path / f"store{trial}"
    init = ns["initial"]()
    TextIndex.from_texts(
        list(init.values()), ns["encoder"], [{"id": x} for x in init], list(init), dtype=dtype, path=path
    ).close()
    seed = 1000 + trial
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    time.sleep(random.Random(seed).uniform(0.05, 1.5))
    os.kill(child.pid, signal.SIGKILL)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err
    done = sum(1 for line in out.splitlines() if line.startswith("done"))
    leftovers = sorted(os.listdir(path / "vectors"))

    index = TextIndex.load(path, encoder=ns["encoder"])  # must load: recovery included
    states = [init] + [s for _, s in ns["operations"](seed, done + 1)]
    actual = {p.id: p.text for p in index.get(index.ids)}
    # The state after the last reported op, or after the op the kill interrupted if it
    # had passed its commit point (COMMIT returned, "done" not yet printed).
    assert actual in (states[done], states[done + 1]), f"trial {trial}: {done} ops reported"
    committed_unreported = actual == states[done + 1] and states[done] != states[done + 1]
    ids = list(actual)
    assert [p.metadata for p in index.get(ids)] == [{"id": x} for x in ids]
    got, want = index.get_vectors(ids), ns["encoder"]([actual[x] for x in ids])
    tol = {"float32": 0.0, "bfloat16": 4e-3, "int8": 1e-2}[dtype]
    assert torch.allclose(got, want, atol=tol, rtol=0), f"trial {trial}: vectors disagree with texts"
    hits = index.search([actual[x] for x in ids], 1)
    assert [h[0].id for h in hits] == ids
    index.add_texts(["after recovery"], ids=["after"])  # and it is writable again
    index.close()
    return {
        "done": done,
        "mid_commit": len(leftovers) > 1 or committed_unreported,
        "committed_unreported": committed_unreported,
    }


def test_sigkill_during_writes_leaves_a_consistent_store(tmp_path):
    results = [_run_trial(tmp_path, t, DTYPES[t % 3]) for t in range(TRIALS)]
    mid = sum(r["mid_commit"] for r in results)
    unreported = sum(r["committed_unreported"] for r in results)
    ops = sum(r["done"] for r in results)
    print(
        f"\nkill test: {TRIALS} trials, {TRIALS} consistent after recovery; {ops} operations completed "
        f"before the kills; {mid} kills inside a commit ({unreported} after its commit point)"
    )
    assert len(results) == TRIALS
