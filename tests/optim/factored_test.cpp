// optim/factored.h against dense float64 references written here.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/optim/factored.h"

namespace f = lowmem::optim::factored;

namespace {

TEST(Factored, Shapes) {
  EXPECT_FALSE(f::is_factored({7}));
  EXPECT_TRUE(f::is_factored({3, 4}));
  EXPECT_EQ(f::row_shape({3, 4, 5}), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(f::col_shape({3, 4, 5}), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(f::row_shape({6, 2}), (std::vector<int64_t>{6}));
  EXPECT_EQ(f::col_shape({6, 2}), (std::vector<int64_t>{2}));
  EXPECT_THROW(f::row_shape({5}), c10::Error);
}

TEST(Factored, EmaRowColMatchesDenseMeans) {
  torch::manual_seed(1);
  auto q = torch::rand({4, 6, 5}, torch::kDouble) + 0.1;
  auto row = torch::rand({4, 6}, torch::kDouble);
  auto col = torch::rand({4, 5}, torch::kDouble);
  auto row0 = row.clone(), col0 = col.clone();
  f::ema_row_col(row, col, q, 0.7);
  // Dense reference: explicit loops over the last two dims.
  for (int b = 0; b < 4; ++b) {
    for (int i = 0; i < 6; ++i) {
      double s = 0;
      for (int j = 0; j < 5; ++j) s += q[b][i][j].item<double>();
      EXPECT_NEAR(row[b][i].item<double>(),
                  0.7 * row0[b][i].item<double>() + 0.3 * s / 5, 1e-14);
    }
    for (int j = 0; j < 5; ++j) {
      double s = 0;
      for (int i = 0; i < 6; ++i) s += q[b][i][j].item<double>();
      EXPECT_NEAR(col[b][j].item<double>(),
                  0.7 * col0[b][j].item<double>() + 0.3 * s / 6, 1e-14);
    }
  }
}

TEST(Factored, ApproxRsqrtIsRsqrtOfDenseSecondMoment) {
  torch::manual_seed(2);
  auto row = torch::rand({7}, torch::kDouble) + 0.05;
  auto col = torch::rand({9}, torch::kDouble) + 0.05;
  // V_hat = R C / (1^T R) with R, C as sums (paper) = outer(row, col)/mean(row)
  // with means (code): check element by element in float64.
  const double mean_r = row.mean().item<double>();
  auto pre = f::approx_rsqrt(row, col);
  auto dense = f::dense_second_moment(row, col);
  ASSERT_EQ(pre.sizes(), (std::vector<int64_t>{7, 9}));
  for (int i = 0; i < 7; ++i) {
    for (int j = 0; j < 9; ++j) {
      const double v = row[i].item<double>() * col[j].item<double>() / mean_r;
      EXPECT_NEAR(dense[i][j].item<double>(), v, 1e-14 * v);
      EXPECT_NEAR(pre[i][j].item<double>(), 1 / std::sqrt(v), 1e-12);
    }
  }
}

TEST(Factored, ExactForRankOneSecondMoment) {
  // If G^2 is rank one (G^2 = a b^T), the factored estimate from its row and
  // column means reproduces G^2 exactly.
  auto a = torch::tensor({1.0, 2.0, 0.5, 3.0}, torch::kDouble);
  auto b = torch::tensor({0.25, 4.0, 1.5}, torch::kDouble);
  auto g2 = torch::outer(a, b);
  auto row = g2.mean(-1), col = g2.mean(-2);
  EXPECT_TRUE(torch::allclose(f::dense_second_moment(row, col), g2, 1e-14, 0));
}

TEST(Factored, BatchedOverLeadingDims) {
  torch::manual_seed(3);
  auto row = torch::rand({2, 3, 4}, torch::kDouble) + 0.1;
  auto col = torch::rand({2, 3, 5}, torch::kDouble) + 0.1;
  auto pre = f::approx_rsqrt(row, col);
  ASSERT_EQ(pre.sizes(), (std::vector<int64_t>{2, 3, 4, 5}));
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 3; ++b) {
      auto slice = f::approx_rsqrt(row[a][b], col[a][b]);
      EXPECT_TRUE(torch::allclose(pre[a][b], slice, 1e-14, 0));
    }
  }
}

TEST(Factored, RmsAndClipDivisor) {
  auto u = torch::tensor({3.0, 4.0, 0.0, 0.0}, torch::kDouble);  // rms 2.5
  EXPECT_NEAR(f::rms(u).item<double>(), 2.5, 1e-15);
  EXPECT_NEAR(f::clip_divisor(u, 1.0).item<double>(), 2.5, 1e-15);
  EXPECT_NEAR(f::clip_divisor(u, 5.0).item<double>(), 1.0, 1e-15);
  EXPECT_EQ(f::clip_divisor(u, 1.0).dim(), 0);
}

}  // namespace
