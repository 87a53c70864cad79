"""pyrag.GeneratorAdapter on tiny randomly initialised transformers models (a 2-layer
GPT-2 and a T5) with a word-level tokenizer built here: nothing is downloaded. score()
is compared with a direct token-by-token computation with the same model."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

import pyrag

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
WORDS = (
    "the cat sat on a mat dog ran to park paris is capital of france what where who big small red "
    "blue river city lives in context question answer : ? ."
).split()
TEMPLATE = "context : {context} question : {query} answer :"


def make_tokenizer(post: str = ""):
    """Word-level tokenizer; `post` is a template such as "[BOS] $A" for the special
    tokens it adds around a text."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if post:
        tk.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(t, vocab[t]) for t in ("[BOS]", "[EOS]")]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(SPECIALS) + len(WORDS),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval(), make_tokenizer()


@pytest.fixture(scope="module")
def gpt2_bos():
    """The same kind of model with a tokenizer that puts [BOS] before every text."""
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(SPECIALS) + len(WORDS),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval(), make_tokenizer("[BOS] $A")


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(SPECIALS) + len(WORDS),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=3,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval(), make_tokenizer("$A [EOS]")


@pytest.fixture(params=["gpt2", "gpt2_bos", "t5"])
def lm(request):
    return request.getfixturevalue(request.param)


QUERIES = ["what is the capital of france ?", "where does the cat sit ?"]
CONTEXTS = [
    ["paris is the capital of france .", "the dog ran to the park", "blue river city"],
    ["the cat sat on a mat .", None],
]  # ragged, with padding
TARGETS = ["paris", "on a mat"]


def direct_token_logprobs(model, tok, query, context, target, eos=False):
    """log p(y_t | prompt, y_<t) one token at a time, without padding or batching."""
    prompt = tok(TEMPLATE.format(context=context, query=query))["input_ids"]  # with its special tokens
    y = tok(target, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    out = []
    with torch.no_grad():
        for t in range(len(y)):
            if model.config.is_encoder_decoder:
                logits = model(
                    input_ids=torch.tensor([prompt]),
                    decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id] + y[:t]]),
                ).logits
            else:
                prefix = [i for i in prompt if i != tok.eos_token_id]  # a causal prompt drops a trailing EOS
                logits = model(input_ids=torch.tensor([prefix + y[:t]])).logits
            out.append(torch.log_softmax(logits[0, -1].float(), dim=-1)[y[t]].item())
    return out


def test_score_matches_token_by_token_computation(lm):
    model, tok = lm
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE)
    with torch.no_grad():
        summed = adapter.score(QUERIES, CONTEXTS, TARGETS)
        mean = adapter.score(QUERIES, CONTEXTS, TARGETS, reduction="mean")
        per_token = adapter.score(QUERIES, CONTEXTS, TARGETS, reduction="none")
    assert summed.shape == (2, 3) and per_token.shape == (2, 3, 3)
    for i, (query, target) in enumerate(zip(QUERIES, TARGETS, strict=True)):
        for j in range(3):
            context = CONTEXTS[i][j] if j < len(CONTEXTS[i]) else None
            if context is None:  # padding scores 0
                assert summed[i, j].item() == 0 and bool((per_token[i, j] == 0).all())
                continue
            expected = direct_token_logprobs(model, tok, query, context, target)
            n = len(expected)
            torch.testing.assert_close(per_token[i, j, :n], torch.tensor(expected), atol=1e-5, rtol=1e-5)
            assert bool((per_token[i, j, n:] == 0).all())
            assert summed[i, j].item() == pytest.approx(sum(expected), abs=1e-5)
            assert mean[i, j].item() == pytest.approx(sum(expected) / n, abs=1e-5)


def test_batch_size_does_not_change_scores(gpt2):
    model, tok = gpt2
    with torch.no_grad():
        whole = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE).score(QUERIES, CONTEXTS, TARGETS)
        pieces = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE, batch_size=2).score(QUERIES, CONTEXTS, TARGETS)
    torch.testing.assert_close(whole, pieces, atol=1e-5, rtol=1e-5)


def test_score_eos_adds_the_end_of_sequence_token(lm):
    model, tok = lm
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE, score_eos=True)
    with torch.no_grad():
        got = adapter.score(QUERIES[:1], [CONTEXTS[0][:1]], TARGETS[:1])
    expected = direct_token_logprobs(model, tok, QUERIES[0], CONTEXTS[0][0], TARGETS[0], eos=True)
    assert got[0, 0].item() == pytest.approx(sum(expected), abs=1e-5)


@pytest.mark.parametrize("max_length", [17, 20])
def test_truncation_cuts_the_end_of_the_context_only(lm, max_length):
    model, tok = lm
    query, target = "who lives in paris ?", "the big red cat"
    context = "paris is a big city . the cat lives in a small red river city"
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE, max_length=max_length)
    with torch.no_grad():
        got = adapter.score([query], [[context]], [target])
    # Word-level tokens: count what the budget leaves for the context by hand.
    specials = len(tok("a")["input_ids"]) - 1
    fixed = len(TEMPLATE.format(context="", query=query).split()) + specials
    if not model.config.is_encoder_decoder:
        fixed += len(target.split())  # a causal LM's budget also holds the target
    kept = " ".join(context.split()[: max_length - fixed])
    assert 0 < len(kept) < len(context)
    expected = direct_token_logprobs(model, tok, query, kept, target)
    assert got[0, 0].item() == pytest.approx(sum(expected), abs=1e-5)
    untruncated = direct_token_logprobs(model, tok, query, context, target)
    assert got[0, 0].item() != pytest.approx(sum(untruncated), abs=1e-5)


