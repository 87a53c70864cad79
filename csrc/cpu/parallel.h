// Minimal fork-join over std::thread: the extension must not link libtorch or bring
// an OpenMP runtime of its own (torch ships one; two in one process fight).
#pragma once
#include <exception>
#include <functional>
#include <thread>
#include <vector>

namespace pyrag {

// Calls fn(t) for t in [0, num_tasks) on num_tasks threads (task 0 on the caller) and
// rethrows the first exception.
inline void parallel_tasks(int num_tasks, const std::function<void(int)>& fn) {
  if (num_tasks <= 1) {
    fn(0);
    return;
  }
  std::vector<std::exception_ptr> errors(num_tasks);
  std::vector<std::thread> workers;
  workers.reserve(num_tasks - 1);
  for (int t = 1; t < num_tasks; ++t) {
    workers.emplace_back([&, t] {
      try {
        fn(t);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  try {
    fn(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& w : workers) w.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace pyrag
