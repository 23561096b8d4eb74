#include "targets.h"

#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "lowmem/adapters/registry.h"
#include "lowmem/core/check.h"
#include "lowmem/core/fields.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/data/fashion_mnist.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/interop/hf_config.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/io/gguf.h"
#include "lowmem/io/safetensors.h"
#include "lowmem/text/chat_template.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/config.h"

namespace lowmem::fuzz {
namespace {

void safetensors(const std::string& in) {
  const io::SafetensorsFile f = io::parse_safetensors(in, "fuzz.safetensors");
  (void)f;
}

void manifest(const std::string& in) {
  io::detail::check_manifest(in, "fuzz/manifest.json");
}

// adapter_config.json as load_adapter and `lowmem merge` read it: its
// peft_type picks the adapter kind, whose reader parses the rest.
void adapter_config(const std::string& in) {
  const nlohmann::json j = parse_json(in, "adapter_config.json");
  LOWMEM_CHECK(j.is_object(), "[fuzz] adapter_config.json is not an object");
  const auto type = j.find("peft_type");
  LOWMEM_CHECK(type != j.end() && type->is_string(),
               "[fuzz] adapter_config.json has no peft_type string");
  const adapters::AdapterKind* kind =
      adapters::find_adapter_by_peft_type(type->get<std::string>());
  LOWMEM_CHECK(kind != nullptr, "[fuzz] unsupported peft_type ",
               quote(type->get<std::string>()));
  (void)kind->from_json(in);
}

// tokenizer.json, then a short encode/decode through what it built (the
// loaded pipeline is part of the attack surface).
void tokenizer_json(const std::string& in) {
  const text::Tokenizer t = text::Tokenizer::from_json(
      in, "", text::TokenizerLimits().max_file_bytes(int64_t{1} << 20));
  const auto ids = t.encode("Hello wörld 123 <s> \t\n");
  (void)t.decode(ids, false);
}

void gguf(const std::string& in) {
  std::istringstream stream(in);
  const io::GgufHeader h =
      io::parse_gguf_header(stream, in.size(), "fuzz.gguf");
  (void)h;
}

// The fields of a parsed config.json that a round trip must keep.
std::string config_summary(const interop::HfConfig& c) {
  const models::LlamaConfig& l = c.llama;
  const models::RopeScaling& r = l.rope_scaling();
  std::ostringstream o;
  o.precision(17);
  o << c.architecture << ' ' << c.model_type << ' ' << c.torch_dtype << ' '
    << l.vocab_size() << ' ' << l.hidden_size() << ' '
    << l.intermediate_size() << ' ' << l.num_hidden_layers() << ' '
    << l.num_attention_heads() << ' ' << models::resolved_kv_heads(l) << ' '
    << models::resolved_head_dim(l) << ' ' << l.max_position_embeddings()
    << ' ' << l.rms_norm_eps() << ' ' << l.initializer_range() << ' '
    << l.tie_word_embeddings() << ' ' << l.attention_bias() << ' '
    << l.mlp_bias() << ' ' << l.qkv_bias() << ' ' << l.qk_norm() << ' '
    << l.sliding_window() << ' ' << l.rope_theta() << ' ' << r.rope_type();
  if (r.rope_type() != "default") o << ' ' << r.factor();
  if (r.rope_type() == "llama3") {
    o << ' ' << r.low_freq_factor() << ' ' << r.high_freq_factor() << ' '
      << r.original_max_position_embeddings();
  }
  return o.str();
}

// A Hugging Face config.json as interop::read_hf_config reads it (16 MiB,
// nesting <= 128), then written back as save_hf_checkpoint writes it
// (hf_config_json + dump) and read again. What lowmem writes it must read
// back to the same model: a failing or changing round trip is a bug (thrown
// as std::logic_error, which both harnesses report), not a rejection.
void config_json(const std::string& in) {
  const interop::HfConfig c =
      interop::parse_hf_config(parse_json(in, "config.json"), "config.json");
  const std::string written = interop::hf_config_json(c, c.torch_dtype).dump();
  interop::HfConfig back;
  try {
    back = interop::parse_hf_config(parse_json(written, "written config.json"),
                                    "written config.json");
  } catch (const c10::Error& e) {
    throw std::logic_error("[fuzz] config.json written by lowmem is not read "
                           "back: " +
                           clip(e.what_without_backtrace()));
  }
  if (config_summary(back) != config_summary(c)) {
    throw std::logic_error("[fuzz] config.json round trip changed the model: " +
                           clip(config_summary(c)) + " -> " +
                           clip(config_summary(back)));
  }
}

// model.safetensors.index.json as interop::read_hf_weight_index reads it
// (16 MiB, nesting <= 128, then the weight_map's names checked).
void safetensors_index(const std::string& in) {
  const char* source = "model.safetensors.index.json";
  const auto map = interop::parse_hf_weight_map(parse_json(in, source), source);
  (void)map;
}

// A chat template (tokenizer_config.json's chat_template, the Jinja source a
// downloaded model brings) parsed and rendered on a short conversation, as
// data::JsonlDataset and `lowmem tokenize --chat` do. The evaluation limits
// are tighter than the defaults (whose values tests/text checks) so that one
// input stays well under libFuzzer's time limit: 5,000 steps (every seed,
// the LLaMA-2 and Mistral templates included, renders within 1,000; at
// 200,000 and 20,000 the inputs that loop to the limit held the long run to
// about 400 executions per second).
void chat_template(const std::string& in) {
  static const nlohmann::ordered_json context = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "Hello wörld <s> 123"}},
        {{"role", "assistant"}, {"content", " Hi!\n"}},
        {{"role", "user"}, {"content", "And 2 + 2?"}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"}};
  const text::ChatTemplate t(in, text::ChatTemplateLimits()
                                     .max_source_bytes(1 << 16)
                                     .max_output_bytes(1 << 20)
                                     .max_steps(5000));
  (void)t.render(context);
}

void recipe(const std::string& in) {
  train::Config c;
  c.apply_yaml(in, "fuzz.yaml");
  c.validate();
  (void)c.to_yaml();
}

// A JSON Lines data file's rows as data::JsonlDataset reads them: blank
// lines skipped, the nesting checked, then each row tokenized
// (data::tokenize_row: text, prompt/completion or chat rows) with the seed
// byte-level BPE tokenizer and a ChatML template. The first rejected row
// rejects the input (the dataset names it file:line). Conversations are
// capped at 32 messages (the library's default is 1024): the loss mask's
// cost is quadratic in messages (about five renderings per assistant
// message), and a 60-message row took 3 s under ASan, which starved the long
// runs; the count check itself is the same code at any cap.
constexpr int64_t kMaxMessages = 32;

void jsonl(const std::string& in) {
  static const text::Tokenizer tok = text::Tokenizer::from_json(
      read_file_limited(LOWMEM_FUZZ_CORPUS "/tokenizer_json/bytelevel_bpe.json",
                        1 << 20, "fuzz tokenizer"),
      "");
  static const text::ChatTemplate chat(
      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
      "{{ m['content'] }}<|im_end|>\n{% endfor %}");
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t end = std::min(in.find('\n', pos), in.size());
    const std::string_view line = std::string_view(in).substr(pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      continue;
    }
    LOWMEM_CHECK(json_nesting_depth(line, kMaxJsonDepth) <= kMaxJsonDepth,
                 "[fuzz] row nesting deeper than ", kMaxJsonDepth);
    nlohmann::ordered_json row;
    try {
      row = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      LOWMEM_CHECK(false, "[fuzz] invalid JSON: ", clip(e.what()));
    }
    (void)data::tokenize_row(row, tok, &chat, kMaxMessages);
  }
}