def test_prompt_that_cannot_fit_without_context_is_an_error(gpt2):
    model, tok = gpt2
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE, max_length=8)
    with pytest.raises(ValueError, match="never truncated"):
        adapter.score(["what is the capital of the big red city ?"], [["paris"]], ["paris"])


def test_score_is_differentiable_with_respect_to_the_model(lm):
    model, tok = lm
    model.zero_grad()
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE)
    scores = adapter.score(QUERIES, CONTEXTS, TARGETS)
    assert scores.requires_grad
    (-scores.sum()).backward()  # RA-DIT's LM loss: -sum_i sum_j log p_LM(y_i | c_ij ∘ x_i)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    model.zero_grad()
    with torch.no_grad():
        assert not adapter.score(QUERIES, CONTEXTS, TARGETS).requires_grad


def test_token_scores_feed_the_marginal_nll(gpt2):
    model, tok = gpt2
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE)
    per_token = adapter.score(QUERIES, CONTEXTS, TARGETS, reduction="none")
    mask = torch.tensor([[True, True, True], [True, False, False]])
    retriever_scores = torch.randn(2, 3, requires_grad=True)
    loss = pyrag.marginal_nll(retriever_scores, per_token, mask=mask)
    loss.backward()
    assert bool(torch.isfinite(loss)) and retriever_scores.grad is not None


def test_black_box_callable_stands_in_for_a_model():
    def black_box(queries, contexts, targets):
        return torch.tensor([[-float(len(c)) for c in row] for row in contexts])

    adapter = pyrag.GeneratorAdapter(black_box)
    contexts = [["ab", "abc"], ["a", "abcd"]]
    assert torch.equal(adapter(["q1", "q2"], contexts, ["y1", "y2"]), torch.tensor([[-2.0, -3.0], [-1.0, -4.0]]))
    with pytest.raises(ValueError, match="black-box"):
        adapter.score(["q1", "q2"], contexts, ["y1", "y2"], reduction="none")
    with pytest.raises(TypeError, match="generate"):
        adapter.generate("q", ["c"])
    with pytest.raises(ValueError, match="expected"):
        pyrag.GeneratorAdapter(lambda q, c, y: torch.zeros(3))(["q"], [["c"]], ["y"])


def test_generate_returns_text_and_sources(lm):
    model, tok = lm
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE)
    contexts = ["paris is the capital of france .", "the dog ran to the park"]
    result = adapter.generate(
        "what is the capital of france ?",
        contexts,
        weights=torch.tensor([0.75, 0.25]),
        max_new_tokens=4,
        do_sample=False,
    )
    assert [s.weight for s in result.sources] == [0.75, 0.25]
    assert [s.text for s in result.sources] == contexts
    assert all(s.included and not s.truncated for s in result.sources)
    # The same prompt through model.generate directly gives the same text.
    ids = tok(result.prompt)["input_ids"]
    if not model.config.is_encoder_decoder:
        ids = [i for i in ids if i != tok.eos_token_id]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    new = out[0] if model.config.is_encoder_decoder else out[0, len(ids) :]
    assert result.text == tok.decode(new.tolist(), skip_special_tokens=True)


def test_generate_attributes_truncated_contexts(gpt2):
    model, tok = gpt2
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE, max_length=22)
    # 22 - 2 new tokens - 11 for the template and query leave 9: all of the first context
    # (7 tokens), the start of the second, none of the third.
    contexts = ["paris is the capital of france .", "the dog ran to the park", "blue river city"]
    result = adapter.generate("who lives in paris ?", contexts, max_new_tokens=2, do_sample=False)
    assert [(s.included, s.truncated) for s in result.sources] == [(True, False), (True, True), (False, True)]
    assert [s.weight for s in result.sources] == [None, None, None]


def test_bad_arguments(gpt2):
    model, tok = gpt2
    for template in ["{context} only", "{query} only", "{context} {query} {context}", "{context} {query} {other}"]:
        with pytest.raises(ValueError, match="template"):
            pyrag.GeneratorAdapter(model, tok, template=template)
    with pytest.raises(ValueError, match="tokenizer"):
        pyrag.GeneratorAdapter(model)
    with pytest.raises(TypeError, match="transformers model or a callable"):
        pyrag.GeneratorAdapter(42)
    adapter = pyrag.GeneratorAdapter(model, tok, template=TEMPLATE)
    with pytest.raises(ValueError, match="reduction"):
        adapter.score(QUERIES, CONTEXTS, TARGETS, reduction="avg")
    with pytest.raises(ValueError, match="2 queries, 2 context lists and 1 targets"):
        adapter.score(QUERIES, CONTEXTS, TARGETS[:1])
    with pytest.raises(TypeError, match="lists of str"):
        adapter.score("a query", CONTEXTS[:1], TARGETS[:1])
    with pytest.raises(ValueError, match="weights"):
        adapter.generate("q", ["a", "b"], weights=[1.0])
