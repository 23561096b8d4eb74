// `lowmem tokenize`: what a tokenizer makes of some text -- ids, pieces and
// the input bytes of each token -- or the text of some ids.
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "lowmem/text/tokenizer.h"

namespace lowmem::tools {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::vector<std::string> texts;
  std::string file;
  bool lines = false;
  bool no_special = false;
  bool json = false;
  std::string decode;
  bool skip_special = false;
};

// A value for the terminal: JSON-quoted (escapes control characters).
std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false,
                                nlohmann::json::error_handler_t::replace);
}

void show(const text::Tokenizer& tok, const std::string& input, bool special,
          bool json) {
  const text::Encoding e = tok.encode_with_pieces(input, special);
  if (json) {
    nlohmann::json j;
    j["text"] = input;
    j["ids"] = e.ids;
    j["pieces"] = e.pieces;
    j["offsets"] = e.offsets;
    std::cout << j.dump(-1, ' ', false,
                        nlohmann::json::error_handler_t::replace)
              << "\n";
    return;
  }
  std::cout << "text " << quoted(input) << " (" << input.size()
            << " bytes): " << e.ids.size() << " tokens\n";
  std::cout << "  " << std::setw(8) << "id"
            << "  " << std::left << std::setw(24) << "piece" << std::setw(14)
            << "bytes"
            << "text\n"
            << std::right;
  for (size_t i = 0; i < e.ids.size(); ++i) {
    const auto [b, en] = e.offsets[i];
    std::ostringstream range;
    range << "[" << b << ", " << en << ")";
    std::cout << "  " << std::setw(8) << e.ids[i] << "  " << std::left
              << std::setw(24) << quoted(e.pieces[i]) << std::setw(14)
              << range.str() << quoted(input.substr(b, en - b))
              << (tok.is_special(e.ids[i]) ? "  special" : "") << "\n"
              << std::right;
  }
  std::cout << "ids:";
  for (auto id : e.ids) std::cout << " " << id;
  std::cout << "\n";
}

const RegisterCommand kTokenize{Command{
    "tokenize",
    "Show the token ids and pieces a tokenizer (tokenizer.json, "
    "tokenizer.model or a "
    "model folder) gives a text, or decode ids",
    [](CLI::App& sub) -> std::function<int()> {
      auto a = std::make_shared<TokenizeArgs>();
      sub.add_option("--tokenizer", a->tokenizer,
                     "tokenizer.json, sentencepiece tokenizer.model, or a "
                     "folder holding one "
                     "(tokenizer_config.json beside it is read)")
          ->required();
      sub.add_option("--text", a->texts, "Text to encode (repeatable)");
      sub.add_option("--file", a->file, "Encode this file's text")
          ->check(CLI::ExistingFile);
      sub.add_flag("--lines", a->lines,
                   "With --file: encode each line on its own");
      sub.add_flag("--no-special", a->no_special,
                   "Do not add the post-processor's tokens (BOS, ...)");
      sub.add_flag("--json", a->json,
                   "One JSON object per text: ids, pieces, offsets");
      sub.add_option("--decode", a->decode,
                     "Decode these ids (space or comma separated)");
      sub.add_flag("--skip-special", a->skip_special,
                   "With --decode: drop special tokens");
      return [a]() -> int {
        if (a->texts.empty() && a->file.empty() && a->decode.empty()) {
          print_error("tokenize needs --text, --file or --decode");
          return kExitUsage;
        }
        const auto tok = text::Tokenizer::from_file(a->tokenizer);
        if (!a->json) std::cout << "tokenizer: " << tok.describe() << "\n";
        if (!a->decode.empty()) {
          std::vector<text::TokenId> ids;
          std::string s = a->decode;
          for (char& c : s) {
            if (c == ',') c = ' ';
          }
          std::istringstream in(s);
          std::string item;
          while (in >> item) {
            try {
              size_t used = 0;
              const long long v = std::stoll(item, &used);
              if (used != item.size() || v < 0 || v > INT32_MAX)
                throw std::invalid_argument(item);
              ids.push_back(static_cast<text::TokenId>(v));
            } catch (const std::exception&) {
              print_error("--decode: '" + item + "' is not a token id");
              return kExitUsage;
            }
          }
          std::cout
              << (a->json
                      ? nlohmann::json(tok.decode(ids, a->skip_special)).dump()
                      : quoted(tok.decode(ids, a->skip_special)))
              << "\n";
        }
        std::vector<std::string> inputs = a->texts;
        if (!a->file.empty()) {
          constexpr uintmax_t kMaxFile = uintmax_t{256} << 20;
          if (std::filesystem::file_size(a->file) > kMaxFile) {
            print_error("--file: '" + a->file +
                        "' is over the limit of 256 MiB");
            return kExitUsage;
          }
          std::ifstream f(a->file, std::ios::binary);
          std::stringstream ss;
          ss << f.rdbuf();
          if (a->lines) {
            std::string line;
            while (std::getline(ss, line)) inputs.push_back(line);
          } else {
            inputs.push_back(ss.str());
          }
        }
        for (const auto& t : inputs) show(tok, t, !a->no_special, a->json);
        return kExitOk;
      };
    }}};

}  // namespace
}  // namespace lowmem::tools
