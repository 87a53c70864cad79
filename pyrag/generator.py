"""GeneratorAdapter: log p_LM(y | c∘x) for every (query, retrieved context) pair from a
Hugging Face causal or seq2seq LM — the LM side of REPLUG LSR, RA-DIT and RAG — and
generation with source attribution. A plain callable (queries, contexts, targets) ->
[B, K] stands in for a model: REPLUG's black-box LM.

transformers is optional: this module never imports it; it only calls the model and
tokenizer it is given.

    lm = pyrag.GeneratorAdapter(model, tokenizer, template="{context}\\n\\nQ: {query}\\nA:")
    lm_scores = lm.score(queries, hits.passages, answers)          # [B, K]
    loss = pyrag.lsr_loss(hits.scores, lm_scores.detach(), mask=hits.mask)
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

DEFAULT_TEMPLATE = "{context}\n\n{query}"
_REDUCTIONS = ("sum", "mean", "none")
# Tokenizers without a real limit report model_max_length = 1e30 or so.
_NO_LIMIT = 1_000_000


@dataclass
class Source:
    """One context given to generate(): its position in the list, its text, its
    retriever weight (None if none was given), and how much of it the prompt kept."""

    position: int
    text: str
    weight: Optional[float]
    included: bool  # at least part of it is in the prompt
    truncated: bool  # it was cut (or dropped) to fit max_length


@dataclass
class GenerationResult:
    text: str
    sources: list[Source]
    prompt: str


@dataclass
class _Encoded:
    """One (query, context, target) triple as token ids."""

    prompt: list[int]  # causal: special prefix + prompt; seq2seq: the encoder input
    target: list[int]


class GeneratorAdapter:
    """Scores and generates with an LM over retrieved contexts.

    Args:
        model: a transformers causal LM (GPT-2, Llama, ...) or seq2seq LM (T5, BART), or
            any callable (queries, contexts, targets) -> [B, K] log-likelihoods.
        tokenizer: the model's tokenizer (a fast tokenizer: truncation uses its offsets).
        template: the prompt, with one {context} and one {query} field. The target is
            appended after the prompt (causal LMs) or is the decoder's output (seq2seq),
            tokenized on its own, so include any separating space in the targets.
        max_length: the token budget of the prompt and target (causal) or of the encoder
            input (seq2seq); default: the model's position limit. A prompt over budget
            loses the end of its context, never any of the query or target.
        batch_size: sequences per forward pass in score() (default: all B*K at once).
        score_eos: also score the end-of-sequence token after each target.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        template: str = DEFAULT_TEMPLATE,
        max_length: Optional[int] = None,
        batch_size: Optional[int] = None,
        score_eos: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self._template_parts = _parse_template(template)
        self.black_box = not isinstance(model, torch.nn.Module) and callable(model)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.score_eos = bool(score_eos)
        if self.black_box:
            self.max_length = max_length
            return
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(
                f"model must be a transformers model or a callable (queries, contexts, targets) "
                f"-> [B, K]; got {type(model).__name__}"
            )
        if tokenizer is None:
            raise ValueError("a transformers model needs its tokenizer")
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.max_length = _default_max_length(model, tokenizer) if max_length is None else max_length
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        self._prefix, self._suffix = _special_affixes(tokenizer)
        if self.score_eos and tokenizer.eos_token_id is None:
            raise ValueError("score_eos=True but the tokenizer has no eos token")

    def __repr__(self) -> str:
        kind = "black-box" if self.black_box else ("seq2seq" if self.is_seq2seq else "causal")
        return f"GeneratorAdapter({kind}, max_length={self.max_length}, template={self.template!r})"

    def __call__(
        self, queries: Sequence[str], contexts: Sequence[Sequence[Optional[str]]], targets: Sequence[str]
    ) -> torch.Tensor:
        """log p_LM(y | c∘x) [B, K]: the black-box signature, so that an adapter and a
        plain callable are interchangeable."""
        return self.score(queries, contexts, targets)

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        queries: Sequence[str],
        contexts: Sequence[Sequence[Optional[str]]],
        targets: Sequence[str],
        *,
        reduction: str = "sum",
    ) -> torch.Tensor:
        """log p_LM(y_i | c_ij ∘ x_i) for B queries with K contexts each.

        contexts[i] lists query i's contexts; rows may be ragged and hold None (padding,
        e.g. RetrievalResult.passages when k > len(index)): those entries score 0.
        reduction: "sum" -> [B, K] sequence log-probabilities; "mean" -> [B, K] divided
        by the target's length; "none" -> [B, K, T] per-token log-probabilities, with 0
        past each target's end (the marginal over contexts of a 0 is 0, so
        pyrag.marginal_nll needs no token mask for them).
        Differentiable with respect to the model's parameters when grad is enabled.
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
        queries, contexts, targets = _check_batch(queries, contexts, targets)
        if self.black_box:
            return self._score_black_box(queries, contexts, targets, reduction)
        b = len(queries)
        k = max((len(row) for row in contexts), default=0)
        target_ids = [self._target_ids(t) for t in targets]
        t_max = max((len(t) for t in target_ids), default=0)
        jobs = [
            (i, j, self._encode(queries[i], ctx, target_ids[i]))
            for i, row in enumerate(contexts)
            for j, ctx in enumerate(row)
            if ctx is not None
        ]
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        token_logprobs = torch.zeros((b, k, t_max), device=device)
        if jobs and t_max:
            step = self.batch_size or len(jobs)
            pieces = [
                self._token_logprobs([e for _, _, e in jobs[s : s + step]], t_max, device)
                for s in range(0, len(jobs), step)
            ]
            rows = torch.tensor([i for i, _, _ in jobs], device=device)
            cols = torch.tensor([j for _, j, _ in jobs], device=device)
            token_logprobs = token_logprobs.index_put((rows, cols), torch.cat(pieces))
        if reduction == "none":
            return token_logprobs
        total = token_logprobs.sum(dim=-1)
        if reduction == "mean":
            lengths = torch.tensor([len(t) for t in target_ids], device=device, dtype=total.dtype)
            total = total / lengths.clamp(min=1).unsqueeze(1)
        return total

    def _score_black_box(
        self,
        queries: list[str],
        contexts: list[list[Optional[str]]],
        targets: list[str],
        reduction: str,
    ) -> torch.Tensor:
        if reduction != "sum":
            raise ValueError(
                f"a black-box LM gives sequence log-likelihoods only; reduction={reduction!r} "
                f"needs a transformers model"
            )
        out = self.model(queries, contexts, targets)
        out = torch.as_tensor(out)
        k = max((len(row) for row in contexts), default=0)
        if tuple(out.shape) != (len(queries), k):
            raise ValueError(f"the black-box LM returned shape {tuple(out.shape)}, expected {(len(queries), k)}")
        return out

    def _target_ids(self, target: str) -> list[int]:
        ids = list(self.tokenizer(target, add_special_tokens=False)["input_ids"])
        if self.score_eos:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _token_logprobs(self, batch: list[_Encoded], t_max: int, device: torch.device) -> torch.Tensor:
        """[n, t_max] log p(target_t | prompt, target_<t) for one padded batch; 0 past the
        end of each target."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        targets, target_mask = _pad([e.target for e in batch], pad, device, width=t_max)
        if self.is_seq2seq:
            enc_ids, enc_mask = _pad([e.prompt for e in batch], pad, device)
            start = self.model.config.decoder_start_token_id
            if start is None:
                raise ValueError("the seq2seq model's config has no decoder_start_token_id")
            dec_in, dec_mask = _pad([[start] + e.target[:-1] for e in batch], pad, device, width=t_max)
            logits = self.model(
                input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=dec_in, decoder_attention_mask=dec_mask
            ).logits  # [n, t_max, V]
        else:
            # Right padding keeps every sequence's positions at 0, 1, 2, ...
            ids, mask = _pad([e.prompt + e.target for e in batch], pad, device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # [n, L, V]
            # Position p predicts token p + 1: target token t comes from len(prompt) - 1 + t.
            first = torch.tensor([len(e.prompt) - 1 for e in batch], device=device)
            pos = (first[:, None] + torch.arange(t_max, device=device)).clamp(max=logits.shape[1] - 1)
            logits = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1]))
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, :, None]).squeeze(-1)
        return logp * target_mask

    # ------------------------------------------------------------------ prompts
    def _encode(self, query: str, context: str, target_ids: list[int]) -> _Encoded:
        if self.is_seq2seq:
            budget = None if self.max_length is None else self.max_length - len(self._prefix) - len(self._suffix)
            prompt, _ = self._fit_prompt(query, context, budget)
            return _Encoded(self._prefix + prompt + self._suffix, target_ids)
        budget = None if self.max_length is None else self.max_length - len(self._prefix) - len(target_ids)
        prompt, _ = self._fit_prompt(query, context, budget)
        if not self._prefix and not prompt:
            raise ValueError(
                "the prompt is empty and the tokenizer adds no BOS token: a causal LM "
                "cannot score the first target token"
            )
        return _Encoded(self._prefix + prompt, target_ids)

    def _fit_prompt(self, query: str, context: str, budget: Optional[int]) -> tuple[list[int], str]:
        """The prompt's token ids within `budget` tokens, and the context actually kept.
        Only the end of the context is cut; the prompt is re-tokenized whole after each
        cut, so the ids are exactly what the tokenizer makes of the shortened prompt."""
        while True:
            text, (c_start, c_end) = self._render(query, context)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            if budget is None or len(ids) <= budget:
                return ids, context
            if not context:
                raise ValueError(
                    f"the prompt without any context takes {len(ids)} tokens, more than the "
                    f"{budget} that max_length={self.max_length} leaves; the query and target are "
                    f"never truncated"
                )
            # Cut the context at the first of its tokens that must go, then re-tokenize.
            starts = [st - c_start for st, en in enc["offset_mapping"] if c_start <= st < en <= c_end]
            keep = len(starts) - (len(ids) - budget)
            shorter = context[: starts[keep]].rstrip() if keep > 0 else ""
            # Tokens that merge across the context's edges can leave it as long as it was.
            context = shorter if len(shorter) < len(context) else context[:-1]

    def _render(self, query: str, context: str) -> tuple[str, tuple[int, int]]:
        """The prompt text and the character span of the context in it."""
        out, span = [], (0, 0)
        for kind, literal in self._template_parts:
            if kind == "text":
                out.append(literal)
            elif kind == "query":
                out.append(query)
            else:
                start = sum(map(len, out))
                out.append(context)
                span = (start, start + len(context))
        return "".join(out), span

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        query: str,
        contexts: Sequence[str],
        *,
        weights: Optional[Sequence[float]] = None,
        separator: str = "\n\n",
        **generate_kwargs: Any,
    ) -> GenerationResult:
        """Generates an answer to `query` from its contexts (joined in the given order
        with `separator`) with model.generate(**generate_kwargs), and returns the text
        with its sources: each context, its retriever weight, and whether it made it
        into the prompt (contexts at the end are cut first when max_length binds)."""
        if self.black_box:
            raise TypeError("generate() needs a transformers model; this adapter wraps a black-box scorer")
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        contexts = list(contexts)
        if not all(isinstance(c, str) for c in contexts):
            raise TypeError("contexts must be a list of str")
        if weights is not None:
            weights = [float(w) for w in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)]
            if len(weights) != len(contexts):
                raise ValueError(f"got {len(weights)} weights for {len(contexts)} contexts")
        joined = separator.join(contexts)
        budget = self.max_length
        if budget is not None:
            budget -= len(self._prefix)
            if self.is_seq2seq:
                budget -= len(self._suffix)
            else:
                budget -= int(generate_kwargs.get("max_new_tokens", 0))
        prompt_ids, kept = self._fit_prompt(query, joined, budget)
        sources, offset = [], 0
        for pos, ctx in enumerate(contexts):
            included = offset < len(kept) or (not ctx and offset <= len(kept))
            truncated = offset + len(ctx) > len(kept)
            sources.append(Source(pos, ctx, None if weights is None else weights[pos], included, truncated))
            offset += len(ctx) + len(separator)
        ids = self._prefix + prompt_ids + (self._suffix if self.is_seq2seq else [])
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        kwargs = dict(generate_kwargs)
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = (
                self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            )
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        new_tokens = out[0] if self.is_seq2seq else out[0, len(ids) :]
        text = self.tokenizer.decode(new_tokens.tolist(), skip_special_tokens=True)
        return GenerationResult(text=text, sources=sources, prompt=self._render(query, kept)[0])


