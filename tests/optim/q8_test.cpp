// Block-wise 8-bit optimizer state (optim/quant8.h): the dynamic maps and
// block quantization against tests/golden/q8_blockwise.pt (a Python
// transcription of bitsandbytes, tests/optim/q8_reference.py), round-trip
// bounds, the 8-bit AdamW trajectory, exact resume, state bytes, bf16 params,
// GaLore's re-projection of 8-bit inner state, and loss tracking.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "galore_test_util.h"
#include "lowmem/core/fields.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/galore_adamw.h"
#include "lowmem/optim/quant8.h"
#include "lowmem/optim/registry.h"
#include "optim_test_util.h"
#include "testing/golden.h"

namespace {

namespace lo = lowmem::optim;
using lo::BlockwiseQ8;
using lowmem::testing::load_tensor_dict;
using lowmem::testing::set_grad;
using lowmem::testing::source_path;

std::map<std::string, torch::Tensor> golden() {
  static const auto d =
      load_tensor_dict(source_path("tests/golden/q8_blockwise.pt"));
  return d;
}

TEST(Q8Map, MatchesBitsandbytesBitForBit) {
  const auto d = golden();
  EXPECT_TRUE(torch::equal(lo::dynamic_map(true), d.at("map.signed")));
  EXPECT_TRUE(torch::equal(lo::dynamic_map(false), d.at("map.unsigned")));
}

TEST(Q8Map, KnownProperties) {
  for (bool is_signed : {true, false}) {
    const auto& m = lo::dynamic_map(is_signed);
    ASSERT_EQ(m.numel(), 256);
    EXPECT_EQ(m.scalar_type(), torch::kFloat);
    // Strictly increasing, contains 0, tops out at exactly 1.
    EXPECT_TRUE((m.slice(0, 1) > m.slice(0, 0, 255)).all().item<bool>());
    EXPECT_EQ((m == 0).sum().item<int64_t>(), 1);
    EXPECT_EQ(m[255].item<float>(), 1.0f);
    // Smallest non-zero magnitude 0.55e-6 (signed) / 0.325e-6 (unsigned).
    const float tiny = m.abs().masked_fill(m == 0, 2).min().item<float>();
    EXPECT_NEAR(tiny, is_signed ? 0.55e-6 : 0.325e-6, 1e-12);
  }
  // Signed: no -1 (bitsandbytes appends only +1): -(1 - 0.9/128).
  EXPECT_FLOAT_EQ(lo::dynamic_map(true)[0].item<float>(), -0.99296875f);
  EXPECT_EQ(lo::dynamic_map(true)[127].item<float>(), 0.0f);
  EXPECT_EQ(lo::dynamic_map(false)[0].item<float>(), 0.0f);
}

TEST(Q8Quantize, MatchesReferenceCodesAbsmaxAndValues) {
  const auto d = golden();
  for (const std::string name : {"signed", "unsigned"}) {
    const auto& x = d.at("x." + name);
    const auto q = BlockwiseQ8::quantize(x, name == "signed");
    EXPECT_TRUE(torch::equal(q.codes, d.at("codes." + name))) << name;
    EXPECT_TRUE(torch::equal(q.absmax, d.at("absmax." + name))) << name;
    EXPECT_TRUE(torch::equal(q.dequantize(), d.at("deq." + name))) << name;
    // A block-aligned range of the flat tensor, including the short tail.
    EXPECT_TRUE(torch::equal(q.dequantize_range(512, 388),
                             d.at("deq." + name).view(-1).slice(0, 512)));
    EXPECT_EQ(q.absmax.numel(), 4);  // 900 = 3 * 256 + 132
  }
  // The all-zero block keeps absmax 0 and comes back as zeros.
  const auto q = BlockwiseQ8::quantize(d.at("x.signed"), true);
  EXPECT_EQ(q.absmax[1].item<float>(), 0.0f);
  EXPECT_EQ(
      q.dequantize().view(-1).slice(0, 256, 512).abs().max().item<float>(),
      0.0f);
}

// Every element goes to the nearest code value (exhaustive over the map), and
// the error is at most half the widest gap of the map times the block absmax.
TEST(Q8Quantize, NearestCodeAndRoundTripBound) {
  torch::manual_seed(1);
  for (bool is_signed : {true, false}) {
    auto x = torch::randn({5, 211}) * torch::logspace(-8, 2, 5).unsqueeze(1);
    if (!is_signed) x = x.square();
    const auto q = BlockwiseQ8::quantize(x, is_signed);
    const auto back = q.dequantize();
    const auto& map = lo::dynamic_map(is_signed);
    const auto flat = x.view(-1), got = back.view(-1);
    const auto block =
        torch::div(torch::arange(flat.numel()), lo::kQ8BlockSize, "floor");
    const auto am = q.absmax.index_select(0, block);
    const auto all = map.unsqueeze(0) * am.unsqueeze(1);  // [n, 256]
    const auto best = (all - flat.unsqueeze(1)).abs().min(1);
    const auto err = (got - flat).abs();
    EXPECT_LE(((err - std::get<0>(best)) / am).max().item<double>(), 1e-6)
        << is_signed;
    const double half_gap =
        ((map.slice(0, 1) - map.slice(0, 0, 255)).max().item<double>()) / 2;
    // (The signed map has no -1: -absmax lands on -0.99296875, half a gap.)
    EXPECT_TRUE((err <= am * (half_gap + 1e-6)).all().item<bool>());
    // Relative error of values within a decade of their block's absmax.
    const auto big = flat.abs() >= 0.1 * am;
    const auto rel = (err / flat.abs()).masked_select(big);
    EXPECT_LT(rel.max().item<double>(), 0.075);
  }
}

// The CPU kernel (one pass per block) against the algorithm written as
// tensor ops: absmax, x / absmax clamped to [-1, 1], bucketize on the
// midpoints; values code x absmax. Many blocks, a short tail, scales over
// 16 decades, exact zeros.
TEST(Q8Quantize, CpuKernelEqualsTensorOps) {
  torch::manual_seed(3);
  const int64_t B = lo::kQ8BlockSize, n = 97 * B + 77;
  for (bool is_signed : {true, false}) {
    auto x = torch::randn({n}) *
             torch::pow(10.0, torch::randint(-12, 4, {n}).to(torch::kFloat));
    x.slice(0, 5 * B, 6 * B).zero_();
    if (!is_signed) x = x.abs();
    // Ties: a block with absmax 1 holding every midpoint exactly, and
    // values just beside them.
    const auto mids = lowmem::code_midpoints(lowmem::dynamic_map(is_signed));
    const int64_t nm = mids.numel();
    x.slice(0, 7 * B, 7 * B + nm).copy_(mids);
    x[7 * B + nm] = 1.0f;
    x.slice(0, 8 * B, 8 * B + nm)
        .copy_(torch::nextafter(mids, torch::full_like(mids, 2.0f)));
    x.slice(0, 9 * B, 9 * B + nm)
        .copy_(torch::nextafter(mids, torch::full_like(mids, -2.0f)));
    x[8 * B + nm] = 1.0f;
    x[9 * B + nm] = 1.0f;
    const auto q = BlockwiseQ8::quantize(x, is_signed);
    const auto padded =
        torch::cat({x, torch::zeros({98 * B - n})}).view({98, B});
    const auto am = padded.abs().amax(1);
    const auto scaled =
        (padded * am.clamp_min(1e-38).reciprocal().unsqueeze(1)).clamp(-1, 1);
    const auto codes =
        torch::bucketize(scaled,
                         lowmem::code_midpoints(lo::dynamic_map(is_signed)),
                         /*out_int32=*/true)
            .to(torch::kByte)
            .view(-1)
            .slice(0, 0, n);
    EXPECT_TRUE(torch::equal(q.absmax, am)) << is_signed;
    EXPECT_TRUE(torch::equal(q.codes.view(-1), codes)) << is_signed;
    const auto block = torch::div(torch::arange(n), B, "floor");
    const auto values =
        lo::dynamic_map(is_signed).index_select(0, codes.to(torch::kLong)) *
        am.index_select(0, block);
    EXPECT_TRUE(torch::equal(q.dequantize(), values)) << is_signed;
  }
  // A NaN in one block: the tensor ops decide (no crash); the other blocks
  // are quantized as without it.
  auto x = torch::randn({4 * B});
  auto with_nan = x.clone();
  with_nan[B + 3] = std::numeric_limits<float>::quiet_NaN();
  const auto q = BlockwiseQ8::quantize(with_nan, true);
  const auto clean = BlockwiseQ8::quantize(x, true);
  EXPECT_TRUE(
      torch::equal(q.codes.slice(0, 2 * B), clean.codes.slice(0, 2 * B)));
  EXPECT_TRUE(std::isnan(q.absmax[1].item<float>()));
}

TEST(Q8Quantize, ChunkedStoreEqualsOnePass) {
  torch::manual_seed(2);
  const int64_t n = lo::kQ8ChunkElements + 1000;
  const auto x = torch::randn({n});
  auto whole = BlockwiseQ8::zeros({n}, torch::kCPU, true);
  whole.store_range(0, x);  // one range (store() chunks)
  const auto chunked = BlockwiseQ8::quantize(x, true);
  EXPECT_TRUE(torch::equal(whole.codes, chunked.codes));
  EXPECT_TRUE(torch::equal(whole.absmax, chunked.absmax));
  EXPECT_TRUE(torch::equal(whole.dequantize_range(0, n), chunked.dequantize()));
}

TEST(Q8Quantize, RejectsUnalignedRanges) {
  auto q = BlockwiseQ8::zeros({1000}, torch::kCPU, true);
  EXPECT_THROW(q.dequantize_range(100, 10), c10::Error);
  EXPECT_THROW(q.store_range(0, torch::zeros({1001})), c10::Error);
  EXPECT_THROW(BlockwiseQ8::quantize(torch::zeros({3}, torch::kLong), true),
               c10::Error);
}

class Q8Adam : public ::testing::TestWithParam<bool> {
 protected:
  lowmem::testing::ReferencePath ref_{GetParam()};
};

// lowmem AdamW with optim_bits 8 against bitsandbytes' 8-bit Adam update
// (decoupled decay, 6 steps): w (4480 elements) has 8-bit state, b (100 <
// min_8bit_size) fp32 state.
TEST_P(Q8Adam, TrajectoryMatchesReference) {
  const auto d = golden();
  auto w = d.at("init.w").clone().set_requires_grad(true);
  auto b = d.at("init.b").clone().set_requires_grad(true);
  lo::AdamW opt({w, b}, lo::AdamWOptions(1e-2).weight_decay(0.1).optim_bits(8));
  for (int t = 1; t <= 6; ++t) {
    set_grad(w, d.at("grad." + std::to_string(t) + ".w"));
    set_grad(b, d.at("grad." + std::to_string(t) + ".b"));
    opt.step();
    const auto ts = std::to_string(t);
    EXPECT_TRUE(
        torch::allclose(w.detach(), d.at("after." + ts + ".w"), 1e-5, 1e-6))
        << "step " << t;
    EXPECT_TRUE(
        torch::allclose(b.detach(), d.at("after." + ts + ".b"), 1e-5, 1e-6))
        << "step " << t;
  }
  const auto* sw = opt.state_of(w);
  const auto* sb = opt.state_of(b);
  ASSERT_TRUE(sw->exp_avg_q8.defined() && !sw->exp_avg.defined());
  ASSERT_TRUE(sb->exp_avg.defined() && !sb->exp_avg_q8.defined());
  EXPECT_EQ(sw->exp_avg_q8.codes.scalar_type(), torch::kByte);
  EXPECT_EQ(sw->exp_avg_q8.absmax.numel(), 18);
  // Same codes (a code may differ by one where the fused kernel's rounding
  // lands a value on the other side of a midpoint).
  const auto dc = (sw->exp_avg_q8.codes.to(torch::kInt) -
                   d.at("final.w.exp_avg_codes").to(torch::kInt))
                      .abs();
  const auto dv = (sw->exp_avg_sq_q8.codes.to(torch::kInt) -
                   d.at("final.w.exp_avg_sq_codes").to(torch::kInt))
                      .abs();
  EXPECT_LE(dc.max().item<int>(), GetParam() ? 0 : 1);
  EXPECT_LE(dv.max().item<int>(), GetParam() ? 0 : 1);
  EXPECT_TRUE(torch::allclose(sw->exp_avg_q8.absmax,
                              d.at("final.w.exp_avg_absmax"), 1e-5, 0));
  EXPECT_TRUE(torch::allclose(sw->exp_avg_sq_q8.absmax,
                              d.at("final.w.exp_avg_sq_absmax"), 1e-5, 0));
}

INSTANTIATE_TEST_SUITE_P(FusedAndReference, Q8Adam, ::testing::Bool());

using Factory = std::function<std::unique_ptr<torch::optim::Optimizer>(
    std::vector<torch::Tensor>)>;

// Steps 1..6 in one run equal steps 1..3, save, load into a fresh optimizer,
// steps 4..6: bit for bit (8-bit state saved as its codes and absmax).
void expect_exact_resume(const Factory& make) {
  torch::manual_seed(3);
  const auto w0 = torch::randn({64, 80}), v0 = torch::randn({5000});
  std::vector<std::vector<torch::Tensor>> grads;
  for (int t = 0; t < 6; ++t)
    grads.push_back({torch::randn({64, 80}), torch::randn({5000})});
  auto run = [&](std::vector<torch::Tensor> p, torch::optim::Optimizer& o,
                 int from, int to) {
    for (int t = from; t < to; ++t) {
      for (size_t i = 0; i < p.size(); ++i) set_grad(p[i], grads[t][i]);
      o.step();
    }
  };
  std::vector<torch::Tensor> a{w0.clone().requires_grad_(),
                               v0.clone().requires_grad_()};
  auto oa = make(a);
  run(a, *oa, 0, 6);
  std::vector<torch::Tensor> b{w0.clone().requires_grad_(),
                               v0.clone().requires_grad_()};
  auto ob = make(b);
  run(b, *ob, 0, 3);
  std::stringstream buf;
  {
    torch::serialize::OutputArchive out;
    ob->save(out);
    out.save_to(buf);
  }
  auto oc = make(b);
  {
    torch::serialize::InputArchive in;
    in.load_from(buf);
    oc->load(in);
  }
  ob.reset();
  run(b, *oc, 3, 6);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(a[i].detach(), b[i].detach())) << "param " << i;
  const auto sa = lo::state_tensors(*oa), sc = lo::state_tensors(*oc);
  ASSERT_EQ(sa.size(), sc.size());
  bool any_byte = false;
  // State maps are keyed by address: match each tensor with an equal one.
  for (size_t i = 0; i < sa.size(); ++i) {
    bool found = false;
    for (const auto& t : sc) {
      found |= t.scalar_type() == sa[i].scalar_type() &&
               t.sizes() == sa[i].sizes() && torch::equal(t, sa[i]);
    }
    EXPECT_TRUE(found) << "state tensor " << i << " " << sa[i].sizes();
    any_byte |= sc[i].scalar_type() == torch::kByte;
  }
  EXPECT_TRUE(any_byte);
}

