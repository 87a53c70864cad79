"""The CPU kernels on every instruction-set path this machine supports, for every corpus
dtype, against pyrag.reference: run-time ISA choice, bit-exact scores where the math is
exact, int8 values that would saturate a vpmaddubsw kernel, the packed layout,
quantisation, and agreement between paths and layouts. The kernels' C++ tests
(csrc/tests) run here too, natively; tools/test_cpu_kernels.sh also runs them for AArch64
under qemu."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import _C, reference
from pyrag.index import packed as T

ISAS = _C.supported_cpu_isas()
ALL_PATHS = ["scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "avx512bf16", "neon", "neon_dotprod", "neon_bf16"]
ROOT = Path(__file__).resolve().parents[1]
DTYPES = ["float32", "bfloat16", "int8"]
SHAPES = [  # (B, N, d, k): partial tiles and blocks, d not a multiple of any SIMD width
    (1, 1, 1, 1),
    (1, 17, 3, 5),
    (3, 100, 16, 7),
    (5, 257, 37, 10),
    (16, 1000, 384, 10),
    (7, 50, 5, 60),
    (33, 300, 130, 1),
    (6, 64, 2, 64),
    (11, 129, 33, 129),
    (2, 3001, 384, 10),  # small B on a plain tensor: many tiles, each prefetched while the last is packed
]


@pytest.fixture(params=ISAS)
def isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("")


def corpus_of(dtype, x):
    """(corpus tensor, scales) of float32 rows x in `dtype`."""
    if dtype == "float32":
        return x, None
    if dtype == "bfloat16":
        return x.to(torch.bfloat16), None
    return reference.quantize_int8(x)


def packed_of(dtype, x):
    """x as a PackedCorpus, the way DenseIndex stores it."""
    return packed_corpus(dtype, *corpus_of(dtype, x))


def packed_corpus(dtype, corpus, scales):
    """A corpus tensor in its storage dtype (with int8 scales) as a PackedCorpus."""
    n, d = corpus.shape
    blocks = -(-n // 16)
    data = torch.zeros((blocks, T.block_bytes(dtype, d)), dtype=torch.uint8)
    T.pack_rows(dtype, corpus, data, 0)
    if scales is not None:
        scales = torch.cat([scales, scales.new_zeros(blocks * 16 - n)])
    return T.PackedCorpus(dtype, d, data, n, scales)


# ------------------------------------------------------------------ ISA choice
def test_paths_are_listed_lowest_first():
    assert ISAS[0] == "scalar"
    assert ISAS == sorted(ISAS, key=ALL_PATHS.index)
    assert _C.cpu_isa() == ISAS[-1]


@pytest.mark.parametrize("name, match", [("sse9", "unknown CPU path"), ("", None)])
def test_set_cpu_isa_rejects_unknown_names(name, match):
    if match is None:  # "" restores the default
        _C.set_cpu_isa(name)
        assert _C.cpu_isa() == ISAS[-1]
        return
    with pytest.raises(ValueError, match=match):
        _C.set_cpu_isa(name)
    assert _C.cpu_isa() == ISAS[-1]


def test_set_cpu_isa_rejects_paths_this_cpu_lacks():
    missing = [n for n in ALL_PATHS if n not in ISAS]
    assert missing  # no CPU has both the x86 and the ARM paths
    for name in missing:
        with pytest.raises(ValueError, match=f"CPU path '{name}' is not supported by this CPU"):
            _C.set_cpu_isa(name)
        assert _C.cpu_isa() == ISAS[-1]


# A level without its own kernel for a dtype runs the next lower level's.
FALLBACKS = {
    "scalar": ("scalar", "scalar", "scalar"),
    "avx2": ("avx2", "avx2", "avx2"),
    "avx2vnni": ("avx2", "avx2", "avx2vnni"),
    "avx512": ("avx512", "avx512", "avx512"),
    "avx512vnni": ("avx512", "avx512", "avx512vnni"),
    "avx512bf16": ("avx512", "avx512bf16", "avx512vnni"),
    "neon": ("neon", "neon", "neon"),
    "neon_dotprod": ("neon", "neon", "neon_dotprod"),
    "neon_bf16": ("neon", "neon_bf16", "neon_dotprod"),
}


def test_each_dtype_runs_the_kernel_of_the_best_level_that_has_one(isa):
    want = FALLBACKS[isa]
    got = tuple(_C.cpu_kernel_isa(dtype) for dtype in DTYPES)
    # Where a level in between is missing (Zen 4: avx512bf16 without avx2vnni is fine,
    # an int8 level skipped), the kernel comes from the best supported level below.
    for dtype, level, expected in zip(DTYPES, got, want):
        assert level in ISAS and ALL_PATHS.index(level) <= ALL_PATHS.index(isa)
        if expected in ISAS:
            assert level == expected, (dtype, level, expected)
    with pytest.raises(ValueError, match="unsupported corpus dtype"):
        _C.cpu_kernel_isa("float16")


def _in_subprocess(env_value, code):
    env = dict(os.environ, PYRAG_CPU_ISA=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_var_forces_a_lower_path():
    r = _in_subprocess("scalar", "import pyrag._C as C; print(C.cpu_isa())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


def test_env_var_with_an_unknown_path_is_a_clear_error():
    code = (
        "import torch, pyrag\n"
        "try:\n    pyrag.topk_scores(torch.ones(1, 4), torch.ones(3, 4), 1)\n"
        "except ValueError as e:\n    print('ValueError:', e)\n"
    )
    r = _in_subprocess("avx9000", code)
    assert r.returncode == 0, r.stderr
    assert "ValueError: PYRAG_CPU_ISA: unknown CPU path 'avx9000'" in r.stdout


# ------------------------------------------------------------------ kernels against the reference
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_is_exact_on_integer_data(isa, shape):
    b, n, d, k = shape
    g = torch.Generator().manual_seed(n * d)
    q = torch.randint(-4, 5, (b, d), generator=g).float()
    x = torch.randint(-4, 5, (n, d), generator=g).float()  # many ties
    assert_same(pyrag.topk_scores(q, x, k, backend="cpu"), reference.topk_scores(q, x, k))
    assert_same(T.search(q, packed_of("float32", x), k), reference.topk_scores(q, x, k))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_matches_the_reference_on_random_data(isa, shape):
    b, n, d, k = shape
    g = torch.Generator().manual_seed(b + n + d)
    q, x = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    scores, ids = pyrag.topk_scores(q, x, k, backend="cpu")
    ref_scores, _ = reference.topk_scores(q, x, k)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5 * d**0.5)
    # The ids' scores (recomputed) are the scores reported: no row was mislabelled.
    valid = ids >= 0
    recomputed = (q.unsqueeze(1) * x[ids.clamp(min=0)]).sum(-1)
    torch.testing.assert_close(scores[valid], recomputed[valid], rtol=1e-5, atol=1e-5 * d**0.5)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantised_corpora_match_the_reference_bit_for_bit(isa, dtype, shape):
    b, n, d, k = shape
    g = torch.Generator().manual_seed(3 * n + d)
    q, x = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g) * 3
    corpus, scales = corpus_of(dtype, x)
    expected = reference.topk_scores(q, corpus, k, scales=scales, quantized_queries=True)
    assert_same(pyrag.topk_scores(q, corpus, k, scales=scales, backend="cpu"), expected)
    assert_same(T.search(q, packed_of(dtype, x), k), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_path_gives_the_same_bits(dtype):
    """Each row's score is one chain in a fixed order on every path: so scalar, AVX2 and
    AVX-512 (and the pre-packed and row-major layouts) agree exactly, fp32 included."""
    g = torch.Generator().manual_seed(7)
    q, x = torch.randn(9, 77, generator=g), torch.randn(2000, 77, generator=g)
    corpus, scales = corpus_of(dtype, x)
    results = []
    try:
        for name in ISAS:
            _C.set_cpu_isa(name)
            results.append(pyrag.topk_scores(q, corpus, 25, scales=scales, backend="cpu"))
            results.append(T.search(q, packed_of(dtype, x), 25))
    finally:
        _C.set_cpu_isa("")
    for r in results[1:]:
        assert_same(r, results[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_the_smaller_row(isa, dtype):
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(5, 40, generator=g)
    x = rows.repeat(60, 1)  # every row 60 times, interleaved
    q = torch.randn(4, 40, generator=g)
    corpus, scales = corpus_of(dtype, x)
    scores, ids = pyrag.topk_scores(q, corpus, 70, scales=scales, backend="cpu")
    assert_same((scores, ids), reference.topk_scores(q, corpus, 70, scales=scales, quantized_queries=True))
    best = ids[:, :60]
    assert bool((best % 5 == best[:, :1] % 5).all())  # the 60 copies of the best row
    assert bool((best.diff(dim=1) > 0).all())  # in row order


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_thread_count(dtype, threads):
    g = torch.Generator().manual_seed(2)
    q, x = torch.randn(5, 64, generator=g), torch.randn(30000, 64, generator=g)
    corpus, scales = corpus_of(dtype, x)
    pyrag.set_num_threads(1)
    try:
        one = pyrag.topk_scores(q, corpus, 10, scales=scales)
        pyrag.set_num_threads(threads)
        assert_same(pyrag.topk_scores(q, corpus, 10, scales=scales), one)
    finally:
        pyrag.set_num_threads(None)


def _saturating_int8(n, d, seed):
    """Rows of +-127 and -128 and queries that quantise to +-127 everywhere: pairs of
    products up to 2 * 255 * 127 in the biased form, past vpmaddubsw's int16 range."""
    g = torch.Generator().manual_seed(seed)
    choice = torch.randint(0, 6, (n, d), generator=g)
    corpus = torch.where(choice == 0, -128, torch.where(choice % 2 == 1, 127, -127)).to(torch.int8)
    corpus[: n // 4] = 127  # whole rows at the maximum: every biased byte is 255
    corpus[n // 4 : n // 2] = -128
    q = torch.where(torch.randint(0, 4, (3, d), generator=g) == 0, -1.0, 1.0)
    q[0] = 1.0
    return q, corpus


@pytest.mark.parametrize("n, d", [(40, 4), (100, 37), (300, 384), (17, 1000)])
def test_int8_dot_is_exact_where_int16_pair_sums_would_saturate(isa, n, d):
    q, corpus = _saturating_int8(n, d, n + d)
    scales = torch.linspace(0.5, 2.0, n)
    expected = reference.topk_scores(q, corpus, 12, scales=scales, quantized_queries=True)
    assert_same(pyrag.topk_scores(q, corpus, 12, scales=scales, backend="cpu"), expected)
    # Query 0 quantises to 127 everywhere and rows 0 .. n/4 - 1 are all 127 (ties to row
    # 0): its best score is 127 * 127 * d times the query scale 1/127.
    scores, ids = pyrag.topk_scores(q[:1], corpus, 1, scales=torch.ones(n), backend="cpu")
    assert int(ids[0, 0]) == 0 and float(scores[0, 0]) == pytest.approx(127 * d, rel=1e-6)
    assert_same(T.search(q, packed_corpus("int8", corpus, scales), 12), expected)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 9),
    n=st.integers(1, 200),
    d=st.integers(1, 70),
    k=st.integers(1, 220),
    dtype=st.sampled_from(DTYPES),
    isa_name=st.sampled_from(ISAS),
    seed=st.integers(0, 2**16),
    extreme=st.booleans(),
)
def test_property_matches_the_reference(b, n, d, k, dtype, isa_name, seed, extreme):
    g = torch.Generator().manual_seed(seed)
    if dtype == "float32":  # integer data: every path is exact
        q = torch.randint(-3, 4, (b, d), generator=g).float()
        x = torch.randint(-3, 4, (n, d), generator=g).float()
    else:
        q, x = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    corpus, scales = corpus_of(dtype, x)
    if dtype == "int8" and extreme:  # values at the ends of the range
        q, corpus = _saturating_int8(n, d, seed)
        q = q.repeat(-(-b // 3), 1)[:b]
    try:
        _C.set_cpu_isa(isa_name)
        got = pyrag.topk_scores(q, corpus, k, scales=scales, backend="cpu")
        packed = T.search(q, packed_corpus(dtype, corpus, scales), k)
    finally:
        _C.set_cpu_isa("")
    expected = reference.topk_scores(q, corpus, k, scales=scales, quantized_queries=True)
    assert_same(got, expected)
    assert_same(packed, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_scores_are_reported(isa, dtype):
    x = torch.randn(100, 20)
    q = torch.randn(2, 20)
    if dtype == "int8":
        corpus, scales = reference.quantize_int8(x)
        scales[37] = 3e38  # finite scale, overflowing score
    else:
        x[37, 3] = float("inf") if dtype == "float32" else 3e38
        corpus, scales = corpus_of(dtype, x)
        if dtype == "bfloat16":
            corpus[37] = 3e38
    with pytest.raises(ValueError, match="NaN or Inf"):
        pyrag.topk_scores(q * 1e10, corpus, 3, scales=scales, backend="cpu")


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda c, s: (c, s[:-1]), ValueError, "scales have shape"),
        (lambda c, s: (c, s.double()), TypeError, "scales must be float32"),
        (lambda c, s: (c.float(), s), ValueError, "per-row scales to an int8 corpus only"),
        (lambda c, s: (c, torch.where(s > 0, s, float("nan"))), ValueError, "NaN or Inf"),
    ],
)
def test_bad_scales_are_rejected(bad, error, match):
    corpus, scales = reference.quantize_int8(torch.randn(10, 8))
    scales[0] = 0.0
    c, s = bad(corpus, scales)
    with pytest.raises(error, match=match):
        pyrag.topk_scores(torch.randn(2, 8), c, 3, scales=s)


