#include "lowmem/gen/generate.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"

namespace lowmem::gen {

void validate(const GenerateOptions& o) {
  LOWMEM_CHECK(o.max_new_tokens() >= 1,
               "[generate] max_new_tokens must be >= 1, got ",
               o.max_new_tokens());
  LOWMEM_CHECK(!o.do_sample() || o.temperature() > 0.0,
               "[generate] temperature must be > 0 when sampling, got ",
               o.temperature());
  LOWMEM_CHECK(o.top_k() >= 0, "[generate] top_k must be >= 0 (0: off), got ",
               o.top_k());
  LOWMEM_CHECK(o.top_p() > 0.0 && o.top_p() <= 1.0,
               "[generate] top_p must be in (0, 1], got ", o.top_p());
  for (const auto& s : o.stop_strings())
    LOWMEM_CHECK(!s.empty(), "[generate] a stop string is empty");
}

namespace {

template <class T>
void take(const nlohmann::json& j, const char* key, const std::string& path,
          const std::function<void(T)>& set) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    set(j[key].get<T>());
  } catch (const nlohmann::json::exception&) {
    LOWMEM_CHECK(false, "[generate] ", path, ": ", key,
                 " has the wrong type: ", clip_json(j[key]));
  }
}

}  // namespace

GenerateOptions read_generation_config(const std::string& path,
                                       GenerateOptions o) {
  const nlohmann::json j = read_json_file(path);
  LOWMEM_CHECK(j.is_object(), "[generate] ", path, " is not a JSON object");
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) {
    o.eos_token_id({j["eos_token_id"].get<int64_t>()});
  } else {
    take<std::vector<int64_t>>(
        j, "eos_token_id", path,
        [&](std::vector<int64_t> v) { o.eos_token_id(v); });
  }
  take<bool>(j, "do_sample", path, [&](bool v) { o.do_sample(v); });
  take<double>(j, "temperature", path, [&](double v) { o.temperature(v); });
  take<int64_t>(j, "top_k", path, [&](int64_t v) { o.top_k(v); });
  take<double>(j, "top_p", path, [&](double v) { o.top_p(v); });
  take<int64_t>(j, "max_new_tokens", path,
                [&](int64_t v) { o.max_new_tokens(v); });
  return o;
}

at::Tensor temperature_warp(const at::Tensor& logits, double temperature) {
  return temperature == 1.0 ? logits : logits / temperature;
}

at::Tensor top_k_filter(const at::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  at::Tensor kth = std::get<0>(at::topk(logits, k)).narrow(-1, k - 1, 1);
  return logits.masked_fill(logits < kth,
                            -std::numeric_limits<double>::infinity());
}

at::Tensor top_p_filter(const at::Tensor& logits, double top_p) {
  if (top_p >= 1.0) return logits;
  auto [sorted, order] = at::sort(logits, -1, /*descending=*/false);
  at::Tensor cumulative = at::softmax(sorted, -1).cumsum(-1);
  at::Tensor remove = cumulative <= (1.0 - top_p);
  remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);  // keep the top one
  return logits.masked_fill(remove.scatter(-1, order, remove),
                            -std::numeric_limits<double>::infinity());
}

at::Tensor warp_logits(const at::Tensor& logits, const GenerateOptions& o) {
  return top_p_filter(
      top_k_filter(temperature_warp(logits, o.temperature()), o.top_k()),
      o.top_p());
}