TEST(Q8Resume, AdamWIsBitExact) {
  expect_exact_resume([](std::vector<torch::Tensor> p) {
    return std::make_unique<lo::AdamW>(p, lo::AdamWOptions(1e-2).optim_bits(8));
  });
}

TEST(Q8Resume, GaLoreAdamWIsBitExact) {
  expect_exact_resume([](std::vector<torch::Tensor> p) {
    return std::make_unique<lo::GaLoreAdamW>(
        p, lo::GaLoreAdamWOptions(1e-2).weight_decay(0.01).optim_bits(8));
  });
}

TEST(Q8Resume, CameIsBitExact) {
  expect_exact_resume([](std::vector<torch::Tensor> p) {
    return std::make_unique<lo::CAME>(p, lo::CameOptions(1e-3).optim_bits(8));
  });
}

// The registry's state_bytes (what lowmem plan uses) shows the saving: two
// 8-bit moments plus one float absmax per 256 elements each, instead of 8 B.
TEST(Q8StateBytes, RegistryRowsShowTheSaving) {
  const auto meta = torch::empty({1024, 4096}, torch::device(torch::kMeta));
  const int64_t n = meta.numel(), blocks = n / 256;
  auto bytes = [&](const std::string& name, const at::Tensor& p, int bits) {
    const auto& kind = lo::optimizer_kind(name);
    lowmem::Section s = kind.options();
    s.find("optim_bits")->set(std::to_string(bits));
    return kind.state_bytes(p, s);
  };
  EXPECT_EQ(bytes("adamw", meta, 32), 8 * n);
  EXPECT_EQ(bytes("adamw", meta, 8), 2 * n + 2 * 4 * blocks);
  EXPECT_EQ(bytes("galore_adamw", meta, 8), 2 * n + 2 * 4 * blocks);
  // CAME: m goes 4 -> 1 + 4/256 bytes; the factored statistics stay fp32.
  EXPECT_EQ(bytes("came", meta, 32) - bytes("came", meta, 8),
            4 * n - (n + 4 * blocks));
  // Below min_8bit_size the state stays fp32.
  const auto small = torch::empty({4095}, torch::device(torch::kMeta));
  EXPECT_EQ(bytes("adamw", small, 8), 8 * 4095);
}

