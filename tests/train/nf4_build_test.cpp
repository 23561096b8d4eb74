// base_dtype nf4 on a LLaMA built from scratch: lowmem train builds it
// straight into NF4, one decoder layer at a time (models::LlamaLayerHook +
// nn::quantize_linears_nf4), so that a model whose dense weights would not
// fit (a 33B shape in 24 GiB, bench/qlora_step.cpp) never holds them at once.
// Checked here on tiny models: the same bytes as quantizing the dense model
// built from the same seed, and a tracked peak of one dense layer (plus the
// quantizer's temporaries) above the finished model.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "lowmem/core/memory.h"
#include "lowmem/models/llama.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/train/plan.h"
#include "lowmem/train/run.h"

namespace lowmem::train {
namespace {

Config tiny_llama(int64_t layers, const std::string& dtype) {
  Config c;
  c.model = "llama";
  c.method = "lora";
  c.base_dtype = "nf4";
  c.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  for (const auto& [k, v] : std::map<std::string, std::string>{
           {"llama.hidden_size", "64"},
           {"llama.intermediate_size", "160"},
           {"llama.num_attention_heads", "4"},
           {"llama.num_hidden_layers", std::to_string(layers)},
           {"llama.vocab_size", "300"},
           {"llama.dtype", dtype}}) {
    c.set(k, v);
  }
  return c;
}

// NF4 layers anywhere (in a slot, or as the base an adapter wraps).
int64_t count_nf4(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& sub : m.modules(/*include_self=*/false))
    n += dynamic_cast<const nn::Nf4Linear*>(sub.get()) != nullptr ? 1 : 0;
  return n;
}

void expect_same_tensors(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  auto ba = a.named_buffers(), bb = b.named_buffers();
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_EQ(ba.size(), bb.size());
  for (const auto& item : pa) {
    ASSERT_NE(pb.find(item.key()), nullptr) << item.key();
    EXPECT_TRUE(at::equal(item.value(), pb[item.key()])) << item.key();
  }
  for (const auto& item : ba) {
    ASSERT_NE(bb.find(item.key()), nullptr) << item.key();
    EXPECT_TRUE(at::equal(item.value(), bb[item.key()])) << item.key();
  }
}

TEST(Nf4Build, LlamaBuiltLayerByLayerEqualsTheQuantizedDenseModel) {
  for (const std::string dtype : {"float32", "bfloat16"}) {
    const Config c = tiny_llama(3, dtype);
    torch::manual_seed(7);
    auto built = build_model(c);
    // Every projection is NF4 before the method is applied.
    EXPECT_EQ(count_nf4(*built), 3 * 7) << dtype;
    Config dense_config = c;
    dense_config.base_dtype = "auto";
    torch::manual_seed(7);
    auto dense = build_model(dense_config);
    EXPECT_EQ(count_nf4(*dense), 0);
    EXPECT_EQ(nn::quantize_linears_nf4(*dense,
                                       [](const std::string&) { return true; }),
              3 * 7);
    expect_same_tensors(*built, *dense);
    // The method goes on top (nothing left to quantize) and trains LoRA only.
    const MethodSetup m = setup_method(c, built, c10::Device(c10::kCPU));
    EXPECT_EQ(count_nf4(*built), 3 * 7);
    int64_t trainable = 0;
    for (const auto& r : m.routes) {
      for (const auto& n : r.names) {
        EXPECT_NE(n.find("lora_"), std::string::npos) << n;
        ++trainable;
      }
    }
    EXPECT_EQ(trainable, 3 * 7 * 2);
    at::Tensor x = at::randint(0, 300, {1, 8}, at::kLong);
    at::Tensor loss = built->loss(x, x);
    loss.backward();
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
  }
}

TEST(Nf4Build, InitLoadsDenseWeightsBeforeQuantizing) {
  // With `init` the dense weights are loaded after the build, so the layers
  // stay dense until the method quantizes them.
  Config c = tiny_llama(2, "float32");
  c.init = "some/checkpoint";
  auto model = build_model(c);
  EXPECT_EQ(count_nf4(*model), 0);
}

// The dense weights never exist together: the tracked peak of the build is
// the finished model plus at most one dense decoder layer and the
// quantizer's temporaries for one weight, far below the dense layers' sum.
TEST(Nf4Build, PeakIsOneDenseLayerAboveTheFinishedModel) {
  MemoryTracker::install();
  const int64_t layers = 12, C = 64, I = 160;
  const int64_t layer_bytes = (4 * C * C + 3 * C * I) * 4;  // fp32
  const int64_t largest = C * I * 4;
  Config c = tiny_llama(layers, "float32");
  MemoryTracker tracker;
  MemoryScope scope = tracker.scope();
  auto model = build_model(c);
  const int64_t finished = tracker.current_bytes() - scope.start_bytes();
  const int64_t peak = scope.peak_delta();
  // The quantizer's temporaries for one weight: its fp32 view, the scaled
  // copy, int32 indices, packed bytes and per-block scales: under 4 copies.
  EXPECT_LE(peak, finished + layer_bytes + 4 * largest)
      << "finished " << finished << ", peak " << peak;
  EXPECT_LT(peak, finished + layers * layer_bytes / 2);
  // The dense build, for contrast, peaks at every layer's weights.
  Config dense = c;
  dense.base_dtype = "auto";
  MemoryScope dense_scope = tracker.scope();
  { auto m = build_model(dense); }
  EXPECT_GE(dense_scope.peak_delta(), layers * layer_bytes);
}

// lowmem plan reads llama.dtype unless PlanOptions says otherwise.
TEST(Nf4Build, PlanTakesTheModelsDtype) {
  Config c = tiny_llama(2, "bfloat16");
  const Plan p = plan(c);
  const Plan f = plan(c, PlanOptions().dtype(at::kFloat));
  const Plan b = plan(c, PlanOptions().dtype(at::kBFloat16));
  EXPECT_EQ(p.weights, b.weights);
  EXPECT_GT(f.weights, b.weights);
}

}  // namespace
}  // namespace lowmem::train
