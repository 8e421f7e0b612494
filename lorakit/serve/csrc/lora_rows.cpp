// Per-row LoRA for decode steps on CPU (the BGMV idea of Punica / S-LoRA): every row of the
// batch reads its own slot's factors in place, no gathered copies. bf16 storage, fp32 math.
//
//   shrink:     h[n, :r]  = A[slot[n], :r, :] @ x[n, :]                       (fp32 out)
//   expand_add: out[n, :] += scale[slot[n]] * (h[n, :r] @ Bt[slot[n], :r, :])  (in place)
//
// Rows with slot < 0 (base only) are skipped. Built by lorakit/serve/kernels.py with
// torch.utils.cpp_extension; tested against the batched-matmul path in tests/test_serve_fastpath.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even (inputs here are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

const uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }

void check_bf16(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, " must be bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

void check_slots(const torch::Tensor& slot, int64_t n_slots) {  // before any parallel region
  const int64_t* sl = slot.data_ptr<int64_t>();
  for (int64_t i = 0; i < slot.numel(); ++i)
    TORCH_CHECK(sl[i] < n_slots, "slot ", sl[i], " out of range for ", n_slots, " slots");
}

}  // namespace

torch::Tensor shrink(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& slot, int64_t r) {
  check_bf16(x, "x");
  check_bf16(a, "A");
  TORCH_CHECK(x.dim() == 2 && a.dim() == 3 && a.size(2) == x.size(1) && r <= a.size(1),
              "shrink: x [N, in] and A [S, r_max, in] with r <= r_max, got ", x.sizes(), " and ", a.sizes());
  TORCH_CHECK(slot.scalar_type() == at::kLong && slot.numel() == x.size(0), "slot must be int64 [N]");
  const int64_t n = x.size(0), in = x.size(1), rmax = a.size(1);
  check_slots(slot, a.size(0));
  auto xc = x.contiguous();
  auto ac = a.contiguous();
  auto h = torch::zeros({n, r}, x.options().dtype(torch::kFloat32));
  const uint16_t* xp = bits(xc);
  const uint16_t* ap = bits(ac);
  const int64_t* sl = slot.data_ptr<int64_t>();
  float* hp = h.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(in);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = sl[row];
      if (s < 0) continue;
      const uint16_t* xr = xp + row * in;
      for (int64_t i = 0; i < in; ++i) xf[i] = bf16_to_f32(xr[i]);
      for (int64_t k = 0; k < r; ++k) {
        const uint16_t* arow = ap + (s * rmax + k) * in;
        float acc[16] = {0.f};  // 16 partial sums: one vector register, vectorizable
        int64_t i = 0;
        for (; i + 16 <= in; i += 16)
          for (int l = 0; l < 16; ++l) acc[l] += bf16_to_f32(arow[i + l]) * xf[i + l];
        float total = 0.f;
        for (int l = 0; l < 16; ++l) total += acc[l];
        for (; i < in; ++i) total += bf16_to_f32(arow[i]) * xf[i];
        hp[row * r + k] = total;
      }
    }
  });
  return h;
}

void expand_add(torch::Tensor& out, const torch::Tensor& h, const torch::Tensor& bt, const torch::Tensor& slot,
                const torch::Tensor& scale, int64_t r) {
  check_bf16(out, "out");
  check_bf16(bt, "Bt");
  TORCH_CHECK(out.dim() == 2 && out.stride(1) == 1, "out must be [N, out] with contiguous rows");
  TORCH_CHECK(bt.dim() == 3 && bt.size(2) == out.size(1) && r <= bt.size(1),
              "expand_add: Bt [S, r_max, out] with r <= r_max, got ", bt.sizes(), " for out ", out.sizes());
  TORCH_CHECK(h.scalar_type() == at::kFloat && h.dim() == 2 && h.size(0) == out.size(0) && h.size(1) == r,
              "h must be float32 [N, r]");
  TORCH_CHECK(slot.scalar_type() == at::kLong && slot.numel() == out.size(0), "slot must be int64 [N]");
  TORCH_CHECK(scale.numel() == bt.size(0), "scale must be [S]");
  check_slots(slot, bt.size(0));
  const int64_t n = out.size(0), o = out.size(1), rmax = bt.size(1), ostride = out.stride(0);
  auto bc = bt.contiguous();
  auto hc = h.contiguous();
  auto sc = scale.to(torch::kFloat32).contiguous();
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const uint16_t* bp = bits(bc);
  const float* hp = hc.data_ptr<float>();
  const float* sp = sc.data_ptr<float>();
  const int64_t* sl = slot.data_ptr<int64_t>();
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (o + kChunk - 1) / kChunk;
  at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
    float acc[kChunk];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t row = idx / chunks, s = sl[row];
      if (s < 0) continue;
      const int64_t o0 = (idx % chunks) * kChunk, len = std::min(o, o0 + kChunk) - o0;
      std::fill(acc, acc + len, 0.f);
      for (int64_t k = 0; k < r; ++k) {  // axpy over a contiguous row of Bt
        const float hk = hp[row * r + k];
        const uint16_t* brow = bp + (s * rmax + k) * o + o0;
        for (int64_t j = 0; j < len; ++j) acc[j] += hk * bf16_to_f32(brow[j]);
      }
      const float f = sp[s];
      uint16_t* dst = op + row * ostride + o0;
      for (int64_t j = 0; j < len; ++j) dst[j] = f32_to_bf16(bf16_to_f32(dst[j]) + f * acc[j]);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("shrink", &shrink, "h = A[slot] @ x per row (fp32)");
  m.def("expand_add", &expand_add, "out += scale[slot] * h @ Bt[slot] per row, in place");
}
