// pybind11 module pyrag._C. It takes raw addresses and sizes (Python checks dtypes,
// devices and contiguity in pyrag/ops.py) so that it never links libtorch and one build
// serves every torch version. Kernels run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/encode.h"
#include "cpu/packed_layout.h"
#include "cpu/topk_scores.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

pyrag::Corpus corpus_of(const std::string& dtype, std::uintptr_t data, bool packed, int64_t num_rows,
                        int64_t dim, std::uintptr_t scales) {
  return pyrag::Corpus{pyrag::parse_dtype(dtype), packed, ptr<const void>(data), num_rows, dim,
                       ptr<const float>(scales)};
}

void topk_scores(const std::string& dtype, std::uintptr_t queries, int64_t num_queries,
                 std::uintptr_t corpus, bool packed, int64_t num_rows, int64_t dim,
                 std::uintptr_t scales, int64_t k, int num_threads, std::uintptr_t out_scores,
                 std::uintptr_t out_ids) {
  const auto c = corpus_of(dtype, corpus, packed, num_rows, dim, scales);
  py::gil_scoped_release release;
  pyrag::topk_scores(ptr<const float>(queries), num_queries, c, k, num_threads,
                     ptr<float>(out_scores), ptr<int64_t>(out_ids));
}

py::dict topk_scores_exact(const std::string& dtype, std::uintptr_t queries, int64_t num_queries,
                           std::uintptr_t corpus, int64_t num_rows, int64_t dim, std::uintptr_t scales,
                           int originals_fd, int64_t originals_offset, double max_norm,
                           double max_error, int64_t k, int num_threads, std::uintptr_t out_scores,
                           std::uintptr_t out_ids) {
  const auto c = corpus_of(dtype, corpus, true, num_rows, dim, scales);
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

void encode_rows(const std::string& dtype, std::uintptr_t src, int64_t n, int64_t dim, std::uintptr_t dst,
                 std::uintptr_t scales, std::uintptr_t norms, std::uintptr_t errors, int num_threads) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::encode_rows(t, ptr<const float>(src), n, dim, ptr<void>(dst), ptr<float>(scales),
                     ptr<float>(norms), ptr<float>(errors), num_threads);
}

void pack_rows(const std::string& dtype, std::uintptr_t src, int64_t n, int64_t dim, std::uintptr_t packed,
               int64_t row_offset) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::pack_rows(t, ptr<const void>(src), n, dim, ptr<void>(packed), row_offset);
}

void unpack_rows(const std::string& dtype, std::uintptr_t packed, int64_t row_begin, int64_t n, int64_t dim,
                 std::uintptr_t dst) {
  const auto t = pyrag::parse_dtype(dtype);
  py::gil_scoped_release release;
  pyrag::unpack_rows(t, ptr<const void>(packed), row_begin, n, dim, ptr<void>(dst));
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (auto isa : pyrag::supported_isas()) out.emplace_back(pyrag::isa_name(isa));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyrag compiled kernels (CPU; CUDA when built with it)";
  py::register_exception<std::domain_error>(m, "NonFiniteError", PyExc_ValueError);

  m.def("cpu_isa", [] { return std::string(pyrag::isa_name(pyrag::active_isa())); },
        "The CPU instruction set the kernels use.");
  m.def("supported_cpu_isas", &supported_isas, "Every CPU path this machine can run.");
  m.def("set_cpu_isa", &pyrag::set_active_isa, py::arg("name"),
        "Force a CPU path (tests and benchmarks); raises ValueError if unsupported.");

  // Fused top-k (csrc/cpu/topk_scores.h); the Python side is pyrag/ops/topk_scores.py.
  m.def("topk_scores", &topk_scores, py::arg("dtype"), py::arg("queries"), py::arg("num_queries"),
        py::arg("corpus"), py::arg("packed"), py::arg("num_rows"), py::arg("dim"), py::arg("scales"),
        py::arg("k"), py::arg("num_threads"), py::arg("out_scores"), py::arg("out_ids"));
  m.def("topk_scores_exact", &topk_scores_exact, py::arg("dtype"), py::arg("queries"),
        py::arg("num_queries"), py::arg("corpus"), py::arg("num_rows"), py::arg("dim"),
        py::arg("scales"), py::arg("originals_fd"), py::arg("originals_offset"), py::arg("max_norm"),
        py::arg("max_error"), py::arg("k"), py::arg("num_threads"), py::arg("out_scores"),
        py::arg("out_ids"));
  m.def("encode_rows", &encode_rows, py::arg("dtype"), py::arg("src"), py::arg("n"), py::arg("dim"),
        py::arg("dst"), py::arg("scales"), py::arg("norms"), py::arg("errors"), py::arg("num_threads"));
  m.def("pack_rows", &pack_rows, py::arg("dtype"), py::arg("src"), py::arg("n"), py::arg("dim"),
        py::arg("packed"), py::arg("row_offset"));
  m.def("unpack_rows", &unpack_rows, py::arg("dtype"), py::arg("packed"), py::arg("row_begin"),
        py::arg("n"), py::arg("dim"), py::arg("dst"));
  m.def("packed_block_bytes", [](const std::string& dtype, int64_t dim) {
    return pyrag::block_bytes(pyrag::parse_dtype(dtype), dim);
  }, py::arg("dtype"), py::arg("dim"), "Bytes of one packed block of 16 rows.");
  m.attr("PACKED_BLOCK_ROWS") = pyrag::kBlockRows;
  m.def("release_file_pages", [](std::uintptr_t begin, int64_t nbytes) {
    pyrag::release_file_pages(ptr<const void>(begin), nbytes);
  }, py::arg("begin"), py::arg("nbytes"),
        "madvise(DONTNEED) the whole pages of a read-only FILE mapping (never anonymous memory).");
}
