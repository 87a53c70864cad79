// pybind11 module pyrag._C. It takes raw addresses and sizes (Python checks dtypes,
// devices and contiguity in pyrag/backends/cpu.py and pyrag/index/packed.py) so that it never links
// libtorch and one build serves every torch version. Kernels run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/encode.h"
#include "cpu/isa.h"
#include "cpu/lsr.h"
#include "cpu/marginal_nll.h"
#include "cpu/packed_layout.h"
#include "cpu/topk_scores.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

pyrag::Corpus corpus_of(const std::string& dtype, std::uintptr_t data, bool packed,
                        int64_t num_rows, int64_t dim, std::uintptr_t scales,
                        std::uintptr_t tie_keys) {
  pyrag::Corpus c{pyrag::parse_dtype(dtype), packed, ptr<const void>(data), num_rows, dim,
                  ptr<const float>(scales)};
  c.tie_keys = ptr<const int64_t>(tie_keys);
  return c;
}

void topk_scores(const std::string& dtype, std::uintptr_t queries, int64_t num_queries,
                 std::uintptr_t corpus, bool packed, int64_t num_rows, int64_t dim,
                 std::uintptr_t scales, int64_t k, int num_threads, std::uintptr_t out_scores,
                 std::uintptr_t out_ids, std::uintptr_t tie_keys) {
  const auto c = corpus_of(dtype, corpus, packed, num_rows, dim, scales, tie_keys);
  py::gil_scoped_release release;
  pyrag::topk_scores(ptr<const float>(queries), num_queries, c, k, num_threads,
                     ptr<float>(out_scores), ptr<int64_t>(out_ids));
}

py::dict topk_scores_exact(const std::string& dtype, std::uintptr_t queries, int64_t num_queries,
                           std::uintptr_t corpus, int64_t num_rows, int64_t dim,
                           std::uintptr_t scales, int originals_fd, int64_t originals_offset,
                           double max_norm, double max_error, int64_t k, int num_threads,
                           std::uintptr_t out_scores, std::uintptr_t out_ids,
                           std::uintptr_t tie_keys) {
  const auto c = corpus_of(dtype, corpus, true, num_rows, dim, scales, tie_keys);
  const pyrag::Originals o{originals_fd, originals_offset, max_norm, max_error};
  pyrag::ExactStats st;
  {
    py::gil_scoped_release release;
    st = pyrag::topk_scores_exact(ptr<const float>(queries), num_queries, c, o, k, num_threads,
                                  ptr<float>(out_scores), ptr<int64_t>(out_ids));
  }
  py::dict out;
  out["candidates"] = st.candidates;
  out["fallback_queries"] = st.fallback_queries;
  return out;
}

void encode_rows(const std::string& dtype, std::uintptr_t src, int64_t n, int64_t dim,
                 std::uintptr_t dst, std::uintptr_t scales, std::uintptr_t norms,
                 std::uintptr_t errors, int num_threads) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::encode_rows(t, ptr<const float>(src), n, dim, ptr<void>(dst), ptr<float>(scales),
                     ptr<float>(norms), ptr<float>(errors), num_threads);
}

void pack_rows(const std::string& dtype, std::uintptr_t src, int64_t n, int64_t dim,
               std::uintptr_t packed, int64_t row_offset) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::pack_rows(t, ptr<const void>(src), n, dim, ptr<void>(packed), row_offset);
}

void unpack_rows(const std::string& dtype, std::uintptr_t packed, int64_t row_begin, int64_t n,
                 int64_t dim, std::uintptr_t dst) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::unpack_rows(t, ptr<const void>(packed), row_begin, n, dim, ptr<void>(dst));
}

void gather_rows_f32(const std::string& dtype, std::uintptr_t packed, std::uintptr_t rows,
                     int64_t n, int64_t dim, std::uintptr_t scales, std::uintptr_t dst) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::gather_rows_f32(t, ptr<const void>(packed), ptr<const int64_t>(rows), n, dim,
                         ptr<const float>(scales), ptr<float>(dst));
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (auto isa : pyrag::supported_isas()) out.emplace_back(pyrag::isa_name(isa));
  return out;
}

// Loss kernels (lsr.h, marginal_nll.h): a float and a double entry point each; a mask
// address of 0 means "no mask".
template <typename T>
void lsr_weights(std::uintptr_t lm_scores, std::uintptr_t mask, int64_t rows, int64_t k, double tau,
                 int num_threads, std::uintptr_t out) {
  py::gil_scoped_release release;
  pyrag::lsr_weights<T>(ptr<const T>(lm_scores), ptr<const uint8_t>(mask), rows, k, T(tau),
                        num_threads, ptr<T>(out));
}

