// NF4 weights (nn/nf4.h): the code values against QLoRA's construction and
// bitsandbytes' literals, quantize/dequantize bit for bit against
// tests/golden/nf4.pt (a transcription of bitsandbytes,
// tests/nn/nf4_reference.py), chunked quantization, sizes, round-trip error;
// Nf4Linear: forward and gradients through the dequantized weight, no dense
// weight kept for backward, slot replacement, dtype conversion of a model
// holding NF4 layers.
#include "lowmem/nn/nf4.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/core/memory.h"
#include "lowmem/core/quant_maps.h"
#include "lowmem/nn/slot_module.h"
#include "testing/golden.h"

namespace {

using lowmem::nn::Nf4Linear;
using lowmem::nn::Nf4Weight;
using lowmem::testing::load_tensor_dict;
using lowmem::testing::source_path;

const std::map<std::string, torch::Tensor>& golden() {
  static const auto d = load_tensor_dict(source_path("tests/golden/nf4.pt"));
  return d;
}

TEST(Nf4Code, EqualsThePublishedValues) {
  // bitsandbytes' get_4bit_type("nf4") literals (QLoRA, Appendix E), as
  // written by the Python transcription.
  EXPECT_TRUE(torch::equal(lowmem::nf4_code(), golden().at("code")));
  // QLoRA's construction (create_normal_map(0.9677083, use_extra_value)):
  // 8 negative quantiles, 0, 7 positive ones, normalised by the largest.
  auto pts = [](int64_t k) {
    return torch::linspace(0.9677083, 0.5, k, torch::kFloat)
        .slice(0, 0, k - 1)
        .to(torch::kDouble);
  };
  auto v1 = torch::special_ndtri(pts(9));
  auto v3 = -torch::special_ndtri(pts(8));
  auto v = std::get<0>(torch::cat({v1, torch::zeros({1}, torch::kDouble), v3})
                           .to(torch::kFloat)
                           .sort());
  v = v / v.max();
  EXPECT_TRUE(torch::allclose(lowmem::nf4_code(), v, 0, 1e-6));
  EXPECT_EQ(lowmem::nf4_code()[7].item<float>(), 0.0f);
  EXPECT_EQ(lowmem::nf4_code()[0].item<float>(), -1.0f);
  EXPECT_EQ(lowmem::nf4_code()[15].item<float>(), 1.0f);
}

TEST(Nf4Weight, QuantizesAndDequantizesLikeBitsandbytesBitForBit) {
  const auto& d = golden();
  for (const char* name : {"big", "odd", "bf16"}) {
    SCOPED_TRACE(name);
    const std::string n = name;
    const auto w = Nf4Weight::quantize(d.at("x." + n));
    EXPECT_TRUE(torch::equal(w.packed, d.at("packed." + n)));
    EXPECT_TRUE(torch::equal(w.absmax_q, d.at("absmax_q." + n)));
    EXPECT_TRUE(torch::equal(w.absmax2, d.at("absmax2." + n)));
    EXPECT_TRUE(torch::equal(w.offset, d.at("offset." + n)));
    for (auto [dt, tag] :
         {std::pair{torch::kFloat, "fp32"}, std::pair{torch::kBFloat16, "bf16"},
          std::pair{torch::kHalf, "fp16"}}) {
      SCOPED_TRACE(tag);
      const auto& want = d.at(std::string("deq.") + tag + "." + n);
      const auto fast = w.dequantize(dt);
      const auto ref = w.dequantize_reference(dt);
      EXPECT_EQ(fast.scalar_type(), dt);
      EXPECT_EQ(fast.sizes(), want.sizes());
      EXPECT_TRUE(torch::equal(fast, want));
      EXPECT_TRUE(torch::equal(ref, want));
    }
  }
}

TEST(Nf4Weight, ChunkedQuantizationEqualsOnePass) {
  // 2^20 + 3 * 64 + 5 elements: two chunks, a short last block, odd count.
  torch::manual_seed(1);
  const int64_t n = (int64_t{1} << 20) + 3 * 64 + 5;
  const auto x = torch::randn({n}) * 0.05;
  const auto w = Nf4Weight::quantize(x);
  // One pass over the same values, block by block, as the reference does it
  // (the second chunk starts at a block boundary, so its blocks are equal).
  const auto tail = Nf4Weight::quantize(x.slice(0, int64_t{1} << 20));
  EXPECT_TRUE(torch::equal(w.packed.slice(0, int64_t{1} << 19), tail.packed));
  const auto am = w.absmax();
  EXPECT_EQ(am.numel(), (n + 63) / 64);
  const auto err = (w.dequantize(torch::kFloat) - x).abs();
  // Within half the widest gap between NF4 values (0.304 of the absmax).
  const auto bound = am.repeat_interleave(64).slice(0, 0, n) * 0.16 + 1e-4;
  EXPECT_TRUE((err <= bound).all().item<bool>());
}

TEST(Nf4Weight, SizesAndBytes) {
  const auto w = Nf4Weight::quantize(torch::randn({64, 512}));
  EXPECT_EQ(w.packed.numel(), 64 * 512 / 2);
  EXPECT_EQ(w.absmax_q.numel(), 512);
  EXPECT_EQ(w.absmax2.numel(), 2);
  EXPECT_EQ(w.nbytes(), 16384 + 512 + 8 + 4);
  EXPECT_EQ(Nf4Weight::bytes_for(64 * 512), w.nbytes());
  const auto m = Nf4Weight::empty({6656, 17920}, torch::Device(torch::kMeta));
  EXPECT_EQ(m.nbytes(), Nf4Weight::bytes_for(int64_t{6656} * 17920));
  // About 0.516 bytes per element (QLoRA: 4.127 bits).
  EXPECT_NEAR(static_cast<double>(m.nbytes()) / (6656.0 * 17920.0), 0.5159,
              1e-3);
}

TEST(Nf4Weight, RejectsWhatItCannotQuantize) {
  EXPECT_THROW(Nf4Weight::quantize(torch::zeros({4}, torch::kInt)), c10::Error);
  EXPECT_THROW(Nf4Weight::quantize(torch::Tensor()), c10::Error);
  const auto w = Nf4Weight::quantize(torch::randn({8, 8}));
  EXPECT_THROW(w.dequantize(torch::kInt), c10::Error);
}

TEST(Nf4Linear, ForwardAndInputGradientUseTheDequantizedWeight) {
  torch::manual_seed(2);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(dtype);
    const auto w = (torch::randn({24, 40}) * 0.1).to(dtype);
    const auto b = torch::randn({24}).to(dtype);
    Nf4Linear layer(w, b);
    EXPECT_TRUE(layer.is_quantized());
    EXPECT_EQ(layer.compute_dtype(), dtype);
    const auto deq = Nf4Weight::quantize(w).dequantize(dtype);
    EXPECT_TRUE(torch::equal(layer.effective_weight(), deq));
    // The reference: autograd through a dense copy of the dequantized weight.
    auto x = torch::randn({3, 5, 40}).to(dtype).requires_grad_(true);
    auto xr = x.detach().clone().requires_grad_(true);
    const auto y = layer.forward(x);
    const auto yr = torch::linear(xr, deq, b);
    // bf16: the bias is added to the rounded product (one more rounding
    // than at::linear's fused addmm).
    const double tol = dtype == torch::kFloat ? 1e-5 : 2e-2;
    EXPECT_TRUE(torch::allclose(y, yr, tol, tol));
    const auto g = torch::randn_like(y);
    y.backward(g);
    yr.backward(g);
    ASSERT_TRUE(x.grad().defined());
    EXPECT_TRUE(torch::allclose(x.grad(), xr.grad(), tol, tol));
    // Frozen: no parameter of the layer wants a gradient.
    for (const auto& p : layer.parameters()) EXPECT_FALSE(p.requires_grad());
  }
}

