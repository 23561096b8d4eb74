// The split-pattern regex engine: Oniguruma semantics on the patterns real
// tokenizers use, and one clear error per unsupported construct.
#include "lowmem/text/regex.h"

#include <gtest/gtest.h>

#include "testing/errors.h"

namespace lowmem::testing {
namespace {

using text::Regex;
using Spans = std::vector<std::pair<size_t, size_t>>;

std::vector<std::string> pieces(const Regex& re, const std::string& s) {
  std::vector<std::string> out;
  for (auto [b, e] : re.find_all(s)) out.push_back(s.substr(b, e - b));
  return out;
}

const char* kGpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
    "?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char* kLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

TEST(Regex, Gpt2PatternSplitsWordsSpacesAndContractions) {
  Regex re(kGpt2);
  EXPECT_EQ(pieces(re, "Hello world, it's 2024!"),
            (std::vector<std::string>{"Hello", " world", ",", " it", "'s",
                                      " 2024", "!"}));
  // \s+(?!\S) leaves the last space to the next word.
  EXPECT_EQ(pieces(re, "a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(pieces(re, "end   "), (std::vector<std::string>{"end", "   "}));
  EXPECT_EQ(pieces(re, "日本語 テキスト"),
            (std::vector<std::string>{"日本語", " テキスト"}));
}

TEST(Regex, Llama3PatternGroupsDigitsByThreeAndFoldsContractions) {
  Regex re(kLlama3);
  EXPECT_EQ(pieces(re, "1234567"),
            (std::vector<std::string>{"123", "456", "7"}));
  EXPECT_EQ(pieces(re, "I'M HERE"),
            (std::vector<std::string>{"I", "'M", " HERE"}));
  EXPECT_EQ(pieces(re, "x.\n\ny"),
            (std::vector<std::string>{"x", ".\n\n", "y"}));
  EXPECT_EQ(pieces(re, "a \n b"), (std::vector<std::string>{"a", " \n", " b"}));
  // Unicode case folding, as Oniguruma: the long s folds to s.
  EXPECT_EQ(pieces(re, "it'\u017f"),
            (std::vector<std::string>{"it", "'\u017f"}));
}

TEST(Regex, QuantifiersAlternationAndLookahead) {
  EXPECT_EQ(pieces(Regex("a{2,3}"), "aaaaaaa"),
            (std::vector<std::string>{"aaa", "aaa"}));
  EXPECT_EQ(pieces(Regex("a+?"), "aaa"),
            (std::vector<std::string>{"a", "a", "a"}));
  EXPECT_EQ(pieces(Regex("(?:ab)+"), "ababxab"),
            (std::vector<std::string>{"abab", "ab"}));
  EXPECT_EQ(pieces(Regex("a(?=b)"), "acab"), (std::vector<std::string>{"a"}));
  EXPECT_EQ(pieces(Regex("x|xy"), "xy"),
            (std::vector<std::string>{"x"}));  // leftmost-first
  EXPECT_EQ(pieces(Regex("^\\w+"), "ab cd\nef"),
            (std::vector<std::string>{"ab", "ef"}));
  EXPECT_EQ(pieces(Regex("[a-c\\d]+"), "xab12cz"),
            (std::vector<std::string>{"ab12c"}));
  EXPECT_EQ(pieces(Regex("\\x{1F600}|\\u00e9"), "\u00e9\U0001F600"),
            (std::vector<std::string>{"\u00e9", "\U0001F600"}));
}

TEST(Regex, EmptyMatchesFollowOnigurumasIterator) {
  // An empty match right after the previous match is skipped.
  EXPECT_EQ(Regex("a*").find_all("baa"), (Spans{{0, 0}, {1, 3}}));
  EXPECT_EQ(Regex("").find_all("ab"), (Spans{{0, 0}, {1, 1}, {2, 2}}));
}

TEST(Regex, UnicodeClassesComeFromIcu) {
  EXPECT_EQ(pieces(Regex("\\p{N}+"), "x\u0663\u0664\u2167y"),
            (std::vector<std::string>{"\u0663\u0664\u2167"}));
  EXPECT_EQ(pieces(Regex("\\p{Han}+"), "ab\u65e5\u672cc"),
            (std::vector<std::string>{"\u65e5\u672c"}));
  EXPECT_EQ(pieces(Regex("\\s+"), "a\u0085\u3000b\ufeffc"),
            (std::vector<std::string>{"\u0085\u3000"}));
  EXPECT_EQ(pieces(Regex("[^\\s\\p{L}]+"), "ab!? \U0001D400"),
            (std::vector<std::string>{"!?"}));
}

TEST(Regex, UnsupportedConstructsAreNamed) {
  expect_error_containing([] { Regex("(?<=a)b"); },
                          "lookbehind is not supported");
  expect_error_containing([] { Regex("(a)\\1"); },
                          "backreferences are not supported");
  expect_error_containing([] { Regex("a++"); },
                          "possessive quantifiers are not supported");
  expect_error_containing([] { Regex("(?>a)"); },
                          "atomic groups are not supported");
  expect_error_containing([] { Regex("\\bword"); },
                          "unsupported assertion \\b");
  expect_error_containing([] { Regex("[[:alpha:]]"); }, "POSIX classes");
  expect_error_containing([] { Regex("\\p{NoSuchThing}"); },
                          "unknown Unicode property");
  expect_error_containing([] { Regex("(ab"); }, "unterminated group");
  expect_error_containing([] { Regex("[ab"); }, "unterminated character class");
  expect_error_containing([] { Regex("a{3,2}"); }, "max < min");
  expect_error_containing([] { Regex(std::string(20000, 'a')); },
                          "over the limit");
  expect_error_containing(
      [] { Regex(std::string(100, '(') + std::string(100, ')')); },
      "nested deeper than 64");
}

TEST(Regex, BacktrackingIsBounded) {
  // A quantified group over a long input hits the depth limit with an error,
  // not a stack overflow.
  expect_error_containing(
      [] { Regex("(?:a|b)+").find_all(std::string(100000, 'a')); }, "regex");
}

}  // namespace
}  // namespace lowmem::testing