template <typename T>
void lsr_kl(std::uintptr_t retriever_scores, std::uintptr_t lm_scores, std::uintptr_t mask,
            int64_t rows, int64_t k, double tau_retriever, double tau_lm, bool reverse,
            int num_threads, std::uintptr_t out) {
  py::gil_scoped_release release;
  pyrag::lsr_kl<T>(ptr<const T>(retriever_scores), ptr<const T>(lm_scores),
                   ptr<const uint8_t>(mask), rows, k, T(tau_retriever), T(tau_lm), reverse,
                   num_threads, ptr<T>(out));
}

template <typename T>
void lsr_kl_backward(std::uintptr_t grad, std::uintptr_t retriever_scores, std::uintptr_t lm_scores,
                     std::uintptr_t mask, int64_t rows, int64_t k, double tau_retriever,
                     double tau_lm, bool reverse, int num_threads, std::uintptr_t grad_scores) {
  py::gil_scoped_release release;
  pyrag::lsr_kl_backward<T>(ptr<const T>(grad), ptr<const T>(retriever_scores),
                            ptr<const T>(lm_scores), ptr<const uint8_t>(mask), rows, k,
                            T(tau_retriever), T(tau_lm), reverse, num_threads, ptr<T>(grad_scores));
}

template <typename T>
void marginal_nll(std::uintptr_t retriever_scores, std::uintptr_t lm_logprobs, std::uintptr_t mask,
                  std::uintptr_t token_mask, int64_t rows, int64_t k, int64_t tokens, double tau,
                  int num_threads, std::uintptr_t out) {
  py::gil_scoped_release release;
  pyrag::marginal_nll<T>(ptr<const T>(retriever_scores), ptr<const T>(lm_logprobs),
                         ptr<const uint8_t>(mask), ptr<const uint8_t>(token_mask), rows, k, tokens,
                         T(tau), num_threads, ptr<T>(out));
}

template <typename T>
void marginal_nll_backward(std::uintptr_t grad, std::uintptr_t retriever_scores,
                           std::uintptr_t lm_logprobs, std::uintptr_t mask,
                           std::uintptr_t token_mask, int64_t rows, int64_t k, int64_t tokens,
                           double tau, int num_threads, std::uintptr_t grad_scores,
                           std::uintptr_t grad_lm) {
  py::gil_scoped_release release;
  pyrag::marginal_nll_backward<T>(ptr<const T>(grad), ptr<const T>(retriever_scores),
                                  ptr<const T>(lm_logprobs), ptr<const uint8_t>(mask),
                                  ptr<const uint8_t>(token_mask), rows, k, tokens, T(tau),
                                  num_threads, ptr<T>(grad_scores), ptr<T>(grad_lm));
}