# ---------------------------------------------------------------------- helpers
def _parse_template(template: str) -> list[tuple[str, str]]:
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    parts, fields = [], []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"bad template {template!r}: {e}") from None
    for literal, field, spec, conversion in parsed:
        if literal:
            parts.append(("text", literal))
        if field is None:
            continue
        if field not in ("context", "query") or spec or conversion:
            raise ValueError(f"template fields are {{context}} and {{query}}; got {{{field}}} in {template!r}")
        fields.append(field)
        parts.append((field, ""))
    if sorted(fields) != ["context", "query"]:
        raise ValueError(f"template must hold {{context}} and {{query}} once each, got {template!r}")
    return parts


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. Llama's BOS,
    T5's EOS), found by tokenizing one probe with and without them."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _default_max_length(model: Any, tokenizer: Any) -> Optional[int]:
    candidates = [getattr(model.config, name, None) for name in ("n_positions", "max_position_embeddings")]
    candidates.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in candidates if isinstance(x, int) and 0 < x < _NO_LIMIT]
    return min(limits) if limits else None


def _pad(
    seqs: list[list[int]], pad: int, device: torch.device, width: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [n, width] ids and their bool mask."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids.to(device), mask.to(device)


def _check_batch(
    queries: Sequence[str], contexts: Sequence[Sequence[Optional[str]]], targets: Sequence[str]
) -> tuple[list[str], list[list[Optional[str]]], list[str]]:
    if isinstance(queries, str) or isinstance(targets, str):
        raise TypeError("queries and targets are lists of str (one per query); wrap a single one in a list")
    query_list, target_list = list(queries), list(targets)
    if any(isinstance(row, str) for row in contexts):
        raise TypeError("contexts must be one list of str per query")
    context_rows = [list(row) for row in contexts]
    if not (len(query_list) == len(context_rows) == len(target_list)):
        raise ValueError(
            f"got {len(query_list)} queries, {len(context_rows)} context lists and {len(target_list)} targets"
        )
    for what, items in (("queries", query_list), ("targets", target_list)):
        if not all(isinstance(s, str) for s in items):
            raise TypeError(f"{what} must be str")
    if not all(c is None or isinstance(c, str) for row in context_rows for c in row):
        raise TypeError("contexts must be str (or None for padding)")
    return query_list, context_rows, target_list