// model->to(dtype) (as lowmem compare's memory suite does) must change the
// compute dtype and the bias, never cast the 4-bit storage.
TEST(Nf4Linear, DtypeConversionKeepsTheStorage) {
  torch::manual_seed(4);
  const auto w = torch::randn({8, 16}) * 0.1;
  auto layer = std::make_shared<Nf4Linear>(w, torch::randn({8}));
  torch::nn::Sequential holder;
  holder->push_back("q", layer);
  const auto packed = layer->weight().packed.clone();
  holder->to(torch::kBFloat16);
  EXPECT_EQ(layer->compute_dtype(), torch::kBFloat16);
  EXPECT_EQ(layer->weight().packed.scalar_type(), torch::kByte);
  EXPECT_EQ(layer->weight().absmax2.scalar_type(), torch::kFloat);
  EXPECT_EQ(layer->bias().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(layer->weight().packed, packed));
  const auto x = torch::randn({2, 16});
  EXPECT_EQ(layer->forward(x).scalar_type(), torch::kBFloat16);
  holder->to(torch::kCPU, torch::kFloat);
  EXPECT_EQ(layer->compute_dtype(), torch::kFloat);
  EXPECT_TRUE(torch::equal(layer->effective_weight(),
                           Nf4Weight::quantize(w).dequantize(torch::kFloat)));
  EXPECT_TRUE(torch::allclose(
      layer->forward(x),
      torch::linear(x, layer->effective_weight(), layer->bias()), 1e-5, 1e-5));
  EXPECT_THROW(holder->to(torch::kLong), c10::Error);
}