TEST(Q8Options, ValidationAndFieldNames) {
  auto p = torch::zeros({4}).requires_grad_();
  EXPECT_THROW(lo::AdamW({p}, lo::AdamWOptions().optim_bits(4)), c10::Error);
  EXPECT_THROW(lo::CAME({p}, lo::CameOptions().optim_bits(16)), c10::Error);
  EXPECT_THROW(lo::GaLoreAdamW({p}, lo::GaLoreAdamWOptions().min_8bit_size(-1)),
               c10::Error);
  try {
    lo::AdamW({p}, lo::AdamWOptions().optim_bits(4));
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("optim_bits must be 8 or 32, got 4"),
              std::string::npos);
  }
  lowmem::Section s = lo::optimizer_kind("adamw").options();
  s.find("optim_bits")->set("8");
  EXPECT_EQ(s.get<lo::AdamWOptions>().optim_bits(), 8);
}

// bf16 params: the parameter stays bf16, the state is 8-bit, and the run
// follows the same 8-bit run on fp32 params to bf16 precision.
TEST(Q8Adam, Bf16Params) {
  torch::manual_seed(4);
  const auto w0 = torch::randn({64, 128});
  auto a = w0.clone().requires_grad_();
  auto b = w0.to(torch::kBFloat16).requires_grad_();
  lo::AdamW oa({a}, lo::AdamWOptions(1e-3).optim_bits(8));
  lo::AdamW ob({b}, lo::AdamWOptions(1e-3).optim_bits(8));
  for (int t = 0; t < 5; ++t) {
    const auto g = torch::randn({64, 128});
    set_grad(a, g);
    set_grad(b, g);
    oa.step();
    ob.step();
  }
  EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
  ASSERT_TRUE(ob.state_of(b)->exp_avg_q8.defined());
  EXPECT_LT(
      (b.detach().to(torch::kFloat) - a.detach()).abs().max().item<double>(),
      0.02);
  EXPECT_GT((b.detach().to(torch::kFloat) - w0).abs().max().item<double>(),
            4e-3);
}

