// Token files: round trip, validation of damaged files, atomic writing, and
// the corpus cache (built once, reused, rebuilt when the source changes).
#include "lowmem/text/token_cache.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "reference.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using text::TokenFile;
using text::TokenFileWriter;
using text::TokenId;

const std::string kKey(64, 'a');

TEST(TokenFile, RoundTripWithDocumentsAndMask) {
  const auto dir = fresh_temp_dir("text_tokfile");
  const std::string path = (dir / "x.tokens").string();
  {
    TokenFileWriter w(path, kKey, 100, /*with_mask=*/true);
    const std::vector<TokenId> a{1, 2, 3}, b{}, c{99, 0};
    const std::vector<uint8_t> ma{0, 1, 1}, mc{1, 0};
    w.add_document(a.data(), a.size(), ma.data());
    w.add_document(b.data(), 0, nullptr);
    w.add_document(c.data(), c.size(), mc.data());
    EXPECT_FALSE(fs::exists(path))
        << "nothing at the final path before finish()";
    const TokenFile f = w.finish();
    EXPECT_EQ(f.size(), 5);
  }
  const TokenFile f = TokenFile::open(path);
  EXPECT_EQ(f.size(), 5);
  EXPECT_EQ(f.documents(), 3);
  EXPECT_EQ(f.vocab_size(), 100);
  EXPECT_EQ(f.key(), kKey);
  EXPECT_EQ(f.document(0), (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(f.document(1), (std::pair<int64_t, int64_t>{3, 3}));
  EXPECT_EQ(f.document(2), (std::pair<int64_t, int64_t>{3, 5}));
  const at::Tensor t = f.tokens_tensor();
  EXPECT_EQ(t.scalar_type(), at::kInt);
  EXPECT_EQ(
      std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + 5),
      (std::vector<int32_t>{1, 2, 3, 99, 0}));
  const at::Tensor m = f.mask_tensor();
  EXPECT_EQ(m.sum().item<int64_t>(), 3);
  // The tensor keeps the mapping alive past the TokenFile.
  at::Tensor kept;
  { kept = TokenFile::open(path).tokens_tensor(); }
  EXPECT_EQ(kept[3].item<int32_t>(), 99);
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename(), "x.tokens")
        << "temporary files left: " << e.path();
  }
}

TEST(TokenFile, DamagedFilesAreRejectedNamingTheProblem) {
  const auto dir = fresh_temp_dir("text_tokfile_bad");
  const std::string path = (dir / "x.tokens").string();
  {
    TokenFileWriter w(path, kKey, 10, false);
    w.add_document({1, 2, 3, 4});
    w.finish();
  }
  const std::string good = read_file(path);
  auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  };
  write(good.substr(0, good.size() - 1));
  expect_error_containing([&] { TokenFile::open(path); },
                          "but its header describes");
  std::string bad = good;
  bad[0] = 'X';
  write(bad);
  expect_error_containing([&] { TokenFile::open(path); }, "bad magic");
  bad = good;
  bad[104] = 50;  // first token 50 >= vocabulary 10
  write(bad);
  expect_error_containing([&] { TokenFile::open(path); },
                          "token 0 = 50 is outside the vocabulary");
  bad = good;
  bad[80] = static_cast<char>(0xFF);  // token count
  write(bad);
  expect_error_containing([&] { TokenFile::open(path); }, "do not fit");
  write("short");
  expect_error_containing([&] { TokenFile::open(path); },
                          "shorter than its header");
  expect_error_containing([&] { TokenFile::open((dir / "missing").string()); },
                          "cannot open");
  TokenFileWriter w((dir / "y.tokens").string(), kKey, 10, false);
  expect_error_containing(
      [&] {
        w.add_document({3, 10});
      },
      "token 10 is outside the vocabulary of 10");
}

TEST(TokenFile, AbandonedWriterLeavesNothing) {
  const auto dir = fresh_temp_dir("text_tokfile_abandon");
  {
    TokenFileWriter w((dir / "x.tokens").string(), kKey, 10, true);
    const std::vector<TokenId> a{1};
    const std::vector<uint8_t> m{1};
    w.add_document(a.data(), 1, m.data());
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(TokenCache, CorpusIsTokenizedOnceAndRebuiltWhenItChanges) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  const auto dir = fresh_temp_dir("text_corpus_cache");
  const auto tok = text::Tokenizer::from_file(lenml_model_dir("llama3"));
  const std::string a = (dir / "a.txt").string(), b = (dir / "b.txt").string();
  std::ofstream(a) << "Hello world.\nSecond line here.\n";
  std::string big;
  for (int i = 0; i < 400; ++i)
    big += "Line " + std::to_string(i) + " of a longer file.\n";
  std::ofstream(b) << big;
  const auto opts = text::CorpusTokenOptions()
                        .cache_dir((dir / "cache").string())
                        .max_document_bytes(4096);
  const TokenFile f = text::tokenize_files_cached(tok, {a, b}, opts);
  // Documents: a.txt whole, b.txt (about 11 KB) cut at line ends into <= 4 KiB
  // pieces.
  ASSERT_GE(f.documents(), 4);
  std::vector<TokenId> expect = tok.encode("Hello world.\nSecond line here.\n");
  auto [b0, e0] = f.document(0);
  EXPECT_EQ(std::vector<TokenId>(f.tokens() + b0, f.tokens() + e0), expect);
  size_t bytes = 0;
  for (int64_t d = 1; d < f.documents(); ++d) {
    auto [bd, ed] = f.document(d);
    const std::vector<TokenId> ids(f.tokens() + bd, f.tokens() + ed);
    const std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
    EXPECT_EQ(ids, tok.encode(text))
        << "document " << d << " is its text encoded alone";
    EXPECT_LE(text.size(), 4096u);
    EXPECT_EQ(text.back(), '\n') << "cut at a line end";
    bytes += text.size();
  }
  EXPECT_EQ(bytes, big.size());
  // A second call reuses the file; a changed source gets a new key.
  const auto mtime = fs::last_write_time(f.path());
  const TokenFile again = text::tokenize_files_cached(tok, {a, b}, opts);
  EXPECT_EQ(again.path(), f.path());
  EXPECT_EQ(fs::last_write_time(again.path()), mtime);
  std::ofstream(a) << "Hello world!\n";
  const TokenFile changed = text::tokenize_files_cached(tok, {a, b}, opts);
  EXPECT_NE(changed.key(), f.key());
  EXPECT_EQ(changed.document(0).second,
            static_cast<int64_t>(tok.encode("Hello world!\n").size()));
  // A damaged cache entry is rebuilt.
  std::ofstream(changed.path(), std::ios::trunc) << "garbage";
  EXPECT_EQ(text::tokenize_files_cached(tok, {a, b}, opts).size(),
            changed.size());
  std::ofstream(a, std::ios::trunc) << "bad \xff byte";
  expect_error_containing([&] { text::tokenize_files_cached(tok, {a}, opts); },
                          "is not valid UTF-8 at byte 4");
}

}  // namespace
}  // namespace lowmem::testing
