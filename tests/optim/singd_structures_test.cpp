// Every SINGD structure against its dense equivalent (float64): products,
// transpose products, projection, from_inner, add-to-diagonal, traces, and
// the stored element count.
#include <torch/torch.h>

#include <gtest/gtest.h>

#include "lowmem/optim/structures/structured_matrix.h"

namespace {

namespace st = lowmem::optim::structures;

const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

// A structure with random stored numbers.
st::StructuredPtr random_like(const std::string& key, int64_t n, bool fix = false) {
  st::StructureOptions so;
  so.correct_block_transpose = fix;
  auto z = st::make_structured(key, n, kF64, false, so);
  std::vector<at::Tensor> ts;
  for (auto& t : z->tensors()) ts.push_back(torch::randn_like(t));
  return z->with_tensors(ts);
}

at::Tensor sym(int64_t n) {
  at::Tensor a = torch::randn({n, n}, kF64);
  return a + a.t();
}

// Reference projection of a symmetric matrix, from the support of a random
// instance: kept entries whose mirror is outside the support fold the mirror
// in (the official factor 2); Toeplitz averages each diagonal pair.
at::Tensor reference_projection(const std::string& key, const at::Tensor& m,
                                const at::Tensor& support_dense) {
  int64_t n = m.size(0);
  if (key == "triltoeplitz" || key == "triutoeplitz") {
    at::Tensor d = torch::zeros({n}, kF64);
    d[0] = m.diagonal().mean();
    for (int64_t k = 1; k < n; ++k)
      d[k] = (m.diagonal(k).sum() + m.diagonal(-k).sum()) / double(n - k);
    at::Tensor out = torch::zeros({n, n}, kF64);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        int64_t k = key == "triltoeplitz" ? i - j : j - i;
        if (k >= 0) out[i][j] = d[k];
      }
    return out;
  }
  at::Tensor mask = support_dense.ne(0).to(torch::kDouble);
  return mask * (m + (1 - mask.t()) * m.t());
}

int64_t expected_numel(const std::string& key, int64_t n) {
  if (key == "dense") return n * n;
  if (key == "diagonal" || key == "triltoeplitz" || key == "triutoeplitz") return n;
  if (key == "block3diagonal") return (n / 3) * 9 + (n % 3) * (n % 3);
  if (key == "block30diagonal") return (n / 30) * 900 + (n % 30) * (n % 30);
  if (key == "hierarchical15_15") {
    if (n <= 15) return n * n;
    if (n <= 30) return 225 + 15 * (n - 15) + (n - 15) * (n - 15);
    return 31 * n - 255;
  }
  if (key == "hierarchical3_2") {
    if (n <= 3) return n * n;
    if (n <= 5) return 9 + 3 * (n - 3) + (n - 3) * (n - 3);
    return 3 * 3 + 3 * (n - 3) + (n - 5) + 2 * (n - 5) + 4;
  }
  return 2 * n - 1;  // arrow-triangular
}

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_TRUE(torch::allclose(a, b, 1e-9, 1e-9))
      << what << "\n got\n" << a << "\n want\n" << b;
}

class StructureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StructureTest, MatchesDenseEquivalent) {
  const std::string key = GetParam();
  const bool block = key.rfind("block", 0) == 0;
  for (int64_t n : {1, 2, 5, 7, 17, 34, 65}) {
    for (bool fix : {false, true}) {
      if (fix && !block) continue;
      torch::manual_seed(n);
      const std::string ctx = key + " n=" + std::to_string(n) + (fix ? " fix" : "");
      auto s = random_like(key, n, fix);
      auto s2 = random_like(key, n, fix);
      at::Tensor d = s->to_dense(), d2 = s2->to_dense();
      at::Tensor x = torch::randn({n, 3}, kF64);
      // products
      expect_close(s->matmul(x), d.matmul(x), ctx + " S X");
      at::Tensor dt = (block && !fix) ? d : d.t();  // official quirk
      expect_close(s->rmatmat(x), dt.matmul(x), ctx + " S^T X");
      expect_close(s->matmul(*s2)->to_dense(), d.matmul(d2), ctx + " S S'");
      // projection of a symmetric matrix
      at::Tensor m = sym(n);
      auto p = s->project(m);
      EXPECT_EQ(p->key(), s->key());
      expect_close(p->to_dense(), reference_projection(key, m, d), ctx + " Pi(M)");
      // from_inner
      expect_close(
          s->from_inner(x)->to_dense(),
          reference_projection(key, dt.matmul(x).matmul(dt.matmul(x).t()), d),
          ctx + " from_inner(X)");
      at::Tensor dtd = (block && !fix) ? d.matmul(d.t()) : d.t().matmul(d);
      expect_close(
          s->from_inner({})->to_dense(), reference_projection(key, dtd, d),
          ctx + " from_inner()");
      // traces, diagonal, in-place arithmetic
      EXPECT_NEAR(s->average_trace(), d.trace().item<double>() / n, 1e-10) << ctx;
      auto c = s->clone();
      c->diag_add_(0.5);
      expect_close(c->to_dense(), d + 0.5 * torch::eye(n, kF64), ctx + " diag_add_");
      expect_close(s->to_dense(), d, ctx + " clone is deep");
      c = s->clone();
      c->add_(*s2, -2.0);
      c->mul_(3.0);
      expect_close(c->to_dense(), 3.0 * (d - 2.0 * d2), ctx + " add_/mul_");
      EXPECT_NEAR(s->infinity_vector_norm(), d.abs().max().item<double>(), 1e-12)
          << ctx;
      // identity and zeros
      expect_close(
          st::make_structured(key, n, kF64, true)->to_dense(), torch::eye(n, kF64),
          ctx + " eye");
      EXPECT_EQ(s->zeros_like()->to_dense().abs().sum().item<double>(), 0.0);
      // storage: only the free numbers
      EXPECT_EQ(s->numel(), expected_numel(key, n)) << ctx;
      EXPECT_EQ(st::structured_numel(key, n), expected_numel(key, n)) << ctx;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllStructures,
    StructureTest,
    ::testing::Values(
        "dense", "diagonal", "block3diagonal", "block30diagonal",
        "hierarchical3_2", "hierarchical15_15", "triltoeplitz", "triutoeplitz",
        "trilbottomrightdiag", "triltopleftdiag", "triubottomrightdiag",
        "triutopleftdiag"));

// The Toeplitz products run in row panels of 256: sizes with several panels
// and a partial last one, against the dense equivalent (float64).
TEST(Structures, ToeplitzProductsSpanSeveralPanels) {
  // Toeplitz projection of a symmetric m: d[0] = mean diagonal, d[k] = mean
  // of the k-th and -k-th diagonals.
  auto toeplitz_diags = [](const at::Tensor& m) {
    int64_t n = m.size(0);
    at::Tensor d = torch::zeros({n}, kF64);
    d[0] = m.diagonal().mean();
    for (int64_t k = 1; k < n; ++k)
      d[k] = (m.diagonal(k).sum() + m.diagonal(-k).sum()) / double(n - k);
    return d;
  };
  for (const char* key : {"triltoeplitz", "triutoeplitz"}) {
    for (int64_t n : {256, 257, 600}) {
      torch::manual_seed(n);
      const std::string ctx = std::string(key) + " n=" + std::to_string(n);
      auto s = random_like(key, n), s2 = random_like(key, n);
      at::Tensor d = s->to_dense(), d2 = s2->to_dense();
      at::Tensor x = torch::randn({n, 5}, kF64);
      expect_close(s->matmul(x), d.matmul(x), ctx + " S X");
      expect_close(s->rmatmat(x), d.t().matmul(x), ctx + " S^T X");
      expect_close(s->rmatmat(x.t().contiguous().t()), d.t().matmul(x), ctx + " strided X");
      expect_close(s->matmul(*s2)->to_dense(), d.matmul(d2), ctx + " S S'");
      at::Tensor z = d.t().matmul(x);
      expect_close(
          s->from_inner(x)->tensors()[0], toeplitz_diags(z.matmul(z.t())),
          ctx + " from_inner(X)");
      expect_close(
          s->from_inner({})->tensors()[0], toeplitz_diags(d.t().matmul(d)),
          ctx + " from_inner()");
      at::Tensor m = sym(n);
      expect_close(s->project(m)->tensors()[0], toeplitz_diags(m), ctx + " Pi(M)");
    }
  }
}

TEST(Structures, DiagonalAndToeplitzStorageIsLinear) {
  EXPECT_EQ(st::structured_numel("diagonal", 4096), 4096);
  EXPECT_EQ(st::structured_numel("triltoeplitz", 4096), 4096);
  EXPECT_EQ(st::structured_numel("hierarchical15_15", 4096), 31 * 4096 - 255);
  EXPECT_EQ(st::structured_numel("trilbottomrightdiag", 4096), 2 * 4096 - 1);
  EXPECT_EQ(st::structured_numel("dense", 64), 64 * 64);
}

TEST(Structures, UnknownKeyIsRejectedByName) {
  try {
    st::check_structure_key("block0diagonal");
    FAIL() << "no throw";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown structure 'block0diagonal'"),
              std::string::npos);
  }
  EXPECT_THROW(st::check_structure_key("hierarchical15"), c10::Error);
  EXPECT_THROW(st::check_structure_key("Dense"), c10::Error);
}

// bf16 Toeplitz factors on CPU: products, from_inner and S S' compute in
// fp32 and round the result to bf16 (no n x n temporary either way).
TEST(Structures, Bf16ToeplitzComputesInFp32AndReturnsBf16) {
  for (const char* key : {"triltoeplitz", "triutoeplitz"}) {
    torch::manual_seed(3);
    const int64_t n = 300;
    auto f32 = st::make_structured(key, n, kF64.dtype(torch::kFloat), false);
    at::Tensor d = torch::randn({n}).to(torch::kBFloat16).to(torch::kFloat);
    auto s32 = f32->with_tensors({d});
    auto s16 = f32->with_tensors({d.to(torch::kBFloat16)});
    at::Tensor x = torch::randn({n, 4});
    at::Tensor y = s16->matmul(x);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16) << key;
    EXPECT_TRUE(torch::equal(y, s32->matmul(x).to(torch::kBFloat16))) << key;
    EXPECT_TRUE(torch::equal(s16->rmatmat(x), s32->rmatmat(x).to(torch::kBFloat16))) << key;
    EXPECT_TRUE(torch::equal(s16->from_inner(x)->tensors()[0],
                             s32->from_inner(x)->tensors()[0].to(torch::kBFloat16)))
        << key;
    EXPECT_TRUE(torch::equal(s16->matmul(*s16)->tensors()[0],
                             s32->matmul(*s32)->tensors()[0].to(torch::kBFloat16)))
        << key;
  }
}