// 8-bit GaLore: the inner GaLore-AdamW keeps 8-bit state on the low-rank
// proxy, and state_on_refresh reproject rotates it (dequantized, moved,
// requantized).
TEST(Q8GaLore, InnerStateIs8BitAndReprojects) {
  using namespace galore_test;
  auto inner = [](int bits) -> lo::InnerFactory {
    return [bits](Groups g) {
      return std::make_unique<lo::GaLoreAdamW>(
          std::move(g),
          lo::GaLoreAdamWOptions(1e-2).optim_bits(bits).min_8bit_size(0));
    };
  };
  auto state = [&](int bits) {
    torch::manual_seed(5);
    auto w = torch::randn({96, 64}).requires_grad_();
    lo::GaLore g(
        {w}, {}, inner(bits),
        lo::GaLoreOptions()
            .state_on_refresh("reproject")
            .projector(
                lowmem::projection::ProjectorOptions().rank(8).update_proj_gap(
                    2)));
    for (int t = 0; t < 5; ++t) {
      w.mutable_grad() = torch::randn({96, 64});
      g.step();
    }
    EXPECT_TRUE(torch::isfinite(w).all().item<bool>());
    return std::make_pair(lo::state_bytes(g), w.detach().clone());
  };
  const auto [b32, w32] = state(32);
  const auto [b8, w8] = state(8);
  // Low-rank proxy 96 x 8 = 768 elements (3 blocks): 8 -> 2 B + absmax.
  EXPECT_EQ(b32 - b8, 768 * 8 - (2 * 768 + 2 * 3 * 4));
  EXPECT_LT((w8 - w32).abs().max().item<double>(), 0.05);
}

