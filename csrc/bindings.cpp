// pybind11 module pyrag._C. It takes raw addresses and sizes (Python checks dtypes,
// devices and contiguity in pyrag/ops.py) so that it never links libtorch and one build
// serves every torch version. Kernels run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/lsr.h"
#include "cpu/marginal_nll.h"
#include "cpu/topk_scores.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void topk_scores_f32(std::uintptr_t queries, int64_t num_queries, std::uintptr_t corpus,
                     int64_t num_rows, int64_t dim, int64_t k, int num_threads,
                     std::uintptr_t out_scores, std::uintptr_t out_ids) {
  py::gil_scoped_release release;
  pyrag::topk_scores_f32(ptr<const float>(queries), num_queries, ptr<const float>(corpus),
                         num_rows, dim, k, num_threads, ptr<float>(out_scores),
                         ptr<int64_t>(out_ids));
}

// Loss kernels (lsr.h, marginal_nll.h): a float and a double entry point each; a mask
// address of 0 means "no mask".
template <typename T>
void lsr_weights(std::uintptr_t lm_scores, std::uintptr_t mask, int64_t rows, int64_t k,
                 double tau, int num_threads, std::uintptr_t out) {
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
void lsr_kl_backward(std::uintptr_t grad, std::uintptr_t retriever_scores,
                     std::uintptr_t lm_scores, std::uintptr_t mask, int64_t rows, int64_t k,
                     double tau_retriever, double tau_lm, bool reverse, int num_threads,
                     std::uintptr_t grad_scores) {
  py::gil_scoped_release release;
  pyrag::lsr_kl_backward<T>(ptr<const T>(grad), ptr<const T>(retriever_scores),
                            ptr<const T>(lm_scores), ptr<const uint8_t>(mask), rows, k,
                            T(tau_retriever), T(tau_lm), reverse, num_threads,
                            ptr<T>(grad_scores));
}

template <typename T>
void marginal_nll(std::uintptr_t retriever_scores, std::uintptr_t lm_logprobs,
                  std::uintptr_t mask, std::uintptr_t token_mask, int64_t rows, int64_t k,
                  int64_t tokens, double tau, int num_threads, std::uintptr_t out) {
  py::gil_scoped_release release;
  pyrag::marginal_nll<T>(ptr<const T>(retriever_scores), ptr<const T>(lm_logprobs),
                         ptr<const uint8_t>(mask), ptr<const uint8_t>(token_mask), rows, k,
                         tokens, T(tau), num_threads, ptr<T>(out));
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
  m.def(("lsr_weights_" + suffix).c_str(), &lsr_weights<T>, py::arg("lm_scores"),
        py::arg("mask"), py::arg("rows"), py::arg("k"), py::arg("tau"), py::arg("num_threads"),
        py::arg("out"));
  m.def(("lsr_kl_" + suffix).c_str(), &lsr_kl<T>, py::arg("retriever_scores"),
        py::arg("lm_scores"), py::arg("mask"), py::arg("rows"), py::arg("k"),
        py::arg("tau_retriever"), py::arg("tau_lm"), py::arg("reverse"), py::arg("num_threads"),
        py::arg("out"));
  m.def(("lsr_kl_backward_" + suffix).c_str(), &lsr_kl_backward<T>, py::arg("grad"),
        py::arg("retriever_scores"), py::arg("lm_scores"), py::arg("mask"), py::arg("rows"),
        py::arg("k"), py::arg("tau_retriever"), py::arg("tau_lm"), py::arg("reverse"),
        py::arg("num_threads"), py::arg("grad_scores"));
  m.def(("marginal_nll_" + suffix).c_str(), &marginal_nll<T>, py::arg("retriever_scores"),
        py::arg("lm_logprobs"), py::arg("mask"), py::arg("token_mask"), py::arg("rows"),
        py::arg("k"), py::arg("tokens"), py::arg("tau"), py::arg("num_threads"), py::arg("out"));
  m.def(("marginal_nll_backward_" + suffix).c_str(), &marginal_nll_backward<T>,
        py::arg("grad"), py::arg("retriever_scores"), py::arg("lm_logprobs"), py::arg("mask"),
        py::arg("token_mask"), py::arg("rows"), py::arg("k"), py::arg("tokens"), py::arg("tau"),
        py::arg("num_threads"), py::arg("grad_scores"), py::arg("grad_lm"));
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

  m.def("topk_scores_f32", &topk_scores_f32, py::arg("queries"), py::arg("num_queries"),
        py::arg("corpus"), py::arg("num_rows"), py::arg("dim"), py::arg("k"),
        py::arg("num_threads"), py::arg("out_scores"), py::arg("out_ids"));

  def_loss_kernels<float>(m, "f32");
  def_loss_kernels<double>(m, "f64");
}