// Products need the same structure (key) and dim on both sides.
TEST(Structures, ProductOfDifferentStructuresIsRejected) {
  auto expect_msg = [](const st::StructuredMatrix& a, const st::StructuredMatrix& b,
                       const std::string& msg) {
    try {
      a.matmul(b);
      FAIL() << "no throw: " << msg;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  auto mk = [](const char* key, int64_t n) { return st::make_structured(key, n, kF64, true); };
  expect_msg(*mk("triltoeplitz", 5), *mk("triutoeplitz", 5),
             "cannot multiply triltoeplitz(5) by triutoeplitz(5)");
  expect_msg(*mk("block3diagonal", 7), *mk("block2diagonal", 7),
             "cannot multiply block3diagonal(7) by block2diagonal(7)");
  expect_msg(*mk("dense", 4), *mk("dense", 5), "cannot multiply dense(4) by dense(5)");
  expect_msg(*mk("diagonal", 4), *mk("dense", 4), "cannot multiply diagonal(4) by dense(4)");
  expect_msg(*mk("trilbottomrightdiag", 4), *mk("triltopleftdiag", 4),
             "cannot multiply trilbottomrightdiag(4) by triltopleftdiag(4)");
  expect_msg(*mk("hierarchical3_2", 9), *mk("hierarchical2_3", 9),
             "cannot multiply hierarchical3_2(9) by hierarchical2_3(9)");
}

// The official product of a block-diagonal matrix with a dense one runs in the
// lower precision of the operands and returns the block dtype.
TEST(Structures, MixedPrecisionBlockProductReturnsBlockDtype) {
  auto s = st::make_structured("block3diagonal", 7, kF64.dtype(torch::kFloat), true);
  at::Tensor x = torch::randn({7, 2}).to(torch::kBFloat16);
  at::Tensor y = s->matmul(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(y, x.to(torch::kFloat)));
}

}  // namespace
