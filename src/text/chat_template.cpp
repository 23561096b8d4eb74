#include "lowmem/text/chat_template.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "jinja.h"
#include "lowmem/core/check.h"

namespace lowmem::text {
namespace {

using nlohmann::ordered_json;

// At most ~200 bytes of an echoed message, cut at a UTF-8 boundary.
std::string clipped(const std::string& s) {
  constexpr size_t kMax = 200;
  if (s.size() <= kMax) return s;
  size_t n = kMax;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n) + "... (" + std::to_string(s.size()) + " bytes)";
}

// A JSON array index as JavaScript orders object keys ("0", "17"; not "01").
bool is_index_key(const std::string& k) {
  if (k.empty() || k.size() > 10) return false;
  if (k.size() > 1 && k[0] == '0') return false;
  for (char c : k)
    if (c < '0' || c > '9') return false;
  return std::stoull(k) < 4294967295ull;
}

// convertToRuntimeValues(JSON.parse(...)): integral numbers are integers,
// object keys in JavaScript's order (array-index keys first, ascending).
jinja::Value to_value(const ordered_json& j, int depth) {
  using jinja::Value;
  if (depth > 256)
    throw jinja::Error("template variables nested deeper than 256 levels");
  switch (j.type()) {
    case ordered_json::value_t::null:
      return Value::null();
    case ordered_json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case ordered_json::value_t::number_integer:
      return Value::integer(static_cast<double>(j.get<int64_t>()));
    case ordered_json::value_t::number_unsigned:
      return Value::integer(static_cast<double>(j.get<uint64_t>()));
    case ordered_json::value_t::number_float: {
      const double d = j.get<double>();
      return std::isfinite(d) && std::floor(d) == d ? Value::integer(d)
                                                    : Value::floating(d);
    }
    case ordered_json::value_t::string:
      return Value::string(j.get<std::string>());
    case ordered_json::value_t::array: {
      jinja::Array out;
      for (const auto& x : j) out.push_back(to_value(x, depth + 1));
      return Value::array(std::move(out));
    }
    case ordered_json::value_t::object: {
      std::vector<std::pair<uint64_t, std::string>> indices;
      for (auto it = j.begin(); it != j.end(); ++it)
        if (is_index_key(it.key()))
          indices.emplace_back(std::stoull(it.key()), it.key());
      std::sort(indices.begin(), indices.end());
      jinja::Object o;
      for (const auto& [n, k] : indices) o.set(k, to_value(j.at(k), depth + 1));
      for (auto it = j.begin(); it != j.end(); ++it)
        if (!is_index_key(it.key()))
          o.set(it.key(), to_value(it.value(), depth + 1));
      return Value::object(std::move(o));
    }
    default:
      throw jinja::Error("template variables hold a value JSON cannot express");
  }
}

ordered_json chat_context(const ordered_json& messages, const ChatOptions& o) {
  LOWMEM_CHECK(messages.is_array(),
               "[chat] messages must be a JSON array, got ",
               messages.type_name());
  LOWMEM_CHECK(o.extra().is_object(),
               "[chat] extra template variables must be a JSON object");
  ordered_json ctx = ordered_json::object();
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = o.add_generation_prompt();
  ctx["bos_token"] = o.bos_token();
  ctx["eos_token"] = o.eos_token();
  for (auto it = o.extra().begin(); it != o.extra().end(); ++it)
    ctx[it.key()] = it.value();
  return ctx;
}

size_t common_prefix(const std::string& a, const std::string& b,
                     size_t from = 0) {
  size_t n = from;
  const size_t m = std::min(a.size(), b.size());
  while (n < m && a[n] == b[n]) ++n;
  return n;
}

// Common suffix of a[from:] and b[from:].
size_t common_suffix(const std::string& a, const std::string& b, size_t from) {
  size_t n = 0;
  while (n + from < a.size() && n + from < b.size() &&
         a[a.size() - 1 - n] == b[b.size() - 1 - n])
    ++n;
  return n;
}

// [begin, end) of `rendered` (the render of `messages`) where renders
// with `replace(i)` applied differ from it, over two probes whose first and
// last characters differ (so the range is exact at both ends). Empty
// optional: a probe rendering failed (the template raised) or both probes
// rendered `rendered` unchanged.
template <class Replace>
std::optional<std::pair<size_t, size_t>> probe_range(
    const ChatTemplate& t, const ordered_json& messages, size_t i,
    const ChatOptions& o, const std::string& rendered, Replace replace) {
  size_t begin = rendered.size(), end = 0;
  bool changed = false;
  for (const char* probe : {"lowmem-probe-A", "LOWMEM_PROBE_B"}) {
    ordered_json m = messages;
    replace(m[i], probe);
    std::string r;
    try {
      r = render_chat(t, m, o);
    } catch (const c10::Error&) {
      return std::nullopt;
    }
    changed = changed || r != rendered;
    const size_t p = common_prefix(rendered, r);
    const size_t s = common_suffix(rendered, r, p);
    begin = std::min(begin, p);
    end = std::max(end, rendered.size() - s);
  }
  if (!changed) return std::nullopt;
  return std::make_pair(begin, std::max(begin, end));
}

std::string strip_suffix(std::string s, const std::string& suffix) {
  if (!suffix.empty() && s.size() >= suffix.size() &&
      s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0)
    s.resize(s.size() - suffix.size());
  return s;
}

// The bytes message i produces in `rendered`: its reply, found by replacing
// the message with a plain assistant message (then, if the template rejects
// that, by replacing only its content). A message whose content the template
// does not print (tool calls) is what the conversation cut after it adds to
// the conversation cut before it (`trailer` removed from both).
std::pair<size_t, size_t> message_range(const ChatTemplate& t,
                                        const ordered_json& messages, size_t i,
                                        const ChatOptions& o,
                                        const std::string& rendered,
                                        const std::string& trailer) {
  if (auto r = probe_range(
          t, messages, i, o, rendered, [](ordered_json& m, const char* probe) {
            m = ordered_json{{"role", "assistant"}, {"content", probe}};
          }))
    return *r;
  if (auto r = probe_range(
          t, messages, i, o, rendered,
          [](ordered_json& m, const char* probe) { m["content"] = probe; }))
    return *r;
  ordered_json before = ordered_json::array();
  for (size_t k = 0; k < i; ++k) before.push_back(messages[k]);
  ordered_json upto = before;
  upto.push_back(messages[i]);
  const std::string p = strip_suffix(render_chat(t, before, o), trailer);
  const std::string c = strip_suffix(render_chat(t, upto, o), trailer);
  LOWMEM_CHECK(
      c.compare(0, p.size(), p) == 0 && rendered.compare(0, c.size(), c) == 0,
      "[chat] cannot locate the tokens of assistant message ", i,
      ": no probe changes its rendering and the conversation rendered up to it "
      "is not a "
      "prefix of the whole rendering");
  return {p.size(), c.size()};
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, ChatTemplateLimits limits)
    : source_(source) {
  jinja::Limits l;
  l.max_source_bytes = limits.max_source_bytes();
  l.max_output_bytes = limits.max_output_bytes();
  l.max_parse_depth = limits.max_nesting();
  l.max_eval_depth = limits.max_call_depth();
  l.max_steps = limits.max_steps();
  try {
    impl_ = std::make_shared<const jinja::Template>(source, l);
  } catch (const jinja::Error& e) {
    LOWMEM_CHECK(false, "[chat] lowmem cannot parse this chat template: ",
                 clipped(e.what()));
  }
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  LOWMEM_CHECK(context.is_object(),
               "[chat] template variables must be a JSON object, got ",
               context.type_name());
  try {
    std::vector<std::pair<std::string, jinja::Value>> vars;
    for (auto it = context.begin(); it != context.end(); ++it)
      vars.emplace_back(it.key(), to_value(it.value(), 0));
    return impl_->render(vars);
  } catch (const jinja::Raised& e) {
    LOWMEM_CHECK(
        false, "[chat] the chat template raised an error: ", clipped(e.what()));
  } catch (const jinja::Unsupported& e) {
    LOWMEM_CHECK(false, "[chat] lowmem cannot render this chat template: ",
                 clipped(e.what()), " is not supported");
  } catch (const jinja::Error& e) {
    LOWMEM_CHECK(false, "[chat] rendering the chat template failed: ",
                 clipped(e.what()));
  }
  return {};
}

std::string render_chat(const ChatTemplate& t,
                        const nlohmann::ordered_json& messages,
                        const ChatOptions& options) {
  return t.render(chat_context(messages, options));
}

RenderedChat render_chat_with_spans(const ChatTemplate& t,
                                    const nlohmann::ordered_json& messages,
                                    const ChatOptions& options) {
  ChatOptions o = options;
  o.add_generation_prompt(false);
  RenderedChat out;
  out.text = render_chat(t, messages, o);
  // What the template appends to any conversation (LLaMA-3's base template
  // ends every rendering with an assistant header): the common end of its
  // renderings of no messages and of one user message, unless the first is
  // a prefix of the second (then it is a constant start: a BOS, a system
  // block). Not part of any turn.
  std::string trailer;
  try {
    const std::string none = render_chat(t, ordered_json::array(), o);
    const std::string one =
        render_chat(t,
                    ordered_json::array(
                        {{{"role", "user"}, {"content", "lowmem-probe-U"}}}),
                    o);
    if (one.compare(0, none.size(), none) != 0) {
      size_t n = 0;
      while (n < none.size() && n < one.size() &&
             none[none.size() - 1 - n] == one[one.size() - 1 - n])
        ++n;
      trailer = none.substr(none.size() - n);
    }
  } catch (const c10::Error&) {
    trailer.clear();  // a template that rejects these appends nothing fixed
  }
  size_t last_end = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || m["role"] != "assistant")
      continue;
    const auto [begin, reply_end] =
        message_range(t, messages, i, o, out.text, trailer);
    // The same conversation cut after message i: the text after its reply
    // there, up to where the continued conversation differs, is its turn end.
    ordered_json prefix = ordered_json::array();
    for (size_t k = 0; k <= i; ++k) prefix.push_back(messages[k]);
    const std::string cut = render_chat(t, prefix, o);
    const auto [cut_begin, cut_reply_end] =
        message_range(t, prefix, i, o, cut, trailer);
    const std::string tail =
        strip_suffix(cut.substr(std::min(cut_reply_end, cut.size())), trailer);
    const size_t turn_end = common_prefix(tail, out.text.substr(reply_end));
    const size_t end = reply_end + turn_end;
    LOWMEM_CHECK(
        begin >= last_end && begin <= end && end <= out.text.size(),
        "[chat] cannot locate the tokens of assistant message ", i,
        ": the template's output for it overlaps another message's (bytes ",
        begin, "..", end, ", previous turn ends at ", last_end, ")");
    (void)cut_begin;
    out.spans.push_back(AssistantSpan{begin, end, i});
    last_end = end;
  }
  return out;
}

}  // namespace lowmem::text
