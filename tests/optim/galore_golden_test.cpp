// Parity with official GaLore-AdamW (tests/golden/galore_adamw_std.pt, see
// tests/golden/cases.json): std projection, rank 4, refresh every 5 steps,
// scale 0.25, HF-style AdamW (eps 1e-6, bias correction), plain AdamW on the
// 1-D param in another group. The trajectory after the first refresh depends
// on the LAPACK's SVD sign choices (docs/galore.md, "SVD signs"); the case was
// recorded with Debian's LibTorch 1.13, which CI uses.
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"
#include "testing/golden.h"
#include "testing/pch.h"

namespace lo = lowmem::optim;

TEST(GaLoreGolden, AdamWStdMatchesOfficialStepByStep) {
  auto d = lowmem::testing::load_tensor_dict(
      lowmem::testing::source_path("tests/golden/galore_adamw_std.pt"));
  auto tall = d.at("init.tall").clone().set_requires_grad(true);
  auto wide = d.at("init.wide").clone().set_requires_grad(true);
  auto b = d.at("init.b").clone().set_requires_grad(true);
  ASSERT_EQ(tall.scalar_type(), torch::kFloat);
  lo::GaLore opt(
      {tall, wide}, {b},
      [](std::vector<torch::optim::OptimizerParamGroup> g) {
        return std::make_unique<lo::GaLoreAdamW>(std::move(g),
                                                 lo::GaLoreAdamWOptions(0.01));
      },
      lo::GaLoreOptions().projector(lowmem::projection::ProjectorOptions()
                                        .rank(4)
                                        .update_proj_gap(5)
                                        .scale(0.25)
                                        .proj_type("std")));
  std::vector<std::pair<std::string, at::Tensor>> params = {
      {"tall", tall}, {"wide", wide}, {"b", b}};
  for (int t = 1; t <= 20; ++t) {
    for (auto& [name, p] : params)
      p.mutable_grad() = d.at("grad." + std::to_string(t) + "." + name).clone();
    opt.step();
    for (auto& [name, p] : params) {
      const auto& want = d.at("after." + std::to_string(t) + "." + name);
      EXPECT_LE(lowmem::testing::closeness(p.detach(), want, 1e-5, 1e-6), 1.0)
          << "step " << t << " param " << name << " max abs diff "
          << (p.detach() - want).abs().max().item<double>();
    }
  }
  EXPECT_EQ(opt.projector(0).refresh_count(), 4);  // steps 1, 6, 11, 16
  EXPECT_EQ(opt.projector(0).low_rank_shape(), (std::vector<int64_t>{16, 4}));
  EXPECT_EQ(opt.projector(1).low_rank_shape(), (std::vector<int64_t>{4, 20}));
}
