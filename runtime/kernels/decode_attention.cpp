// Paged attention of decode rows (one new token per request) over the "vec" KV layout of
// vLLM's CPU attention (runtime/kernels/vllm_kernels.py): K [pages, kv_heads, head_dim,
// page_size] (transposed inside a page), V [pages, kv_heads, page_size, head_dim], fp32.
// One work item per (request, kv head, split of its context), on torch's intra-op OpenMP
// threads (built with -fopenmp but linked without libgomp: GOMP_* resolve to torch's own);
// an item reads each page once for every query head of its GQA group, with an online softmax,
// and prefetches the next page, which no hardware prefetcher can guess; splits merge at the end.
// docs/kernels.md, "Decode attention".
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int kMaxGroup = 16;
constexpr float kNoScore = -1e30f;  // finite: built with -ffast-math

struct Partial {
  float* m;    // [items, G]
  float* l;    // [items, G]
  float* acc;  // [items, G, D]
};

template <int D, int P>
void attend_split(const float* q, const float* k_cache, const float* v_cache, const int* pages,
                  int seq_len, int first_page, int end_page, int G, int64_t page_stride,
                  float scale, float* m, float* l, float* acc) {
  float scores[kMaxGroup * P];
  float qs[kMaxGroup * D];
  for (int g = 0; g < G; ++g) {
    m[g] = kNoScore;
    l[g] = 0.f;
    for (int d = 0; d < D; ++d) {
      qs[g * D + d] = q[g * D + d] * scale;
      acc[g * D + d] = 0.f;
    }
  }
  for (int i = first_page; i < end_page; ++i) {
    const int64_t offset = static_cast<int64_t>(pages[i]) * page_stride;
    const float* __restrict__ kb = k_cache + offset;  // [D, P]
    const float* __restrict__ vb = v_cache + offset;  // [P, D]
    const int n = std::min(P, seq_len - i * P);
    if (i + 1 < end_page) {  // the next page is elsewhere in memory: no hardware prefetcher finds it
      const int64_t next = static_cast<int64_t>(pages[i + 1]) * page_stride;
      for (int line = 0; line < D * P; line += 16) {
        __builtin_prefetch(k_cache + next + line);
        __builtin_prefetch(v_cache + next + line);
      }
    }
    for (int g = 0; g < G; ++g) {
      float* __restrict__ s = scores + g * P;
      const float* __restrict__ qg = qs + g * D;
      for (int t = 0; t < P; ++t) s[t] = 0.f;
      for (int d = 0; d < D; ++d) {
        const float qd = qg[d];
        const float* __restrict__ krow = kb + d * P;
        for (int t = 0; t < P; ++t) s[t] += qd * krow[t];
      }
      float top = m[g];
      for (int t = 0; t < n; ++t) top = std::max(top, s[t]);
      const float rescale = std::exp(m[g] - top);
      float sum = 0.f;
      for (int t = 0; t < n; ++t) {
        s[t] = std::exp(s[t] - top);
        sum += s[t];
      }
      l[g] = l[g] * rescale + sum;
      m[g] = top;
      float* __restrict__ a = acc + g * D;
      for (int d = 0; d < D; ++d) a[d] *= rescale;
      for (int t = 0; t < n; ++t) {
        const float p = s[t];
        const float* __restrict__ vrow = vb + t * D;
        for (int d = 0; d < D; ++d) a[d] += p * vrow[d];
      }
    }
  }
}

}  // namespace

// q [R, H, D]; block_table [R, max_pages] int32; seq_lens [R] int32 -> out [R, H, D].
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_table, torch::Tensor seq_lens, double scale,
                               int64_t num_threads) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat && k_cache.scalar_type() == torch::kFloat,
              "decode_attention takes fp32");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              block_table.is_contiguous() && seq_lens.is_contiguous());
  const int R = q.size(0), H = q.size(1), D = q.size(2);
  const int KV = k_cache.size(1), P = k_cache.size(2);
  const int G = H / KV;
  TORCH_CHECK(H % KV == 0 && G <= kMaxGroup);
  TORCH_CHECK(k_cache.size(3) == D && k_cache.sizes() == v_cache.sizes());
  const int max_pages = block_table.size(1);
  const int* lens = seq_lens.data_ptr<int>();
  int longest = 0;
  for (int r = 0; r < R; ++r) longest = std::max(longest, lens[r]);
  const int longest_pages = (longest + P - 1) / P;
  // enough work items for every thread, each split at least 8 pages long
  using Attend = decltype(&attend_split<64, 32>);
  const Attend attend = P != 32 ? nullptr
                        : D == 64 ? attend_split<64, 32>
                        : D == 128 ? attend_split<128, 32>
                                   : nullptr;
  TORCH_CHECK(attend != nullptr, "decode_attention: head size ", D, " with pages of ", P);
  const int want = std::max<int64_t>(1, (4 * num_threads + R * KV - 1) / (R * KV));
  const int splits = std::max(1, std::min(want, longest_pages / 8));
  const int pages_per_split = (longest_pages + splits - 1) / splits;
  const int64_t items = static_cast<int64_t>(R) * KV * splits;
  std::vector<float> m(items * G), l(items * G), acc(items * G * D);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int* bt = block_table.data_ptr<int>();
  const int64_t page_stride = static_cast<int64_t>(D) * P;  // one (page, kv head) block
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int split = item % splits;
      const int kvh = (item / splits) % KV;
      const int r = item / (splits * KV);
      const int num_pages = (lens[r] + P - 1) / P;
      const int first = std::min(split * pages_per_split, num_pages);
      const int last = std::min(first + pages_per_split, num_pages);
      // pages of this kv head: block b's (b, kvh) block starts at (b * KV + kvh) * D * P
      std::vector<int> blocks(last - first);
      for (int i = first; i < last; ++i) blocks[i - first] = bt[r * max_pages + i] * KV + kvh;
      attend(qp + (static_cast<int64_t>(r) * H + kvh * G) * D, kp, vp, blocks.data() - first,
             lens[r], first, last, G, page_stride, static_cast<float>(scale),
             m.data() + item * G, l.data() + item * G, acc.data() + item * G * D);
    }
  });
  auto out = torch::empty_like(q);
  float* op = out.data_ptr<float>();
  for (int r = 0; r < R; ++r) {
    for (int kvh = 0; kvh < KV; ++kvh) {
      const int64_t base = (static_cast<int64_t>(r) * KV + kvh) * splits;
      for (int g = 0; g < G; ++g) {
        float top = kNoScore;
        for (int s = 0; s < splits; ++s) top = std::max(top, m[(base + s) * G + g]);
        float total = 0.f;
        float* o = op + (static_cast<int64_t>(r) * H + kvh * G + g) * D;
        for (int d = 0; d < D; ++d) o[d] = 0.f;
        for (int s = 0; s < splits; ++s) {
          const int64_t it = base + s;
          const float w = l[it * G + g] > 0.f ? std::exp(m[it * G + g] - top) : 0.f;
          total += l[it * G + g] * w;
          const float* a = acc.data() + (it * G + g) * D;
          for (int d = 0; d < D; ++d) o[d] += a[d] * w;
        }
        for (int d = 0; d < D; ++d) o[d] /= total;
      }
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("decode_attention", &decode_attention, "paged attention of decode rows");
}
