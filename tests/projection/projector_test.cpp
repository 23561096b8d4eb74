#include "lowmem/projection/projector.h"

#include <torch/serialize.h>

#include "testing/pch.h"

namespace lp = lowmem::projection;

namespace {

at::Tensor low_rank_matrix(int64_t m, int64_t n, int64_t k) {
  return torch::randn({m, k}, torch::kDouble)
      .matmul(torch::randn({k, n}, torch::kDouble));
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

}  // namespace

class ProjectorTypes
    : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(ProjectorTypes, OrthonormalBasisAndExactRoundTripForLowRank) {
  torch::manual_seed(1);
  const auto [type, basis] = GetParam();
  for (auto shape : {std::pair<int64_t, int64_t>{24, 16}, {12, 30}}) {
    lp::Projector proj(
        lp::ProjectorOptions().rank(6).proj_type(type).basis(basis), shape.first,
        shape.second);
    auto g = low_rank_matrix(shape.first, shape.second, 5);
    proj.refresh(g);
    auto eye = torch::eye(6, torch::kDouble);
    if (proj.left().defined()) {
      EXPECT_LT(max_abs(proj.left().t().matmul(proj.left()) - eye), 1e-10);
    }
    if (proj.right().defined()) {
      EXPECT_LT(max_abs(proj.right().t().matmul(proj.right()) - eye), 1e-10);
    }
    auto low = proj.project(g);
    EXPECT_EQ(low.sizes(), at::IntArrayRef(proj.low_rank_shape()));
    if (basis != "orthogonal") {  // a random subspace does not contain range(G)
      EXPECT_LT(max_abs(proj.project_back(low) - g), 1e-9 * max_abs(g))
          << type << " " << basis;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, ProjectorTypes,
    ::testing::Combine(::testing::Values("std", "reverse_std", "left", "right",
                                         "full"),
                       ::testing::Values("svd", "rsvd", "orthogonal")));

TEST(Projector, StdProjectsTheLongerSideAway) {
  EXPECT_EQ(lp::side_for("std", 16, 12), lp::Side::kRight);
  EXPECT_EQ(lp::side_for("std", 10, 20), lp::Side::kLeft);
  EXPECT_EQ(lp::side_for("reverse_std", 16, 12), lp::Side::kLeft);
  EXPECT_EQ(lp::side_for("reverse_std", 10, 20), lp::Side::kRight);
  lp::Projector tall(lp::ProjectorOptions().rank(4), 16, 12);
  EXPECT_EQ(tall.low_rank_shape(), (std::vector<int64_t>{16, 4}));
  lp::Projector wide(lp::ProjectorOptions().rank(4), 10, 20);
  EXPECT_EQ(wide.low_rank_shape(), (std::vector<int64_t>{4, 20}));
  lp::Projector full(lp::ProjectorOptions().rank(4).proj_type("full"), 10, 20);
  EXPECT_EQ(full.low_rank_shape(), (std::vector<int64_t>{4, 4}));
  // Official slicing clamps the rank to min(m, n).
  lp::Projector clamp(lp::ProjectorOptions().rank(50), 10, 20);
  EXPECT_EQ(clamp.rank(), 10);
}

TEST(Projector, ScaleOnlyInProjectBack) {
  torch::manual_seed(2);
  auto g = low_rank_matrix(8, 6, 2);
  lp::Projector a(lp::ProjectorOptions().rank(3).scale(0.25), 8, 6);
  lp::Projector b(lp::ProjectorOptions().rank(3), 8, 6);
  a.refresh(g);
  b.refresh(g);
  EXPECT_TRUE(torch::allclose(a.project(g), b.project(g)));
  EXPECT_TRUE(torch::allclose(a.project_back(a.project(g)), 0.25 * g));
  EXPECT_TRUE(torch::allclose(a.expand(a.project(g)), g));
}

TEST(Projector, SvdBasisIsTheTopSingularSubspace) {
  torch::manual_seed(3);
  auto g = torch::randn({20, 12}, torch::kDouble);
  lp::Projector p(lp::ProjectorOptions().rank(4).proj_type("left"), 20, 12);
  p.refresh(g);
  auto u = std::get<0>(torch::linalg_svd(g, false)).narrow(1, 0, 4);
  // Same subspace: projectors onto span agree (sign-free comparison).
  EXPECT_LT(max_abs(p.left().matmul(p.left().t()) - u.matmul(u.t())), 1e-10);
}

TEST(Projector, RandomizedSvdApproachesSvdOnDecayingSpectrum) {
  torch::manual_seed(4);
  const int64_t m = 64, n = 48;
  auto u = std::get<0>(torch::linalg_qr(torch::randn({m, n}, torch::kDouble)));
  auto v = std::get<0>(torch::linalg_qr(torch::randn({n, n}, torch::kDouble)));
  auto s = torch::pow(0.5, torch::arange(n, torch::kDouble));
  auto g = u.matmul(torch::diag(s)).matmul(v.t());
  lp::Projector r(lp::ProjectorOptions().rank(8).proj_type("left").basis("rsvd"),
                  m, n);
  r.refresh(g);
  auto u8 = u.narrow(1, 0, 8);
  EXPECT_LT(max_abs(r.left().matmul(r.left().t()) - u8.matmul(u8.t())), 1e-6);
}

TEST(Projector, RefreshScheduleIsOfficial) {
  lp::Projector p(lp::ProjectorOptions().rank(2).update_proj_gap(5).basis(
                      "gaussian"),
                  6, 4);
  EXPECT_TRUE(p.needs_refresh(3));  // no basis yet
  p.refresh(at::kDouble, at::kCPU);
  std::vector<int64_t> due;
  for (int64_t step = 0; step < 16; ++step)
    if (p.needs_refresh(step)) due.push_back(step);
  EXPECT_EQ(due, (std::vector<int64_t>{0, 5, 10, 15}));
}

TEST(Projector, SeededSketchIsReproducibleAndNeedNotBeStored) {
  for (std::string basis : {"gaussian", "orthogonal"}) {
    auto o = lp::ProjectorOptions().rank(3).seed(7).basis(basis).proj_type(
        "full");
    lp::Projector a(o, 9, 7, /*stream=*/2), b(o, 9, 7, 2), c(o, 9, 7, 3);
    lp::Projector lean(lp::ProjectorOptions(o).cache_sketch(false), 9, 7, 2);
    for (int k = 0; k < 3; ++k) {
      auto before = a.has_basis() ? a.left().clone() : at::Tensor();
      a.refresh(at::kFloat, at::kCPU);
      b.refresh(at::kFloat, at::kCPU);
      c.refresh(at::kFloat, at::kCPU);
      lean.refresh(at::kFloat, at::kCPU);
      EXPECT_TRUE(torch::equal(a.left(), b.left()));
      EXPECT_TRUE(torch::equal(a.right(), b.right()));
      EXPECT_TRUE(torch::equal(a.left(), lean.left()));
      EXPECT_FALSE(torch::equal(a.left(), c.left()));
      if (before.defined()) {
        EXPECT_FALSE(torch::equal(before, a.left()));
      }
    }
    EXPECT_TRUE(lean.state_tensors().empty());
    EXPECT_EQ(a.state_tensors().size(), 2u);
  }
  // Gaussian entries ~ N(0, 1/r): E[P P^T] = I.
  lp::Projector g(lp::ProjectorOptions().rank(40).basis("gaussian").proj_type(
                      "left"),
                  50, 400);
  g.refresh(at::kDouble, at::kCPU);
  auto ppt = g.left().matmul(g.left().t());
  EXPECT_NEAR(ppt.diag().mean().item<double>(), 1.0, 0.15);
  EXPECT_NEAR((ppt - torch::diag(ppt.diag())).mean().item<double>(), 0.0, 0.02);
}

TEST(Projector, SaveLoadRoundTrip) {
  torch::manual_seed(5);
  for (bool cache : {true, false}) {
    auto o = lp::ProjectorOptions().rank(3).basis(cache ? "svd" : "orthogonal")
                 .cache_sketch(cache).seed(11);
    lp::Projector a(o, 8, 5, 1);
    a.refresh(torch::randn({8, 5}));
    a.refresh(torch::randn({8, 5}));
    torch::serialize::OutputArchive out;
    a.save(out, "p/");
    std::stringstream ss;
    out.save_to(ss);
    torch::serialize::InputArchive in;
    in.load_from(ss);
    lp::Projector b(o, 8, 5, 1);
    b.load(in, "p/");
    EXPECT_EQ(b.refresh_count(), 2);
    auto g = torch::randn({8, 5});
    EXPECT_TRUE(torch::equal(a.project(g), b.project(g)));
  }
}

TEST(Projector, OptionValidation) {
  auto expect_msg = [](const lp::ProjectorOptions& o, const std::string& msg) {
    try {
      lp::validate(o);
      ADD_FAILURE() << "no throw for " << msg;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  expect_msg(lp::ProjectorOptions().rank(0), "[projection] rank must be >= 1, got 0");
  expect_msg(lp::ProjectorOptions().update_proj_gap(0), "update_proj_gap must be >= 1");
  expect_msg(lp::ProjectorOptions().scale(-1), "scale must be finite and > 0, got -1");
  expect_msg(lp::ProjectorOptions().proj_type("diag"), "got 'diag'");
  expect_msg(lp::ProjectorOptions().basis("qr"), "basis must be svd, rsvd, gaussian or orthogonal, got 'qr'");
  expect_msg(lp::ProjectorOptions().power_iters(-1), "power_iters must be >= 0");
  lp::Projector p(lp::ProjectorOptions().rank(2), 4, 3);
  EXPECT_THROW(p.project(torch::ones({4, 3})), c10::Error);  // no basis yet
  p.refresh(torch::randn({4, 3}));
  EXPECT_THROW(p.project(torch::ones({3, 4})), c10::Error);
  EXPECT_THROW(p.refresh(torch::ones({3, 4})), c10::Error);
}

TEST(Projector, ForEachFieldVisitsEveryField) {
  lp::ProjectorOptions o;
  std::vector<std::string> names;
  o.for_each_field([&](const char* n, auto&) { names.emplace_back(n); });
  EXPECT_EQ(names, (std::vector<std::string>{
                       "rank", "update_proj_gap", "scale", "proj_type", "basis",
                       "power_iters", "oversample", "seed", "cache_sketch",
                       "proj_dtype"}));
}

namespace lowmem::projection {
namespace {

// A bf16 gradient is upcast in blocks (project) and the update added back in
// row blocks (add_back_to): the results equal upcasting the whole matrix,
// for both one-sided projections, sketched and SVD bases, with the scale.
TEST(Projector, BlockwiseUpcastEqualsWholeMatrix) {
  for (const char* type : {"right", "left"}) {
    for (const char* basis : {"gaussian", "svd"}) {
      const int64_t m = 1536, n = 1100;  // > 1 Mi elements: the blocked path
      auto opts = ProjectorOptions()
                      .rank(8)
                      .proj_type(type)
                      .basis(basis)
                      .scale(0.25)
                      .cache_sketch(false);
      Projector p(opts, m, n, /*stream=*/3);
      torch::manual_seed(7);
      const at::Tensor g = torch::randn({m, n}).to(torch::kBFloat16);
      p.refresh(g);
      const at::Tensor low = p.project(g);
      const at::Tensor whole = p.project(g.to(torch::kFloat));  // one matmul
      ASSERT_EQ(low.scalar_type(), torch::kFloat);
      EXPECT_TRUE(torch::allclose(low, whole, 1e-5, 1e-5))
          << type << " " << basis << ": max diff "
          << (low - whole).abs().max().item<double>();
      at::Tensor w = torch::randn({m, n}).to(torch::kBFloat16);
      at::Tensor expect = w.clone();
      expect.add_(p.project_back(low).to(torch::kBFloat16));
      p.add_back_to(w, low);
      EXPECT_TRUE(torch::equal(w, expect) ||
                  (w.to(torch::kFloat) - expect.to(torch::kFloat))
                          .abs()
                          .max()
                          .item<double>() <= 1e-2)
          << type << " " << basis;
      // Most entries are bitwise the same rounding.
      EXPECT_GT(w.eq(expect).to(torch::kFloat).mean().item<double>(), 0.999)
          << type << " " << basis;
    }
  }
  Projector p(ProjectorOptions().rank(4), 8, 6);
  p.refresh(torch::randn({8, 6}));
  at::Tensor wrong = torch::zeros({6, 8});
  EXPECT_THROW(p.add_back_to(wrong, p.project(torch::randn({8, 6}))),
               c10::Error);
}

}  // namespace
}  // namespace lowmem::projection

namespace lowmem::projection {
namespace {

// proj_dtype "grad" (galore_torch's GaLoreProjector): the basis is computed
// in fp32 and cast to the bf16 gradient's dtype; the products run in bf16.
// The default keeps fp32. Both project the same subspace.
TEST(Projector, ProjDtypeGradFollowsTheGradient) {
  torch::manual_seed(11);
  const at::Tensor g = torch::randn({64, 40}).to(torch::kBFloat16);
  for (const char* basis : {"svd", "gaussian"}) {
    Projector fp32(ProjectorOptions().rank(8).basis(basis), 64, 40, 1);
    Projector grad(ProjectorOptions().rank(8).basis(basis).proj_dtype("grad"),
                   64, 40, 1);
    fp32.refresh(g);
    grad.refresh(g);
    EXPECT_EQ(fp32.dtype(), torch::kFloat) << basis;
    EXPECT_EQ(grad.dtype(), torch::kBFloat16) << basis;
    // The official basis is the fp32 one rounded to bf16.
    EXPECT_TRUE(torch::equal(grad.right(), fp32.right().to(torch::kBFloat16)))
        << basis;
    const at::Tensor low = grad.project(g);
    EXPECT_EQ(low.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(low, at::matmul(g, grad.right()))) << basis;
    EXPECT_TRUE(
        torch::allclose(low.to(torch::kFloat), fp32.project(g), 0.05, 0.05))
        << basis;
    at::Tensor w = torch::zeros({64, 40}, torch::kBFloat16);
    grad.add_back_to(w, low);
    EXPECT_TRUE(torch::allclose(w.to(torch::kFloat),
                                grad.project_back(low).to(torch::kFloat)))
        << basis;
  }
  // fp32 and fp64 gradients are unaffected.
  Projector p(ProjectorOptions().rank(4).proj_dtype("grad"), 8, 6);
  p.refresh(torch::randn({8, 6}));
  EXPECT_EQ(p.dtype(), torch::kFloat);
  try {
    validate(ProjectorOptions().proj_dtype("bfloat16"));
    ADD_FAILURE() << "proj_dtype bfloat16 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "proj_dtype must be float32 or grad, got 'bfloat16'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lowmem::projection