template <typename T>
void def_loss_kernels(py::module_& m, const std::string& suffix) {
  m.def(("lsr_weights_" + suffix).c_str(), &lsr_weights<T>, py::arg("lm_scores"), py::arg("mask"),
        py::arg("rows"), py::arg("k"), py::arg("tau"), py::arg("num_threads"), py::arg("out"));
  m.def(("lsr_kl_" + suffix).c_str(), &lsr_kl<T>, py::arg("retriever_scores"), py::arg("lm_scores"),
        py::arg("mask"), py::arg("rows"), py::arg("k"), py::arg("tau_retriever"), py::arg("tau_lm"),
        py::arg("reverse"), py::arg("num_threads"), py::arg("out"));
  m.def(("lsr_kl_backward_" + suffix).c_str(), &lsr_kl_backward<T>, py::arg("grad"),
        py::arg("retriever_scores"), py::arg("lm_scores"), py::arg("mask"), py::arg("rows"),
        py::arg("k"), py::arg("tau_retriever"), py::arg("tau_lm"), py::arg("reverse"),
        py::arg("num_threads"), py::arg("grad_scores"));
  m.def(("marginal_nll_" + suffix).c_str(), &marginal_nll<T>, py::arg("retriever_scores"),
        py::arg("lm_logprobs"), py::arg("mask"), py::arg("token_mask"), py::arg("rows"),
        py::arg("k"), py::arg("tokens"), py::arg("tau"), py::arg("num_threads"), py::arg("out"));
  m.def(("marginal_nll_backward_" + suffix).c_str(), &marginal_nll_backward<T>, py::arg("grad"),
        py::arg("retriever_scores"), py::arg("lm_logprobs"), py::arg("mask"), py::arg("token_mask"),
        py::arg("rows"), py::arg("k"), py::arg("tokens"), py::arg("tau"), py::arg("num_threads"),
        py::arg("grad_scores"), py::arg("grad_lm"));
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyrag compiled kernels (CPU; CUDA when built with it)";
  py::register_exception<std::domain_error>(m, "NonFiniteError", PyExc_ValueError);

  m.def(
      "cpu_isa", [] { return std::string(pyrag::isa_name(pyrag::active_isa())); },
      "The CPU instruction set the kernels use.");
  m.def("supported_cpu_isas", &supported_isas, "Every CPU path this machine can run.");
  m.def(
      "cpu_kernel_isa",
      [](const std::string& dtype) {
        return std::string(
            pyrag::isa_name(pyrag::kernel_level(pyrag::active_isa(), pyrag::parse_dtype(dtype))));
      },
      py::arg("dtype"),
      "The level whose scan kernel runs for a corpus dtype on the active path (a level "
      "without one falls back to the next lower, e.g. int8 on avx512bf16 runs avx512vnni).");
  m.def("set_cpu_isa", &pyrag::set_active_isa, py::arg("name"),
        "Force a CPU path (tests and benchmarks); raises ValueError if unsupported.");

  // Fused top-k (csrc/cpu/topk_scores.h); the Python side is pyrag/backends/cpu.py. tie_keys:
  // 0, or the address of [num_rows] int64 keys that break ties (smaller first).
  m.def("topk_scores", &topk_scores, py::arg("dtype"), py::arg("queries"), py::arg("num_queries"),
        py::arg("corpus"), py::arg("packed"), py::arg("num_rows"), py::arg("dim"),
        py::arg("scales"), py::arg("k"), py::arg("num_threads"), py::arg("out_scores"),
        py::arg("out_ids"), py::arg("tie_keys") = 0);
  m.def("topk_scores_exact", &topk_scores_exact, py::arg("dtype"), py::arg("queries"),
        py::arg("num_queries"), py::arg("corpus"), py::arg("num_rows"), py::arg("dim"),
        py::arg("scales"), py::arg("originals_fd"), py::arg("originals_offset"),
        py::arg("max_norm"), py::arg("max_error"), py::arg("k"), py::arg("num_threads"),
        py::arg("out_scores"), py::arg("out_ids"), py::arg("tie_keys") = 0);
  m.def("encode_rows", &encode_rows, py::arg("dtype"), py::arg("src"), py::arg("n"), py::arg("dim"),
        py::arg("dst"), py::arg("scales"), py::arg("norms"), py::arg("errors"),
        py::arg("num_threads"));
  m.def("pack_rows", &pack_rows, py::arg("dtype"), py::arg("src"), py::arg("n"), py::arg("dim"),
        py::arg("packed"), py::arg("row_offset"));
  m.def("unpack_rows", &unpack_rows, py::arg("dtype"), py::arg("packed"), py::arg("row_begin"),
        py::arg("n"), py::arg("dim"), py::arg("dst"));
  m.def("gather_rows_f32", &gather_rows_f32, py::arg("dtype"), py::arg("packed"), py::arg("rows"),
        py::arg("n"), py::arg("dim"), py::arg("scales"), py::arg("dst"),
        "Rows of a packed buffer as float32, dequantised as the index scores them.");
  m.def(
      "packed_block_bytes",
      [](const std::string& dtype, int64_t dim) {
        return pyrag::block_bytes(pyrag::parse_dtype(dtype), dim);
      },
      py::arg("dtype"), py::arg("dim"), "Bytes of one packed block of 16 rows.");
  m.attr("PACKED_BLOCK_ROWS") = pyrag::kBlockRows;
  m.def(
      "release_file_pages",
      [](std::uintptr_t begin, int64_t nbytes) {
        pyrag::release_file_pages(ptr<const void>(begin), nbytes);
      },
      py::arg("begin"), py::arg("nbytes"),
      "madvise(DONTNEED) the whole pages of a read-only FILE mapping (never anonymous memory).");

  def_loss_kernels<float>(m, "f32");
  def_loss_kernels<double>(m, "f64");
}