def test_an_int8_corpus_without_scales_has_rows_of_plain_integers():
    g = torch.Generator().manual_seed(4)
    corpus = torch.randint(-127, 128, (300, 24), generator=g, dtype=torch.int8)
    q = torch.randn(3, 24, generator=g)
    expected = reference.topk_scores(q, corpus, 9, scales=torch.ones(300), quantized_queries=True)
    assert_same(pyrag.topk_scores(q, corpus, 9, backend="cpu"), expected)


def test_cpu_backend_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32 queries"):
        pyrag.topk_scores(torch.randn(2, 8).double(), torch.randn(10, 8), 3, backend="cpu")
    with pytest.raises(TypeError, match="float32, bfloat16 or int8 corpora"):
        pyrag.topk_scores(torch.randn(2, 8), torch.randn(10, 8).half(), 3, backend="cpu")


# ------------------------------------------------------------------ layout and quantisation
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 2, 3, 5, 16, 17, 64, 100])
def test_pack_then_unpack_round_trips_on_every_path(dtype, d):
    g = torch.Generator().manual_seed(d)
    corpus, _ = corpus_of(dtype, torch.randn(45, d, generator=g))
    packs = []
    try:
        for name in ISAS:
            _C.set_cpu_isa(name)
            data = torch.zeros((3, T.block_bytes(dtype, d)), dtype=torch.uint8)
            # In three pieces, the middle one filling a block begun by the first.
            T.pack_rows(dtype, corpus[:7], data, 0)
            T.pack_rows(dtype, corpus[7:40], data, 7)
            T.pack_rows(dtype, corpus[40:], data, 40)
            packs.append(data)
    finally:
        _C.set_cpu_isa("")
    for data in packs:
        assert torch.equal(data, packs[0])  # the layout does not depend on the path
    assert torch.equal(T.unpack_rows(dtype, packs[0], 0, 45, d), corpus)
    assert torch.equal(T.unpack_rows(dtype, packs[0], 13, 20, d), corpus[13:33])


