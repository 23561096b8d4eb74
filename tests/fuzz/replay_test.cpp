// The fuzz targets (fuzz/targets.h) replayed without libFuzzer, so every
// build checks them: each target over its checked-in seed corpus
// (fuzz/corpus/<name>/), a few hostile inputs written here (deep nesting,
// huge values), and kMutations inputs made from the seeds by a fixed-seed
// mutator (bit flips, interesting bytes, insertions, deletions, repeats,
// splices, number swaps). Every input must be accepted or rejected with one
// short error; any other exception fails the test, a crash fails the binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "targets.h"
#include "testing/files.h"

namespace fs = std::filesystem;

namespace lowmem::fuzz {
namespace {

constexpr int kMutations = 3000;

std::vector<std::string> seeds_of(const std::string& name) {
  const fs::path dir = fs::path(LOWMEM_SOURCE_DIR) / "fuzz" / "corpus" / name;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> out;
  for (const auto& f : files) {
    out.push_back(testing::read_file(f));
  }
  return out;
}

// Each JSON literal of a seed (true, false, null, a number, a string value)
// swapped, one at a time, for a value of another type: a reader that asks the
// JSON library for a typed member without checking its type first leaks the
// library's own type_error (a libFuzzer find in CI: tokenizer.json's added
// token with "special": <a number>).
std::vector<std::string> type_swaps(const std::vector<std::string>& seeds) {
  constexpr size_t kPerSeed = 300;
  std::vector<std::string> out;
  for (const std::string& s : seeds) {
    size_t made = 0;
    for (size_t at = 0; at < s.size() && made < kPerSeed; ++at) {
      size_t len = 0;
      if (s.compare(at, 4, "true") == 0 || s.compare(at, 4, "null") == 0) {
        len = 4;
      } else if (s.compare(at, 5, "false") == 0) {
        len = 5;
      } else if (at > 0 && (s[at - 1] == ' ' || s[at - 1] == ':') &&
                 (std::isdigit(static_cast<unsigned char>(s[at])) ||
                  s[at] == '"')) {
        // A value after "key": a number or a string.
        const size_t end =
            s[at] == '"' ? s.find('"', at + 1) : s.find_first_of(",}] \n", at);
        if (end == std::string::npos) continue;
        len = end - at + (s[at] == '"');
      }
      if (len == 0) continue;
      for (const char* v : {"7", "\"x\"", "[1]", "{\"a\": true}", "1.5"}) {
        out.push_back(s.substr(0, at) + v + s.substr(at + len));
      }
      made += 1;
      at += len - 1;
    }
  }
  return out;
}

// Hostile inputs every target gets (the cases, in each format's
// clothing where it matters).
std::vector<std::string> hostile_inputs(const std::string& name) {
  const std::string deep(300000, '[');
  const std::string big(20 << 20, 'x');
  std::vector<std::string> out = {"", deep, "{\"a\": \"" + big + "\"}",
                                  std::string(4096, '\0'),
                                  "{\"" + big.substr(0, 1 << 20) + "\": 1}"};
  for (std::string& swapped : type_swaps(seeds_of(name)))
    out.push_back(std::move(swapped));
  if (name == "safetensors") {
    for (const std::string& header :
         {"{\"w\": " + deep + "}", "{\"w\": \"" + big + "\"}"}) {
      const uint64_t n = header.size();
      std::string file(reinterpret_cast<const char*>(&n), 8);
      out.push_back(file + header);
    }
  }
  if (name == "adapter_config") {
    // Integer fields as huge floats or unsigned values (a libFuzzer find:
    // the JSON library's float-to-integer conversion is undefined there).
    for (const char* v : {"3.2e128", "-1e300", "18446744073709551615", "1e19"})
      out.push_back(std::string("{\"peft_type\": \"LOTR\", \"rank\": ") + v +
                    ", \"target_modules\": [\"q\"]}");
  }
  if (name == "safetensors_index") {
    // A 1 MB shard name: the regex it was once matched with recursed per
    // character.
    out.push_back("{\"weight_map\": {\"w\": \"" + big.substr(0, 1 << 20) +
                  ".safetensors\"}}");
    out.push_back("{\"weight_map\": {\"w\": \"../../etc/x.safetensors\"}}");
    out.push_back("{\"weight_map\": {\"w\": " + deep.substr(0, 100) + "}}");
  }
  if (name == "config_json") {
    const std::string sizes =
        "\"vocab_size\": 9223372036854775807, \"hidden_size\": 64, "
        "\"intermediate_size\": 18446744073709551615, "
        "\"num_hidden_layers\": -1, \"num_attention_heads\": 4";
    out.push_back("{\"architectures\": [\"" + big.substr(0, 1 << 20) + "\"], " +
                  sizes + "}");
    out.push_back("{\"model_type\": \"llama\", " + sizes + "}");
    out.push_back("{\"model_type\": \"llama\", \"rope_scaling\": " +
                  deep.substr(0, 127) + std::string(127, ']') + "}");
  }
  if (name == "idx") {
    // Headers whose dims multiply past 2^64, or to zero beside 2^32 - 1.
    const std::string ff(4, '\xff'), zero(4, '\0');
    out.push_back(std::string("\0\0\x08\x04", 4) + ff + ff + ff + ff + "ab");
    out.push_back(std::string("\0\0\x08\x03", 4) + zero + ff + ff);
    out.push_back(std::string("\0\0\x08\x02", 4) + ff);
    out.push_back(std::string("\x1f\x8b\x08\0", 4) + big.substr(0, 100));
  }
  if (name == "recipe") {
    out.push_back(std::string(100000, '[') + "\n");
    out.push_back("steps: " + big.substr(0, 1 << 20) + "\n");
    out.push_back(big.substr(0, 1 << 20) + ": 1\n");
  }
  return out;
}

const char kInteresting[] = {'\0', '\xff', '[',  ']', '{', '}', '"', '\\',
                             ':',  ',',    '\n', '-', '9', 'e', ' ', '\x80'};
const char* kNumbers[] = {
    "-1",    "0",  "-5",  "18446744073709551616",    "9223372036854775807",
    "1e308", "-0", "1.5", "99999999999999999999999", "NaN"};

// One to four random edits of a random seed.
std::string mutate(const std::vector<std::string>& seeds,
                   std::mt19937_64& rng) {
  std::string s = seeds[rng() % seeds.size()];
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < edits; ++k) {
    const size_t n = s.size();
    const size_t at = n == 0 ? 0 : rng() % n;
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (n > 0) s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8)));
        break;
      case 1:  // an interesting byte
        if (n > 0) s[at] = kInteresting[rng() % sizeof(kInteresting)];
        break;
      case 2: {  // insert a copy of another range
        const size_t from = n == 0 ? 0 : rng() % n;
        const size_t len = n == 0 ? 0 : rng() % std::min<size_t>(64, n - from);
        s.insert(at, s.substr(from, len));
        break;
      }
      case 3:  // delete a range
        if (n > 0) s.erase(at, 1 + rng() % std::min<size_t>(32, n - at));
        break;
      case 4:  // repeat a byte many times (nesting, long runs)
        if (n > 0) s.insert(at, 1 + rng() % 5000, s[at]);
        break;
      case 5:  // truncate
        s.resize(at);
        break;
      case 6: {  // splice with another seed
        const std::string& o = seeds[rng() % seeds.size()];
        if (!o.empty()) s = s.substr(0, at) + o.substr(rng() % o.size());
        break;
      }
      case 7: {  // swap a run of digits for a boundary number
        const size_t d = s.find_first_of("0123456789", at);
        if (d != std::string::npos) {
          const size_t e = s.find_first_not_of("0123456789.", d);
          s.replace(d, (e == std::string::npos ? s.size() : e) - d,
                    kNumbers[rng() % (sizeof(kNumbers) / sizeof(*kNumbers))]);
        }
        break;
      }
    }
  }
  return s;
}