// An IDX file (Fashion-MNIST's images and labels, data::read_idx). Input
// starting with the gzip magic goes through a temporary file and read_idx's
// zlib reader (1 GiB limit); other input straight to data::parse_idx, as
// read_idx passes the unzipped bytes. What is accepted must be a uint8
// tensor of the header's dims holding the payload.
void idx(const std::string& in) {
  data::IdxFile f;
  if (in.size() >= 2 && in[0] == '\x1f' && in[1] == '\x8b') {
    static const std::string path =
        (std::filesystem::temp_directory_path() /
         ("lowmem_fuzz_idx_" + std::to_string(getpid()) + ".gz"))
            .string();
    std::ofstream(path, std::ios::binary | std::ios::trunc) << in;
    f = data::read_idx(path);
  } else {
    f = data::parse_idx(in, "fuzz.idx");
    const size_t payload = 4 + 4 * f.dims.size();
    if (in.compare(payload, std::string::npos,
                   reinterpret_cast<const char*>(f.data.data_ptr<uint8_t>()),
                   static_cast<size_t>(f.data.numel())) != 0) {
      throw std::logic_error("[fuzz] IDX payload not copied whole");
    }
  }
  if (f.data.scalar_type() != at::kByte || f.data.sizes().vec() != f.dims) {
    throw std::logic_error("[fuzz] IDX tensor does not match its header");
  }
}

}  // namespace

const std::vector<Target>& targets() {
  static const std::vector<Target> rows = {
      {"safetensors", "safetensors file (io::parse_safetensors)", safetensors},
      {"manifest", "checkpoint manifest.json (io::load_checkpoint)", manifest},
      {"adapter_config", "adapter_config.json of every adapter kind",
       adapter_config},
      {"tokenizer_json", "tokenizer.json (text::Tokenizer::from_json)",
       tokenizer_json},
      {"gguf", "GGUF header (io::parse_gguf_header)", gguf},
      {"recipe", "YAML recipe (train::Config::apply_yaml + validate)", recipe},
      {"jsonl", "JSON Lines rows (data::tokenize_row per line)", jsonl},
      {"chat_template",
       "chat template source (text::ChatTemplate, parse + render)",
       chat_template},
      {"config_json",
       "Hugging Face config.json (interop::parse_hf_config, round trip)",
       config_json},
      {"safetensors_index",
       "model.safetensors.index.json (interop::parse_hf_weight_map)",
       safetensors_index},
      {"idx", "IDX file, gzipped or not (data::read_idx, data::parse_idx)",
       idx},
  };
  return rows;
}

const Target* find_target(std::string_view name) {
  for (const auto& t : targets()) {
    if (name == t.name) {
      return &t;
    }
  }
  return nullptr;
}

std::string run_target(const Target& t, const std::string& input) {
  try {
    t.run(input);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    return msg.empty() ? "(empty message)" : msg;
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    return msg.empty() ? "(empty message)" : msg;
  }
  return "";
}

}  // namespace lowmem::fuzz