// Training: a 3-layer MLP regression, 300 AdamW steps; the 8-bit run's final
// loss is within 10 % of the fp32 run's (and both fall by > 5x).
TEST(Q8Training, TracksFp32Loss) {
  auto train = [](int bits) {
    torch::manual_seed(6);
    torch::nn::Sequential net(torch::nn::Linear(32, 128), torch::nn::Tanh(),
                              torch::nn::Linear(128, 128), torch::nn::Tanh(),
                              torch::nn::Linear(128, 8));
    torch::manual_seed(7);
    const auto teacher = torch::randn({32, 8});
    lo::AdamW opt(net->parameters(),
                  lo::AdamWOptions(3e-3).weight_decay(0.0).optim_bits(bits));
    std::vector<double> losses;
    for (int t = 0; t < 300; ++t) {
      const auto x = torch::randn({64, 32});
      const auto y = torch::tanh(x.matmul(teacher) / 4);
      auto loss = (net->forward(x) - y).pow(2).mean();
      opt.zero_grad();
      loss.backward();
      opt.step();
      losses.push_back(loss.item<double>());
    }
    double tail = 0;
    for (int t = 280; t < 300; ++t) tail += losses[t] / 20;
    return std::make_pair(losses[0], tail);
  };
  const auto [first32, last32] = train(32);
  const auto [first8, last8] = train(8);
  EXPECT_LT(last32, first32 / 5);
  EXPECT_LT(last8, first8 / 5);
  EXPECT_NEAR(last8, last32, 0.1 * last32) << last8 << " vs " << last32;
}

}  // namespace