TEST(Nf4Linear, KeepsNoDenseWeightForBackward) {
  lowmem::MemoryTracker::install();
  torch::manual_seed(3);
  Nf4Linear layer(torch::randn({512, 256}) * 0.02);
  auto x = torch::randn({4, 256}).requires_grad_(true);
  lowmem::MemoryTracker tracker;
  const int64_t before = tracker.current_bytes();
  auto scope = tracker.scope();
  auto y = layer.forward(x);
  // Alive after forward: the output only (the 512 KiB fp32 weight made for
  // the matmul is gone); while it ran: that weight and its block scales.
  EXPECT_EQ(tracker.current_bytes() - before, 4 * 512 * 4);
  EXPECT_GE(scope.peak_bytes() - before, 512 * 256 * 4);
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

TEST(Nf4Linear, HasNoDenseWeightAndReQuantizesAnAddedDelta) {
  torch::manual_seed(4);
  const auto w = torch::randn({16, 64}) * 0.05;
  Nf4Linear layer(w);
  EXPECT_THROW(layer.base_weight(), c10::Error);
  EXPECT_EQ(layer.weight_options().dtype(), torch::kFloat);
  const auto delta = torch::randn({16, 64}) * 0.05;
  const auto before = layer.effective_weight();
  layer.add_to_weight(delta);
  EXPECT_TRUE(torch::equal(
      layer.effective_weight(),
      Nf4Weight::quantize(before + delta).dequantize(torch::kFloat)));
  EXPECT_THROW(layer.add_to_weight(torch::zeros({4, 4})), c10::Error);
  // The buffers hold the storage (saved with the model).
  const auto buffers = layer.named_buffers();
  EXPECT_TRUE(buffers.contains("weight_packed"));
  EXPECT_EQ(buffers["weight_packed"].numel(), 16 * 64 / 2);
}

struct TwoSlots : lowmem::nn::SlotModule {
  TwoSlots() {
    register_slot("a", std::make_shared<lowmem::nn::Linear>(8, 8));
    register_slot("head", std::make_shared<lowmem::nn::Linear>(8, 2));
  }
};

TEST(Nf4Linear, QuantizeLinearsReplacesThePickedSlots) {
  torch::manual_seed(5);
  TwoSlots m;
  const auto wa = m.linear("a").base_weight().detach().clone();
  const int64_t n = lowmem::nn::quantize_linears_nf4(
      m, [](const std::string& path) { return path != "head"; });
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(m.linear("a").is_quantized());
  EXPECT_FALSE(m.linear("head").is_quantized());
  EXPECT_TRUE(torch::equal(m.linear("a").effective_weight(),
                           Nf4Weight::quantize(wa).dequantize(torch::kFloat)));
  EXPECT_FALSE(m.named_parameters().contains("a.weight"));
  EXPECT_TRUE(m.named_parameters().contains("a.bias"));
  // A meta layer gets meta storage of the right sizes (lowmem plan).
  Nf4Linear meta(torch::empty({6656, 17920}, torch::Device(torch::kMeta)));
  EXPECT_TRUE(meta.weight().packed.is_meta());
  EXPECT_EQ(meta.weight().nbytes(), Nf4Weight::bytes_for(6656LL * 17920));
}

}  // namespace
