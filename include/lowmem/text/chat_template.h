// Chat templates: the `chat_template` of a Hugging Face tokenizer_config.json
// (a Jinja template) rendered exactly as @huggingface/jinja 0.5.11 renders it
// (github.com/huggingface/huggingface.js packages/jinja; HF's options
// trim_blocks and lstrip_blocks), which the tests check byte for byte on the
// LLaMA-2, Mistral, LLaMA-3, Qwen3 and Gemma 3 templates. Where that renderer
// differs from Python's jinja2 (transformers' apply_chat_template), lowmem
// follows the JavaScript one: str.strip/lstrip/rstrip ignore a `chars`
// argument, `{{ none }}` prints nothing, booleans print true/false, lists and
// dicts compare by identity. What lowmem does not implement is an error that
// says so ("lowmem cannot render this chat template: ..."): upper/lower-casing
// letters outside ASCII, tojson(sort_keys=true), printing a function.
//
// render_chat_with_spans() also finds, for training with loss masks, which
// bytes of the rendered conversation each assistant message produced: the
// reply and the template's end-of-turn text after it, found by re-rendering
// with the message replaced by probe contents (the differing bytes) and the
// conversation cut after it (the shared end-of-turn text).
#pragma once

#include <torch/arg.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lowmem::text {

namespace jinja {
class Template;
}

/// Bounds on a template and on one rendering (each exceeded = an error).
struct ChatTemplateLimits {
  /// Template source (hostile's suggested limit for chat templates: 1 MiB;
  /// Qwen3's real template is 4 KB).
  TORCH_ARG(size_t, max_source_bytes) = 1u << 20;
  /// Any string a rendering produces.
  TORCH_ARG(size_t, max_output_bytes) = 64u << 20;
  /// Nesting of blocks and expressions in the source.
  TORCH_ARG(int, max_nesting) = 200;
  /// Evaluation depth (macro recursion).
  TORCH_ARG(int, max_call_depth) = 400;
  /// Evaluation steps per rendering (loops that run away).
  TORCH_ARG(int64_t, max_steps) = 50'000'000;
};

class ChatTemplate {
 public:
  /// Parses `source`; throws "[chat] lowmem cannot parse this chat template:
  /// ..." on a syntax error or a statement it does not know.
  explicit ChatTemplate(const std::string& source,
                        ChatTemplateLimits limits = {});
  /// Renders with the template variables in `context` (a JSON object:
  /// messages, add_generation_prompt, bos_token, tools, ...). Errors:
  /// "[chat] the chat template raised an error: <its message>"
  /// (raise_exception), "[chat] lowmem cannot render this chat template: ..."
  /// (unsupported), "[chat] rendering the chat template failed: ...".
  std::string render(const nlohmann::ordered_json& context) const;
  const std::string& source() const { return source_; }

 private:
  std::shared_ptr<const jinja::Template> impl_;
  std::string source_;
};

/// The variables apply_chat_template passes besides the messages.
struct ChatOptions {
  TORCH_ARG(bool, add_generation_prompt) = false;
  TORCH_ARG(std::string, bos_token) = "";
  TORCH_ARG(std::string, eos_token) = "";
  /// More variables (tools, enable_thinking, ...): a JSON object whose keys
  /// are set after the ones above.
  TORCH_ARG(nlohmann::ordered_json, extra) = nlohmann::ordered_json::object();
};

/// Renders `messages` (a JSON array of {"role", "content", ...}).
std::string render_chat(const ChatTemplate& t,
                        const nlohmann::ordered_json& messages,
                        const ChatOptions& options = {});

/// Bytes [begin, end) of a rendered conversation produced by assistant
/// message `message`: its reply (as rendered: trimmed, with reasoning blocks
/// where the template adds them) and the end-of-turn text that follows it
/// (<|eot_id|>, <|im_end|>\n, <end_of_turn>\n, " </s>", ...), not the role
/// header before it.
struct AssistantSpan {
  size_t begin = 0, end = 0;
  size_t message = 0;
};

struct RenderedChat {
  std::string text;
  std::vector<AssistantSpan> spans;  // in message order, disjoint
};

/// Renders with add_generation_prompt false and locates every assistant
/// message (role "assistant"). Throws "[chat] cannot locate the tokens of
/// assistant message <i>: ..." if re-rendering shifts earlier text (a
/// template whose output for a message depends on later messages in a way
/// the probes cannot separate).
RenderedChat render_chat_with_spans(const ChatTemplate& t,
                                    const nlohmann::ordered_json& messages,
                                    const ChatOptions& options = {});

}  // namespace lowmem::text