std::vector<std::string> target_names() {
  std::vector<std::string> names;
  for (const auto& t : targets()) names.push_back(t.name);
  return names;
}

void expect_short(const Target& t, const std::string& input,
                  const std::string& what) {
  std::string msg;
  try {
    msg = run_target(t, input);
  } catch (const std::exception& e) {
    ADD_FAILURE() << t.name << ", " << what << ": unexpected exception "
                  << typeid(e).name() << ": "
                  << std::string(e.what()).substr(0, 500)
                  << "\ninput (first 300 bytes): " << input.substr(0, 300);
    return;
  }
  EXPECT_LE(msg.size(), kMaxFuzzMessageBytes)
      << t.name << ", " << what << ": " << msg.substr(0, 500);
}

class Replay : public ::testing::TestWithParam<std::string> {};

TEST_P(Replay, SeedsHostileInputsAndMutations) {
  const Target* t = find_target(GetParam());
  ASSERT_NE(t, nullptr);
  const auto seeds = seeds_of(t->name);
  ASSERT_FALSE(seeds.empty()) << "no seeds in fuzz/corpus/" << t->name;
  int accepted = 0;
  for (size_t i = 0; i < seeds.size(); ++i) {
    // Seeds are valid files: each must be accepted.
    const std::string msg = run_target(*t, seeds[i]);
    EXPECT_EQ(msg, "") << t->name << " seed " << i;
    accepted += msg.empty();
  }
  for (const auto& in : hostile_inputs(t->name)) {
    expect_short(*t, in,
                 "hostile input of " + std::to_string(in.size()) + " bytes");
  }
  std::mt19937_64 rng(std::hash<std::string>()(t->name) ^ 20);
  for (int i = 0; i < kMutations; ++i) {
    const std::string in = mutate(seeds, rng);
    expect_short(*t, in, "mutation " + std::to_string(i));
    if (::testing::Test::HasFailure()) {
      break;  // the first failing input is enough
    }
  }
  EXPECT_EQ(accepted, static_cast<int>(seeds.size()));
}

// Every seed folder belongs to a target and every target has one
// (scripts/fuzz.sh runs the targets named by the folders).
TEST(FuzzCorpus, EveryTargetHasASeedFolderAndViceVersa) {
  std::vector<std::string> folders;
  for (const auto& e : fs::directory_iterator(fs::path(LOWMEM_SOURCE_DIR) /
                                              "fuzz" / "corpus")) {
    folders.push_back(e.path().filename().string());
  }
  std::vector<std::string> names = target_names();
  std::sort(folders.begin(), folders.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(folders, names);
}

INSTANTIATE_TEST_SUITE_P(Fuzz, Replay, ::testing::ValuesIn(target_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace lowmem::fuzz
