// pybind11 module for the CUDA kernels of csrc/cuda, compiled twice:
//   pyrag._cuda      the kernels built by nvcc; addresses are device pointers and `stream`
//                    is a cudaStream_t (torch.cuda.current_stream().cuda_stream);
//   pyrag._cuda_emu  the same kernels built by g++ on the host emulation
//                    (PYRAG_CUDA_EMU); addresses are host pointers, `stream` is ignored.
// Like pyrag._C it takes raw addresses and never links libtorch; Python
// (pyrag/ops/cuda_backend.py) checks dtypes, devices and contiguity. Kernels run with
// the GIL released.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/api.h"
#if defined(PYRAG_CUDA_EMU)
#include "cuda/emu/runtime.h"
#endif

#ifndef PYRAG_CUDA_MODULE_NAME
#error "define PYRAG_CUDA_MODULE_NAME (_cuda or _cuda_emu)"
#endif

namespace py = pybind11;
namespace pc = pyrag::cuda;

namespace {

template <class T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void* stream_of(std::uintptr_t stream) { return reinterpret_cast<void*>(stream); }

void topk_scores(std::uintptr_t queries, std::int64_t num_queries, std::uintptr_t corpus,
                 int corpus_type, std::int64_t num_rows, std::int64_t dim, std::int64_t k,
                 std::uintptr_t scales, bool split_queries, std::uintptr_t out_scores,
                 std::uintptr_t out_ids, std::uintptr_t nonfinite, int num_warps, int splits,
                 std::uintptr_t workspace_scores, std::uintptr_t workspace_ids,
                 std::uintptr_t stream) {
  if (corpus_type < 0 || corpus_type > 2)
    throw std::invalid_argument("topk_scores: unknown corpus_type");
  pc::TopkArgs a;
  a.queries = ptr<const float>(queries);
  a.num_queries = num_queries;
  a.corpus = ptr<const void>(corpus);
  a.corpus_type = static_cast<pc::CorpusType>(corpus_type);
  a.num_rows = num_rows;
  a.dim = dim;
  a.k = k;
  a.scales = ptr<const float>(scales);
  a.split_queries = split_queries;
  a.out_scores = ptr<float>(out_scores);
  a.out_ids = ptr<std::int64_t>(out_ids);
  a.nonfinite = ptr<int>(nonfinite);
  a.num_warps = num_warps;
  a.splits = splits;
  a.workspace_scores = ptr<float>(workspace_scores);
  a.workspace_ids = ptr<int>(workspace_ids);
  a.stream = stream_of(stream);
  py::gil_scoped_release release;
  pc::topk_scores(a);
}

template <class T>
void def_lsr(py::module_& m, const char* suffix) {
  using std::string;
  m.def(("lsr_weights_" + string(suffix)).c_str(),
        [](std::uintptr_t lm, std::uintptr_t mask, std::int64_t rows, std::int64_t cols, double tau,
           std::uintptr_t out, int num_warps, std::uintptr_t stream) {
          py::gil_scoped_release release;
          pc::lsr_weights<T>(ptr<const T>(lm), ptr<const bool>(mask), rows, cols, tau, ptr<T>(out),
                             num_warps, stream_of(stream));
        },
        py::arg("lm_scores"), py::arg("mask"), py::arg("rows"), py::arg("cols"), py::arg("tau"),
        py::arg("out"), py::arg("num_warps"), py::arg("stream"));
  m.def(("lsr_kl_" + string(suffix)).c_str(),
        [](std::uintptr_t r, std::uintptr_t l, std::uintptr_t mask, std::int64_t rows,
           std::int64_t cols, double tau_r, double tau_l, bool reverse, std::uintptr_t out,
           int num_warps, std::uintptr_t stream) {
          py::gil_scoped_release release;
          pc::lsr_kl<T>(ptr<const T>(r), ptr<const T>(l), ptr<const bool>(mask), rows, cols, tau_r,
                        tau_l, reverse, ptr<T>(out), num_warps, stream_of(stream));
        },
        py::arg("retriever_scores"), py::arg("lm_scores"), py::arg("mask"), py::arg("rows"),
        py::arg("cols"), py::arg("tau_retriever"), py::arg("tau_lm"), py::arg("reverse"),
        py::arg("out"), py::arg("num_warps"), py::arg("stream"));
  m.def(("lsr_kl_backward_" + string(suffix)).c_str(),
        [](std::uintptr_t grad, std::uintptr_t r, std::uintptr_t l, std::uintptr_t mask,
           std::int64_t rows, std::int64_t cols, double tau_r, double tau_l, bool reverse,
           std::uintptr_t out, int num_warps, std::uintptr_t stream) {
          py::gil_scoped_release release;
          pc::lsr_kl_backward<T>(ptr<const T>(grad), ptr<const T>(r), ptr<const T>(l),
                                 ptr<const bool>(mask), rows, cols, tau_r, tau_l, reverse,
                                 ptr<T>(out), num_warps, stream_of(stream));
        },
        py::arg("grad"), py::arg("retriever_scores"), py::arg("lm_scores"), py::arg("mask"),
        py::arg("rows"), py::arg("cols"), py::arg("tau_retriever"), py::arg("tau_lm"),
        py::arg("reverse"), py::arg("out"), py::arg("num_warps"), py::arg("stream"));
}

}  // namespace

#if defined(PYRAG_CUDA_EMU)
void register_emulator_selftests(py::module_& m);  // emu/selftest.cpp
#endif

PYBIND11_MODULE(PYRAG_CUDA_MODULE_NAME, m) {
#if defined(PYRAG_CUDA_EMU)
  m.doc() = "pyrag's CUDA kernels on the host emulation of the CUDA execution model (CPU pointers)";
  m.attr("emulated") = true;
  py::register_exception<pyrag::emu::EmulationError>(m, "EmulationError", PyExc_RuntimeError);
  register_emulator_selftests(m);
#else
  m.doc() = "pyrag's CUDA kernels (device pointers, cudaStream_t)";
  m.attr("emulated") = false;
#endif
  py::register_exception<pc::CudaError>(m, "CudaError", PyExc_RuntimeError);
  m.attr("max_k") = pc::kMaxTopk;

  m.def(
      "topk_plan", &pc::topk_plan, py::arg("num_queries"), py::arg("num_rows"), py::arg("k"),
      py::arg("num_warps"), py::arg("num_sms"), py::arg("requested"),
      "Corpus splits for topk_scores: `requested` (> 0) as the tiling allows, or 0 for automatic.");
  m.def("topk_scores", &topk_scores, py::arg("queries"), py::arg("num_queries"), py::arg("corpus"),
        py::arg("corpus_type"), py::arg("num_rows"), py::arg("dim"), py::arg("k"),
        py::arg("scales"), py::arg("split_queries"), py::arg("out_scores"), py::arg("out_ids"),
        py::arg("nonfinite"), py::arg("num_warps"), py::arg("splits"), py::arg("workspace_scores"),
        py::arg("workspace_ids"), py::arg("stream"));
  m.def(
      "topk_scan_smem_bytes",
      [](int corpus_type, std::int64_t k, int num_warps) {
        return pc::topk_scan_smem_bytes(static_cast<pc::CorpusType>(corpus_type), k, num_warps);
      },
      py::arg("corpus_type"), py::arg("k"), py::arg("num_warps"));
  m.def("topk_merge_smem_bytes", &pc::topk_merge_smem_bytes, py::arg("k"), py::arg("num_warps"));
  def_lsr<float>(m, "f32");
  def_lsr<double>(m, "f64");
}
