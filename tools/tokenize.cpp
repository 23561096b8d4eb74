// `lowmem tokenize`: what a tokenizer makes of some text -- ids, pieces and
// the input bytes of each token -- or the text of some ids, or of the rows of
// a JSONL file (data/jsonl.h): each row's ids with the loss mask (which
// tokens are trained) and, for chat rows, the rendered template.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "lowmem/core/input.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/text/chat_template.h"
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
  std::string jsonl;
  std::vector<int64_t> rows;
  std::string chat_template;
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

// One JSONL row: its ids, pieces and mask (and the rendered chat).
void show_row(const text::Tokenizer& tok, const text::ChatTemplate* chat,
              const std::string& where, const std::string& line, bool json) {
  const auto row = nlohmann::ordered_json::parse(line);
  const data::TokenizedRow r = data::tokenize_row(row, tok, chat);
  std::vector<std::string> pieces;
  int64_t trained = 0;
  for (size_t i = 0; i < r.ids.size(); ++i) {
    pieces.push_back(tok.id_to_token(r.ids[i]));
    trained += i > 0 && r.mask[i] ? 1 : 0;
  }
  if (json) {
    nlohmann::json j;
    j["row"] = where;
    j["format"] = r.format;
    j["ids"] = r.ids;
    j["pieces"] = pieces;
    j["mask"] = r.mask;
    std::cout << j.dump(-1, ' ', false,
                        nlohmann::json::error_handler_t::replace)
              << "\n";
    return;
  }
  std::cout << "row " << where << " (" << r.format << "): " << r.ids.size()
            << " tokens, " << trained << " trained\n";
  if (r.format == "chat" || r.format == "chat-prompt-completion") {
    const auto o = text::ChatOptions()
                       .bos_token(tok.bos_token())
                       .eos_token(tok.eos_token());
    nlohmann::ordered_json messages;
    if (r.format == "chat") {
      messages = row["messages"];
    } else {  // the prompt's messages, then the completion's
      messages = row["prompt"];
      for (const auto& m : row["completion"]) messages.push_back(m);
    }
    std::cout << "  rendered: " << quoted(text::render_chat(*chat, messages, o))
              << "\n";
  }
  std::cout << "  " << std::setw(8) << "id"
            << "  " << std::left << std::setw(24) << "piece"
            << "trained\n"
            << std::right;
  for (size_t i = 0; i < r.ids.size(); ++i) {
    std::cout << "  " << std::setw(8) << r.ids[i] << "  " << std::left
              << std::setw(24) << quoted(pieces[i])
              << (i > 0 && r.mask[i] ? "yes" : "") << "\n"
              << std::right;
  }
  std::cout << "ids:";
  for (auto id : r.ids) std::cout << " " << id;
  std::cout << "\nmask:";
  for (size_t i = 0; i < r.mask.size(); ++i)
    std::cout << " " << (i > 0 && r.mask[i] ? 1 : 0);
  std::cout << "\n";
}

// The rows of a JSONL file (all, or the 1-based line numbers in `rows`).
int show_jsonl(const text::Tokenizer& tok, const TokenizeArgs& a) {
  const auto chat = data::load_chat_template(tok, a.chat_template);
  constexpr uint64_t kMaxFile = uint64_t{256} << 20;
  std::istringstream in(read_file_limited(a.jsonl, kMaxFile, "--jsonl"));
  std::string line;
  int64_t number = 0;
  size_t shown = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const bool wanted =
        a.rows.empty()
            ? line.find_first_not_of(" \t") != std::string::npos
            : std::find(a.rows.begin(), a.rows.end(), number) != a.rows.end();
    if (!wanted) continue;
    const std::string where = a.jsonl + ":" + std::to_string(number);
    try {
      show_row(tok, chat.get(), where, line, a.json);
    } catch (const nlohmann::json::exception& e) {
      print_error(where + ": invalid JSON: " + clip(e.what()));
      return kExitFailure;
    } catch (const c10::Error& e) {
      print_error(where + ": " + e.what_without_backtrace());
      return kExitFailure;
    }
    ++shown;
  }
  if (shown < a.rows.size()) {
    print_error("--row: " + a.jsonl + " has " + std::to_string(number) +
                " lines");
    return kExitUsage;
  }
  return kExitOk;
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
      sub.add_option("--jsonl", a->jsonl,
                     "Show the rows of this JSONL file ({\"text\"}, "
                     "{\"prompt\",\"completion\"} or {\"messages\"}) "
                     "as training sees them: ids, pieces and which tokens "
                     "are trained")
          ->check(CLI::ExistingFile);
      sub.add_option("--row", a->rows,
                     "With --jsonl: only this line (1-based, repeatable)")
          ->check(CLI::PositiveNumber);
      sub.add_option("--chat-template", a->chat_template,
                     "With --jsonl: a Jinja file or tokenizer_config.json "
                     "(default: the tokenizer's)");
      return [a]() -> int {
        if (a->texts.empty() && a->file.empty() && a->decode.empty() &&
            a->jsonl.empty()) {
          print_error("tokenize needs --text, --file, --decode or --jsonl");
          return kExitUsage;
        }
        const auto tok = text::Tokenizer::from_file(a->tokenizer);
        if (!a->json) std::cout << "tokenizer: " << tok.describe() << "\n";
        if (!a->jsonl.empty()) return show_jsonl(tok, *a);
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