def test_packed_layout_is_blocks_of_16_rows_by_4_byte_groups():
    x = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    data = torch.zeros((2, T.block_bytes("float32", 3)), dtype=torch.uint8)
    T.pack_rows("float32", x, data, 0)
    words = data.view(torch.float32).reshape(2, 3, 16)  # [block][group][row]
    assert torch.equal(words[0], x[:16].T)
    assert torch.equal(words[1, :, :4], x[16:].T)
    assert bool((words[1, :, 4:] == 0).all())  # padding rows


def test_int8_quantisation_matches_the_reference_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    x = torch.cat(
        [
            torch.randn(500, 33, generator=g) * torch.logspace(-30, 30, 500).unsqueeze(1),
            torch.zeros(1, 33),  # all-zero row: scale 0
            torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 126.5, -127.0] + [0.0] * 25]),  # ties to even
        ]
    )
    values, scales, norms, errors = T.encode_rows("int8", x)
    ref_values, ref_scales = reference.quantize_int8(x)
    assert torch.equal(values, ref_values)
    assert torch.equal(scales, ref_scales)
    assert values[-1, :8].tolist() == [127, 0, 2, 2, 0, -2, 126, -127]
    assert_error_bounds(x, values.double() * scales.double().unsqueeze(1), norms, errors)