namespace {

// Bytes at the end of `s` that start a UTF-8 sequence still missing bytes.
size_t incomplete_utf8_tail(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

TextStream::TextStream(Decoder decode) : decode_(std::move(decode)) {
  LOWMEM_CHECK(static_cast<bool>(decode_),
               "[generate] TextStream needs a decoder");
}

std::string TextStream::push(int64_t token) {
  tokens_.push_back(token);
  text_ = decode_(tokens_);
  size_t ready = text_.size() - incomplete_utf8_tail(text_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  while (ready >= emitted_ + kReplacement.size() &&
         text_.compare(ready - kReplacement.size(), kReplacement.size(),
                       kReplacement) == 0)
    ready -= kReplacement.size();
  if (ready <= emitted_) return "";
  std::string piece = text_.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return piece;
}

std::string TextStream::finish() {
  if (emitted_ >= text_.size()) return "";
  std::string rest = text_.substr(emitted_);
  emitted_ = text_.size();
  return rest;
}

double GenerateResult::prompt_tokens_per_second() const {
  return prefill_seconds > 0.0
             ? static_cast<double>(prompt_tokens) / prefill_seconds
             : 0.0;
}

double GenerateResult::tokens_per_second() const {
  return tokens.size() >= 2 && decode_seconds > 0.0
             ? static_cast<double>(tokens.size() - 1) / decode_seconds
             : 0.0;
}

namespace {

// Logits of the next position, with or without a KV cache.
class Stepper {
 public:
  Stepper(models::Model& model, const GenerateOptions& o, int64_t needed)
      : model_(model), llama_(dynamic_cast<models::Llama*>(&model)) {
    auto params = model.parameters();
    LOWMEM_CHECK(!params.empty(), "[generate] the model has no parameters");
    device_ = params[0].device();
    if (llama_ != nullptr) {
      max_len_ = llama_->config().max_position_embeddings();
      if (o.use_cache())
        cache_ = std::make_unique<models::LlamaKVCache>(
            llama_->make_cache(1, std::min(needed, max_len_)));
    } else if ((gpt_ = dynamic_cast<models::GPT*>(&model)) != nullptr) {
      window_ = gpt_->config().block_size();  // cropped, never full
      // Cached while the sequence fits wpe; beyond, the cropped window.
      if (o.use_cache())
        gpt_cache_ = std::make_unique<models::GPTKVCache>(
            gpt_->make_cache(1, std::min(needed, window_)));
    } else {
      LOWMEM_CHECK(false, "[generate] model ", model.kind(),
                   " is not a language model (llama or gpt)");
    }
  }
  // Room for one more token.
  bool full(int64_t length) const { return length >= max_len_; }
  // Logits [V] (CPU fp32) after `seq`, whose first `fed` tokens were seen.
  at::Tensor next(const std::vector<int64_t>& seq, size_t fed) {
    at::Tensor logits;
    if (cache_) {
      logits = llama_->forward(ids(seq, fed), *cache_);
    } else if (gpt_cache_ &&
               static_cast<int64_t>(seq.size()) <= gpt_cache_->max_length()) {
      logits = gpt_->forward(ids(seq, fed), *gpt_cache_);
    } else {
      const size_t from =
          window_ > 0 && seq.size() > static_cast<size_t>(window_)
              ? seq.size() - static_cast<size_t>(window_)
              : 0;
      logits = model_.forward(ids(seq, from));
    }
    return logits[0][-1].to(at::kCPU, at::kFloat);
  }

 private:
  at::Tensor ids(const std::vector<int64_t>& seq, size_t from) const {
    std::vector<int64_t> part(seq.begin() + static_cast<std::ptrdiff_t>(from),
                              seq.end());
    return at::tensor(part, at::TensorOptions().dtype(at::kLong))
        .view({1, -1})
        .to(device_);
  }
  models::Model& model_;
  models::Llama* llama_;
  models::GPT* gpt_ = nullptr;
  std::unique_ptr<models::LlamaKVCache> cache_;
  std::unique_ptr<models::GPTKVCache> gpt_cache_;
  c10::Device device_ = c10::Device(c10::kCPU);
  int64_t max_len_ = std::numeric_limits<int64_t>::max();
  int64_t window_ = 0;
};

int64_t choose(const at::Tensor& logits, const GenerateOptions& o,
               at::Generator& generator) {
  if (!o.do_sample()) return logits.argmax().item<int64_t>();
  at::Tensor probs = at::softmax(warp_logits(logits.unsqueeze(0), o), -1);
  return at::multinomial(probs, 1, false, generator).item<int64_t>();
}

bool contains_stop(const std::string& text,
                   const std::vector<std::string>& stops) {
  return std::any_of(stops.begin(), stops.end(), [&](const std::string& s) {
    return text.find(s) != std::string::npos;
  });
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

}  // namespace

GenerateResult generate(models::Model& model,
                        const std::vector<int64_t>& prompt,
                        const GenerateOptions& o, const Decoder& decode,
                        const TokenCallback& on_token) {
  validate(o);
  LOWMEM_CHECK(!prompt.empty(), "[generate] the prompt has no tokens");
  LOWMEM_CHECK(o.stop_strings().empty() || decode,
               "[generate] stop strings need a decoder (a tokenizer)");
  at::NoGradGuard no_grad;
  const int64_t P = static_cast<int64_t>(prompt.size());
  Stepper stepper(model, o, P + o.max_new_tokens());
  LOWMEM_CHECK(!stepper.full(P), "[generate] the prompt's ", P,
               " tokens leave no room in the model's maximum sequence length");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(o.seed());
  std::unique_ptr<TextStream> stream;
  if (decode) stream = std::make_unique<TextStream>(decode);
  GenerateResult r;
  r.prompt_tokens = P;
  std::vector<int64_t> seq = prompt;
  auto start = std::chrono::steady_clock::now();
  while (true) {
    const size_t fed = seq.size() - (r.tokens.empty() ? seq.size() : 1);
    const int64_t token = choose(stepper.next(seq, fed), o, generator);
    if (r.tokens.empty()) {
      r.prefill_seconds = seconds_since(start);
      start = std::chrono::steady_clock::now();
    }
    seq.push_back(token);
    r.tokens.push_back(token);
    const auto& eos = o.eos_token_id();
    if (std::find(eos.begin(), eos.end(), token) != eos.end())
      r.stop_reason = "eos";
    std::string piece =
        stream && r.stop_reason.empty() ? stream->push(token) : "";
    if (stream && contains_stop(stream->text(), o.stop_strings()))
      r.stop_reason = "stop_string";
    else if (r.stop_reason.empty() &&
             static_cast<int64_t>(r.tokens.size()) >= o.max_new_tokens())
      r.stop_reason = "length";
    else if (r.stop_reason.empty() &&
             stepper.full(static_cast<int64_t>(seq.size())))
      r.stop_reason = "context";
    if (stream && !r.stop_reason.empty()) piece += stream->finish();
    if (on_token) on_token(token, piece);
    if (!r.stop_reason.empty()) break;
  }
  if (r.tokens.size() > 1) r.decode_seconds = seconds_since(start);
  if (stream) r.text = stream->text();
  return r;
}

}  // namespace lowmem::gen
