// The bfloat16 tensor-core kernels of pyrag::topk_scores (see topk_scores.cu), in a
// translation unit of their own so that they compile in parallel with the others.
#include "cuda/topk_scores.cuh"

namespace pyrag::cuda::topk {

template void run_topk<MmaScorer<Bf16>>(const TopkArgs&, const ScanParams&, int);

}  // namespace pyrag::cuda::topk