def test_bfloat16_encoding_rounds_to_nearest_even():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 21, generator=g) * torch.logspace(-20, 20, 300).unsqueeze(1)
    values, scales, norms, errors = T.encode_rows("bfloat16", x)
    assert scales is None
    assert torch.equal(values, x.to(torch.bfloat16))
    assert_error_bounds(x, values.double(), norms, errors)


def assert_error_bounds(x, dequantised, norms, errors):
    """norms and errors bound ||x|| and ||x - x^|| from above, tightly."""
    true_norms = x.double().norm(dim=1)
    true_errors = (x.double() - dequantised).norm(dim=1)
    assert bool((norms.double() >= true_norms).all()) and bool((errors.double() >= true_errors).all())
    torch.testing.assert_close(norms.double(), true_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(errors.double(), true_errors, rtol=1e-6, atol=0)


def assert_same(got, expected):
    """Scores and ids equal bit for bit."""
    scores, ids = got
    ref_scores, ref_ids = expected
    assert torch.equal(ids, ref_ids), (ids, ref_ids)
    assert torch.equal(scores, ref_scores), (scores - ref_scores).abs().max()


def test_cpp_kernel_tests_pass_on_every_native_path():
    """csrc/tests/test_cpu_kernels.cpp, built by tools/test_cpu_kernels.sh (CMake, the
    system compiler; incremental after the first build): every path against the score
    definitions and the scalar path, bit for bit, including shapes and data this file
    does not reach (3 threads on 12,000 and 40,000 rows, int8 -128)."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.fail("the C++ kernel tests need cmake and ninja (pip install cmake ninja)")
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "test_cpu_kernels.sh"), "--native-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "0 failures" in r.stdout
    assert f"supported CPU paths: {','.join(ISAS)}" in r.stdout


@pytest.mark.parametrize("dtype", DTYPES)
def test_op_passes_opcheck_for_every_corpus_dtype(dtype):
    corpus, scales = corpus_of(dtype, torch.randn(40, 12))
    torch.library.opcheck(torch.ops.pyrag.topk_scores.default, (torch.randn(3, 12), corpus, 5, scales, "cpu"))
