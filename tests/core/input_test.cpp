// Bounded reading, quoting and JSON limits (core/input.h, core/json.h).
#include "lowmem/core/input.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "lowmem/core/json.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace {

using lowmem::testing::expect_error_containing;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(Quote, ShortValuesAreKeptAndControlBytesEscaped) {
  EXPECT_EQ(lowmem::quote("abc"), "'abc'");
  EXPECT_EQ(lowmem::clip("a\nb\tc\x01\x7f"), "a\\nb\\tc\\x01\\x7F");
  EXPECT_EQ(lowmem::quote(""), "''");
}

TEST(Quote, LongValuesAreCutWithAnEllipsisAndTheirLength) {
  const std::string big(20'000'000, 'x');
  const std::string q = lowmem::quote(big);
  EXPECT_EQ(q, "'" + std::string(200, 'x') + "...' (20000000 bytes)");
  EXPECT_EQ(lowmem::clip(big).size(), 203u);
}

TEST(Quote, CutsAtAUtf8CharacterBoundary) {
  // 'é' is two bytes; 100 of them are 200 bytes, 101 are 202.
  std::string s;
  for (int i = 0; i < 101; ++i) s += "\xC3\xA9";
  const std::string c = lowmem::clip(std::string("x") + s);
  // "x" + 99 whole characters (199 bytes), never half a character.
  EXPECT_EQ(c.size(), 1 + 99 * 2 + 3u);
  EXPECT_EQ(c.substr(c.size() - 3), "...");
}

TEST(SplitList, KeepsNonEmptyItemsAsWritten) {
  using V = std::vector<std::string>;
  EXPECT_EQ(lowmem::split_list("q_proj,v_proj"), (V{"q_proj", "v_proj"}));
  EXPECT_EQ(lowmem::split_list(",a,,b,"), (V{"a", "b"}));
  EXPECT_EQ(lowmem::split_list(""), V{});
  EXPECT_EQ(lowmem::split_list(",,"), V{});
  EXPECT_EQ(lowmem::split_list(" a , b"), (V{" a ", " b"}));  // no trimming
  EXPECT_EQ(lowmem::split_list("a;b", ';'), (V{"a", "b"}));
  EXPECT_EQ(lowmem::split_list("single"), V{"single"});
}

