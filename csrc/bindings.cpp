// pybind11 module pyrag._C. It takes raw addresses and sizes (Python checks dtypes,
// devices and contiguity in pyrag/ops.py) so that it never links libtorch and one build
// serves every torch version. Kernels run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/isa.h"
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
}