TEST(ReadFileLimited, ReadsAFileWithinTheLimit) {
  const std::string dir = lowmem::testing::fresh_temp_dir(
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  const std::string p = dir + "/a.txt";
  std::ofstream(p) << "hello";
  EXPECT_EQ(lowmem::read_file_limited(p, 5, "[test] file"), "hello");
}

TEST(ReadFileLimited, ARegularFileOverTheLimitFailsBeforeReading) {
  const std::string dir = lowmem::testing::fresh_temp_dir(
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  const std::string p = dir + "/a.txt";
  std::ofstream(p) << "hello!";
  const std::string e =
      error_of([&] { lowmem::read_file_limited(p, 5, "[test] recipe"); });
  EXPECT_NE(e.find("[test] recipe '" + p +
                   "': its 6 bytes exceed the limit "
                   "of 5 bytes"),
            std::string::npos)
      << e;
}

TEST(ReadFileLimited, DevZeroStopsOneChunkPastTheLimit) {
  // /dev/zero reports size 0 and never ends: the read must stop at the limit.
  const std::string e = error_of([&] {
    lowmem::read_file_limited("/dev/zero", 1 << 20, "[test] corpus");
  });
  EXPECT_NE(e.find("'/dev/zero': more than the limit of 1048576 bytes (1 MiB)"),
            std::string::npos)
      << e;
}

TEST(ReadFileLimited, AFifoIsReadUpToTheLimit) {
  const std::string dir = lowmem::testing::fresh_temp_dir(
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  const std::string p = dir + "/fifo";
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  // A writer that would go on for ever (until the reader closes; its next
  // write then fails with EPIPE instead of killing the test with SIGPIPE).
  ::signal(SIGPIPE, SIG_IGN);
  std::thread writer([p] {
    FILE* f = std::fopen(p.c_str(), "w");
    if (f == nullptr) return;
    std::string block(4096, 'a');
    while (std::fwrite(block.data(), 1, block.size(), f) == block.size()) {
    }
    std::fclose(f);
  });
  const std::string e =
      error_of([&] { lowmem::read_file_limited(p, 100000, "[test] fifo"); });
  writer.join();
  EXPECT_NE(e.find("more than the limit of 100000 bytes"), std::string::npos)
      << e;
}

TEST(ReadFileLimited, DirectoriesAndMissingFilesAreNamed) {
  const std::string dir = lowmem::testing::fresh_temp_dir(
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  expect_error_containing(
      [&] { lowmem::read_file_limited(dir, 10, "[test] x"); },
      "is a directory");
  expect_error_containing(
      [&] { lowmem::read_file_limited(dir + "/nope", 10, "[test] x"); },
      "cannot open: No such file");
}

TEST(ReadFileLimited, AcceptCanStopEarly) {
  std::string out;
  int chunks = 0;
  const bool done = lowmem::read_file_limited(
      "/dev/zero", 1ull << 40, "[test] corpus", out, [&](std::string_view c) {
        ++chunks;
        return c.find('\0') == std::string_view::npos;
      });
  EXPECT_FALSE(done);
  EXPECT_EQ(chunks, 1);
  EXPECT_TRUE(out.empty());
}

TEST(JsonDepth, CountsNestingAndSkipsStrings) {
  EXPECT_EQ(lowmem::json_nesting_depth("{}"), 1);
  EXPECT_EQ(lowmem::json_nesting_depth("[[1],[[2]]]"), 3);
  EXPECT_EQ(lowmem::json_nesting_depth(R"({"a": "[[[[\"[["})"), 1);
  EXPECT_EQ(lowmem::json_nesting_depth("1"), 0);
  size_t at = 0;
  EXPECT_EQ(lowmem::json_nesting_depth(std::string(1000, '['), 10, &at), 11);
  EXPECT_EQ(at, 10u);
}

TEST(ParseJson, DeepNestingIsRefusedBeforeParsing) {
  // A few hundred thousand '[' overflowed the stack (in dump() of the error).
  const std::string deep = std::string(300000, '[') + std::string(300000, ']');
  const std::string e =
      error_of([&] { lowmem::parse_json(deep, "deep.json"); });
  EXPECT_NE(e.find("[json] 'deep.json': nesting deeper than the limit of 128 "
                   "levels (at byte 128)"),
            std::string::npos)
      << e;
  // 128 levels are fine.
  const std::string ok = std::string(128, '[') + std::string(128, ']');
  EXPECT_TRUE(lowmem::parse_json(ok, "ok.json").is_array());
}

TEST(ParseJson, SizeLimitAndSyntaxErrorsAreClipped) {
  lowmem::JsonLimits small;
  small.max_bytes = 10;
  expect_error_containing(
      [&] { lowmem::parse_json("[1,2,3,4,5,6]", "x.json", small); },
      "13 bytes exceed the limit of 10 bytes");
  // A 1 MB bad literal: nlohmann echoes the token, we cut it.
  const std::string bad = "[" + std::string(1 << 20, 't') + "]";
  const std::string e = error_of([&] { lowmem::parse_json(bad, "b.json"); });
  EXPECT_NE(e.find("invalid JSON"), std::string::npos) << e;
  EXPECT_LT(e.size(), 600u);
}

TEST(ParseJson, DuplicateKeysAtAnyDepthWhenAsked) {
  lowmem::JsonLimits strict;
  strict.reject_duplicate_keys = true;
  EXPECT_NO_THROW(
      lowmem::parse_json(R"({"a":{"b":1},"c":{"b":2}})", "x", strict));
  expect_error_containing(
      [&] { lowmem::parse_json(R"({"a":{"b":1,"b":2}})", "x", strict); },
      "duplicate key 'b'");
  EXPECT_EQ(lowmem::parse_json(R"({"b":1,"b":2})", "x")["b"], 2);
}

TEST(ClipJson, BoundedForHugeAndDeepValues) {
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  const std::string c = lowmem::clip_json(big);
  EXPECT_EQ(c.substr(0, 8), "[0,1,2,3");
  EXPECT_EQ(c.size(), 203u);
  EXPECT_EQ(c.substr(200), "...");
  // Deeper than the clip depth: written as [...] with no recursion beyond.
  nlohmann::json deep = 1;
  for (int i = 0; i < 100; ++i) deep = nlohmann::json::array({deep});
  EXPECT_EQ(lowmem::clip_json(deep),
            std::string(16, '[') + "[...]" + std::string(16, ']'));
  EXPECT_EQ(lowmem::clip_json(nlohmann::json("a\"b")), "\"a\\\"b\"");
  EXPECT_EQ(lowmem::clip_json(nlohmann::json::parse(R"({"k":[1,"x",null]})")),
            R"({"k":[1,"x",null]})");
}

TEST(ReadJsonFile, LimitsTheFileBeforeParsing) {
  const std::string dir = lowmem::testing::fresh_temp_dir(
      ::testing::UnitTest::GetInstance()->current_test_info()->name());
  const std::string p = dir + "/c.json";
  std::ofstream(p) << R"({"a": 1})";
  EXPECT_EQ(lowmem::read_json_file(p)["a"], 1);
  lowmem::JsonLimits tiny;
  tiny.max_bytes = 4;
  expect_error_containing([&] { lowmem::read_json_file(p, tiny); },
                          "exceed the limit of 4 bytes");
  expect_error_containing([&] { lowmem::read_json_file("/dev/zero"); },
                          "more than the limit of 16777216 bytes");
}

}  // namespace
