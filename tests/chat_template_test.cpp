// Unit tests of the chat template engine (model/chat_template/): expressions, filters, tests,
// whitespace control, scoping, errors, and loading a model folder's templates. Expected strings
// are what Python jinja2 renders in Hugging Face's environment (trim_blocks, lstrip_blocks);
// tests/chat_template_compare checks whole real templates against jinja2 and @huggingface/jinja.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "model/chat_template/chat_template.h"

namespace lserve {
namespace {

using ordered_json = nlohmann::ordered_json;

// Renders `source` with no messages and `vars` as the template's variables.
std::string render(std::string_view source, const ordered_json& vars = ordered_json::object()) {
  return ChatTemplate(source).render(ordered_json::array(), vars);
}

// The message of the error that rendering `source` throws ("" when it renders).
std::string error_of(std::string_view source, const ordered_json& vars = ordered_json::object()) {
  try {
    render(source, vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// --- Expressions -----------------------------------------------------------------------------------

TEST(ChatTemplate, PrintsValuesAsPythonDoes) {
  EXPECT_EQ(render("{{ 1 }} {{ 1.0 }} {{ 2.50 }} {{ 1e16 }} {{ 0.00001 }} {{ 10 / 4 }}"), "1 1.0 2.5 1e+16 1e-05 2.5");
  EXPECT_EQ(render("{{ true }} {{ False }} {{ none }} {{ None }}"), "True False None None");
  EXPECT_EQ(render("{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }}"), "[1, 'a', None, True, 1.5, {'k': 'v'}]");
  EXPECT_EQ(render("{{ x }}", {{"x", {"it's", "a\"b"}}}), "[\"it's\", 'a\"b']");
  EXPECT_EQ(render("{{ (1, 'a') }} {{ (1,) }}"), "(1, 'a') (1,)");
  EXPECT_EQ(render("{{ x }}", {{"x", 22.0}}), "22.0");  // a JSON float stays a float
}

TEST(ChatTemplate, ArithmeticFollowsPython) {
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}"),
            "3 -4 1 2 -2 1024 0.5");
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ 1 + 1.5 }} {{ true + 1 }}"),
            "7 9 ababab [1, 1] 2.5 2");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ undefined_name }} {{ [1] + [2] }} {{ -3 | abs }}"), "a1None [1, 2] 3");
  EXPECT_EQ(error_of("{{ 1 / 0 }}"), "chat template line 1: division by zero");
  EXPECT_EQ(error_of("{{ 'a' + 1 }}"), "chat template line 1: can only concatenate str (not \"int\") to str");
}

TEST(ChatTemplate, ComparisonsAndLogic) {
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ [1, 2] == [1, 2] }}"),
            "True False True True True");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' not in 'abc' }}"),
            "True True True True");
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not [] }} {{ 'a' if 0 else 'b' }} [{{ 'a' if 0 }}]"),
            "x y True b []");
}

TEST(ChatTemplate, PrecedenceMatchesJinja2) {
  EXPECT_EQ(render("{{ -x | abs }}", {{"x", 3}}), "3");           // (-x) | abs
  EXPECT_EQ(render("{{ 'a' + ' b ' | trim }}"), "ab");             // 'a' + (' b ' | trim)
  EXPECT_EQ(render("{{ not x is defined }}"), "True");             // not (x is defined)
  EXPECT_EQ(render("{{ '1' + 2 ~ 3 }}"), "123");                    // ~ binds tighter than +: '1' + (2 ~ 3)
}

TEST(ChatTemplate, SubscriptsAndSlices) {
  const ordered_json vars = {{"s", "héllo"}, {"l", {1, 2, 3, 4, 5}}, {"d", {{"a", {{"b", "deep"}}}}}};
  EXPECT_EQ(render("{{ s[1] }} {{ s[-1] }} {{ s[1:3] }} {{ s[::-1] }} {{ s | length }}", vars), "é o él olléh 5");
  EXPECT_EQ(render("{{ l[1::2] }} {{ l[-2:] }} {{ l[:-3] }} {{ l[10] }}|{{ l.0 }}", vars), "[2, 4] [4, 5] [1, 2] |1");
  EXPECT_EQ(render("{{ d.a.b }} {{ d['a']['b'] }} {{ d.zz }}|{{ d.zz is defined }}", vars), "deep deep |False");
}

TEST(ChatTemplate, StringEscapesAndLiterals) {
  EXPECT_EQ(render(R"({{ 'a\nb\t\'\x41\u00e9\\' }})"), "a\nb\t'Aé\\");
  EXPECT_EQ(render(R"({{ "it's" 'concatenated' }})"), "it'sconcatenated");
  EXPECT_EQ(render("{{ 1_000 }} {{ 1.5e3 }} {{ {'a': {'b': 1}} }}"), "1000 1500.0 {'a': {'b': 1}}");
}

// --- Undefined ----------------------------------------------------------------------------------------

TEST(ChatTemplate, UndefinedBehavesLikeJinja2Default) {
  EXPECT_EQ(render("[{{ nothing }}][{{ nothing | length }}][{% for x in nothing %}x{% endfor %}]"), "[][0][]");
  EXPECT_EQ(render("{{ nothing is defined }} {{ nothing is undefined }} {{ nothing | default('d') }}"), "False True d");
  EXPECT_EQ(render("{{ none | default('d') }} {{ '' | default('d', true) }}"), "None d");
  EXPECT_EQ(error_of("{{ nothing.attr }}"), "chat template line 1: 'nothing' is undefined");
  EXPECT_EQ(error_of("{{ nothing + 1 }}"), "chat template line 1: 'nothing' is undefined");
  EXPECT_EQ(error_of("{{ d.x.y }}", {{"d", ordered_json::object()}}),
            "chat template line 1: 'dict object' has no attribute 'x'");
}

// --- Statements ----------------------------------------------------------------------------------------

TEST(ChatTemplate, ForLoopVariables) {
  EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
                   "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}"),
            "1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;");
  EXPECT_EQ(render("{% for x in [1, 2, 3] %}{{ loop.previtem }}>{{ x }}<{{ loop.nextitem }} {% endfor %}"), ">1<2 1>2<3 2>3< ");
  EXPECT_EQ(render("{% for x in range(5) if x is odd %}{{ loop.index }}:{{ x }} {% endfor %}"), "1:1 2:3 ");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {{"d", {{"b", 1}, {"a", 2}}}}), "b=1,a=2,");
  EXPECT_EQ(render("{% for k in d %}{{ k }}{% endfor %}", {{"d", {{"z", 1}, {"y", 2}}}}), "zy");
  EXPECT_EQ(render("{% for x in range(9) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}"
                   "{{ x }}{{ loop.cycle('a', 'b') }}{% endfor %}"),
            "0a2a3b");
}

TEST(ChatTemplate, ScopesAndNamespaces) {
  // A set inside a loop is gone after it (and in the next iteration); namespaces carry state out.
  EXPECT_EQ(render("{% set x = 5 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}"), "[5][5]5");
  EXPECT_EQ(render("{% set ns = namespace(total=0, seen=[]) %}{% for i in range(5) %}{% set ns.total = ns.total + i %}"
                   "{% endfor %}{{ ns.total }}"),
            "10");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t %}block {{ a }}{% endset %}[{{ t }}]"), "12[block 1]");
  EXPECT_EQ(render("{% set t | upper %}shout{% endset %}{{ t }}"), "SHOUT");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.y = 2 %}"),
            "chat template line 1: cannot assign attribute on non-namespace object 'x'");
}

TEST(ChatTemplate, MacrosAndCallBlocks) {
  EXPECT_EQ(render("{% macro m(a, b='x') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}{{ m(*[4, 5]) }}"),
            "[1x][23][45]");
  EXPECT_EQ(render("{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}"
                   "{% call wrap('b') %}bold{% endcall %}"),
            "<b>bold</b>");
  // Macros see the template's variables as they are at call time.
  EXPECT_EQ(render("{% macro m() %}{{ y }}{% endmacro %}{% set y = 3 %}{{ m() }}"), "3");
  EXPECT_EQ(render("{% filter upper %}abc {{ 1 }}{% endfilter %}"), "ABC 1");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
}

// --- Whitespace ----------------------------------------------------------------------------------------

TEST(ChatTemplate, TrimBlocksAndLstripBlocks) {
  // lstrip_blocks removes the indentation before a block tag; trim_blocks its newline after.
  EXPECT_EQ(render("a\n  {% if true %}\n  x\n  {% endif %}\nb"), "a\n  x\nb");
  EXPECT_EQ(render("a\n  {% if true %}\n  x\n  {% endif %}  \nb"), "a\n  x\n  \nb");
  EXPECT_EQ(render("a  {% if true %}x{% endif %}\nb"), "a  xb");  // text before the tag: no lstrip
  EXPECT_EQ(render("  {# comment #}\nx"), "x");
  EXPECT_EQ(render("a {{ 1 }}\n  {{ 2 }}\n"), "a 1\n  2");         // {{ }} is left alone; last newline dropped
  EXPECT_EQ(render("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");  // + turns both off
}

TEST(ChatTemplate, MinusStripsAllWhitespace) {
  EXPECT_EQ(render("a\n  {%- if true -%}\n\n x \n {%- endif %}"), "ax");
  EXPECT_EQ(render("{{- ' a ' -}}  \n  {{ 'b' }}"), " a b");
  EXPECT_EQ(render("a  {#- c -#}  b"), "ab");
  EXPECT_EQ(render("x\r\ny\rz"), "x\ny\nz");  // newlines normalized as jinja2 does
}

// --- Filters and tests ---------------------------------------------------------------------------------

TEST(ChatTemplate, StringFilters) {
  EXPECT_EQ(render("{{ '  hi  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'Hi' | lower }}{{ 'hi' | upper }}|"
                   "{{ 'hello wORLD' | title }}|{{ 'hello wORLD' | capitalize }}|{{ 'a-b' | replace('-', '+') }}"),
            "hi|hi|hiHI|Hello World|Hello world|a+b");
  EXPECT_EQ(render("{{ 'one two  three' | wordcount }} {{ 'abc' | reverse }} {{ 'ab' | center(6) }}|"), "3 cba   ab  |");
  EXPECT_EQ(render("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(2, blank=true) }}"),
            "a\n  b\n\n  c|  a\n  b|a\n  \n  b");
  EXPECT_EQ(render("{{ 42 | string }} {{ '7' | int + 1 }} {{ '2.5' | float }} {{ 'x' | int }} {{ 3.7 | int }} {{ 2.5 | round }}"),
            "42 8 2.5 0 3 2.0");
  EXPECT_EQ(render("{{ '<a>' | e }} {{ 'x' | safe + '<' }}"), "&lt;a&gt; x&lt;");
}

TEST(ChatTemplate, SequenceFilters) {
  const ordered_json vars = {
      {"msgs", {{{"role", "user"}, {"n", 2}}, {{"role", "system"}, {"n", 1}}, {{"role", "user"}, {"n", 3}}}}};
  EXPECT_EQ(render("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='n') | list }}", vars), "[2, 3]");
  EXPECT_EQ(render("{{ msgs | rejectattr('role', 'eq', 'user') | list | length }} {{ msgs | map(attribute='role') | unique | join(',') }}", vars),
            "1 user,system");
  EXPECT_EQ(render("{{ msgs | sort(attribute='n') | map(attribute='n') | join }} {{ msgs | map(attribute='missing', default='-') | join }}", vars),
            "123 ---");
  EXPECT_EQ(render("{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'a'] | sort }} {{ ['b', 'A', 'a'] | unique | list }} {{ [1, 2] | first }}{{ [1, 2] | last }}"),
            "[1, 2, 3] ['A', 'a', 'b'] ['b', 'A'] 12");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2} | dictsort }} {{ {'x': 1} | items | list }} {{ [1, 2, 3] | sum }} {{ [1, 5, 2] | max }}"),
            "[('a', 2), ('b', 1)] [('x', 1)] 6 5");
  EXPECT_EQ(render("{{ none | selectattr('x') | list }} {{ [0, 1, '', 'a'] | select | list }} {{ ['a', 'b'] | map('upper') | join }}"),
            "[] [1, 'a'] AB");
}

TEST(ChatTemplate, ToJsonIsHuggingFaces) {
  const ordered_json vars = {{"d", ordered_json::parse(R"({"b": 1, "a": [1, 2.5, null, true, "é\n\"q\""]})")}};
  // Keys in insertion order, non-ASCII kept, Python's separators.
  EXPECT_EQ(render("{{ d | tojson }}", vars), R"({"b": 1, "a": [1, 2.5, null, true, "é\n\"q\""]})");
  EXPECT_EQ(render("{{ d | tojson(indent=2) }}", vars),
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true,\n    \"é\\n\\\"q\\\"\"\n  ]\n}");
  EXPECT_EQ(render("{{ d | tojson(separators=(',', ':'), sort_keys=true) }}", vars), R"({"a":[1,2.5,null,true,"é\n\"q\""],"b":1})");
  EXPECT_EQ(render("{{ 'é' | tojson(ensure_ascii=true) }} {{ [] | tojson(indent=2) }} {{ {} | tojson }}"), R"("\u00e9" [] {})");
  EXPECT_EQ(error_of("{{ nothing | tojson }}"), "chat template line 1: Object of type Undefined is not JSON serializable");
}

TEST(ChatTemplate, Tests) {
  EXPECT_EQ(render("{{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }} {{ 1 is number }} "
                   "{{ true is boolean }} {{ none is none }} {{ false is false }} {{ 1 is true }}"),
            "True True True True True True True True False");
  EXPECT_EQ(render("{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 2 is in [1, 2] }} {{ 'a' is equalto 'a' }} "
                   "{{ 1 is eq 2 }} {{ x is not none }}"),
            "True True True True True False True");
}

TEST(ChatTemplate, StringAndDictMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xax'.strip('x') }}|{{ ' a'.lstrip() }}|{{ 'a '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|"
                   "{{ ' a  b '.split() }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith(('x', 'b')) }}|"
                   "{{ 'hello world'.title() }}|{{ 'x-y'.replace('-', '') }}|{{ '{}={name}'.format(1, name='v') }}"),
            "a b|a|a|a|['a', 'b', '', 'c']|['a', 'b']|['a b', 'c']|TrueTrue|Hello World|xy|1=v");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 0) }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}",
                   {{"d", {{"a", 1}}}}),
            "1 None 0 ['a'] [1] [('a', 1)]");
  EXPECT_EQ(error_of("{{ [].append(1) }}"), "chat template line 1: access to attribute 'append' of 'list' object is unsafe.");
}

// --- Errors ----------------------------------------------------------------------------------------------

TEST(ChatTemplate, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("line one\n{{ x | no_such_filter }}"), "chat template line 2: unknown filter 'no_such_filter'");
  EXPECT_EQ(error_of("\n\n{% if x is no_such_test %}{% endif %}"), "chat template line 3: unknown test 'no_such_test'");
  EXPECT_EQ(error_of("a\n{% for x in y %}\nb"),
            "chat template line 2: unexpected end of template: missing '{% endfor %}' for the block that starts here");
  EXPECT_EQ(error_of("{{ 1 + }}"), "chat template line 1: unexpected '}}'");
  EXPECT_EQ(error_of("{% include 'x' %}"), "chat template line 1: unknown tag 'include'");
  EXPECT_EQ(error_of("{% endif %}"), "chat template line 1: unexpected 'endif'");
  EXPECT_EQ(error_of("{{ 'open"), "chat template line 1: unterminated string literal");
  EXPECT_EQ(error_of("x\n{# never closed"), "chat template line 2: unterminated comment '{#'");
  EXPECT_THROW(ChatTemplate("{{ x | nope }}"), ChatTemplateError);  // at construction, not at render
}

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
  const ChatTemplate t("{% if messages[0].role != 'user' %}{{ raise_exception('Only user messages, please!') }}{% endif %}ok");
  EXPECT_EQ(t.render(ordered_json::parse(R"([{"role": "user", "content": "x"}])")), "ok");
  try {
    t.render(ordered_json::parse(R"([{"role": "system", "content": "x"}])"));
    FAIL() << "expected ChatTemplateRaised";
  } catch (const ChatTemplateRaised& e) {
    EXPECT_STREQ(e.what(), "Only user messages, please!");  // no line prefix: it is for the client
  }
  // Other errors are ChatTemplateError but not ChatTemplateRaised; both are lserve::Error.
  EXPECT_THROW(render("{{ nothing.x }}"), ChatTemplateError);
  try {
    render("{{ nothing.x }}");
  } catch (const ChatTemplateRaised&) {
    FAIL() << "an undefined value is not a raise_exception";
  } catch (const Error&) {
  }
}

TEST(ChatTemplate, RunawayRecursionIsAnError) {
  EXPECT_NE(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("nested too deeply"), std::string::npos);
  EXPECT_NE(error_of("{{ range(1000000) | length }}").find("Range too big"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 1000000000000 }}").find("too large"), std::string::npos);
  EXPECT_NE(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}{% endfor %}")
                .find("exceeds 256 MiB"),
            std::string::npos);
  std::string nots = "{{ ";
  for (int i = 0; i < 5000; ++i) nots += "not ";
  EXPECT_EQ(error_of(nots + "1 }}"), "chat template line 1: template nested too deeply");
  EXPECT_EQ(error_of("{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}"),
            "chat template line 1: template nested too deeply");
  std::string deep_ifs;
  for (int i = 0; i < 1000; ++i) deep_ifs += "{% if true %}";
  EXPECT_EQ(error_of(deep_ifs), "chat template line 1: template nested too deeply");
}

// --- The chat variables ---------------------------------------------------------------------------------

TEST(ChatTemplate, VariablesAsApplyChatTemplateSetsThem) {
  const ChatTemplate t("{{ bos_token }}|{{ eos_token }}|{{ tools }}|{{ documents }}|{{ add_generation_prompt }}|"
                       "{{ enable_thinking is defined }}|{{ messages | length }}",
                       std::string("<s>"), std::nullopt);
  EXPECT_EQ(t.render(ordered_json::array({{{"role", "user"}, {"content", "x"}}})), "<s>||None|None|False|False|1");
  EXPECT_EQ(t.render(ordered_json::array(), {{"add_generation_prompt", true}, {"enable_thinking", false}, {"eos_token", "E"}}),
            "<s>|E|None|None|True|True|0");
}

TEST(ChatTemplate, StrftimeNowUsesTheInjectedClock) {
  ChatTemplate t("{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M') }}");
  t.set_clock([] {
    std::tm tm{};
    tm.tm_year = 2024 - 1900;
    tm.tm_mon = 6;
    tm.tm_mday = 26;
    tm.tm_hour = 9;
    tm.tm_min = 5;
    return tm;
  });
  EXPECT_EQ(t.render(ordered_json::array()), "26 Jul 2024 2024-07-26 09:05");
}

TEST(ChatTemplate, KeyOrderOfTheRequestIsKept) {
  const ChatTemplate t("{{ tools[0] | tojson }}");
  const auto tools = ordered_json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])");
  EXPECT_EQ(t.render(ordered_json::array(), {{"tools", tools}}), R"({"type": "function", "function": {"name": "f", "parameters": {}}})");
  // nlohmann::json sorts keys; the overload for it cannot know the original order.
  EXPECT_EQ(t.render(nlohmann::json::array(), nlohmann::json{{"tools", nlohmann::json::parse(tools.dump())}}),
            R"({"function": {"name": "f", "parameters": {}}, "type": "function"})");
}

// --- Model folders ----------------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() : path_(std::filesystem::temp_directory_path() / ("lserve-chat-template-" + std::to_string(::getpid()) + "-" +
                                                             std::to_string(counter_++))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path_ / name) << text; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

TEST(ModelChatTemplates, ReadsTheBundledModel) {
  const auto templates = ModelChatTemplates::from_dir(std::filesystem::path(LSERVE_SOURCE_DIR) / "models/tiny-llama");
  ASSERT_TRUE(templates.has_value());
  const auto messages = ordered_json::parse(R"([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}])");
  EXPECT_EQ(templates->pick(false).render(messages, {{"add_generation_prompt", true}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ModelChatTemplates, NamedTemplatesAndTokenObjects) {
  TempDir dir;
  dir.write("tokenizer_config.json", R"({
    "bos_token": {"__type": "AddedToken", "content": "<B>"}, "eos_token": "<E>", "pad_token": null,
    "chat_template": [{"name": "default", "template": "D{{ bos_token }}{{ eos_token }}{{ pad_token is defined }}"},
                      {"name": "tool_use", "template": "T{{ tools | length }}"},
                      {"name": "rag", "template": "R"}]})");
  const auto t = ModelChatTemplates::from_dir(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->names, (std::vector<std::string>{"default", "tool_use", "rag"}));
  EXPECT_EQ(t->pick(false).render(ordered_json::array()), "D<B><E>False");
  EXPECT_EQ(t->pick(true).render(ordered_json::array(), {{"tools", {1, 2}}}), "T2");
}

TEST(ModelChatTemplates, ChatTemplateJinjaFileWins) {
  TempDir dir;
  dir.write("tokenizer_config.json", R"({"eos_token": "<E>", "chat_template": "from config"})");
  dir.write("chat_template.jinja", "from file {{ eos_token }}\n");
  const auto t = ModelChatTemplates::from_dir(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->pick(false).render(ordered_json::array()), "from file <E>");
  EXPECT_FALSE(t->tool_use.has_value());
}

TEST(ModelChatTemplates, MissingOrBrokenTemplates) {
  TempDir none;
  none.write("tokenizer_config.json", R"({"eos_token": "<E>"})");
  EXPECT_FALSE(ModelChatTemplates::from_dir(none.path()).has_value());
  TempDir broken;
  broken.write("tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  EXPECT_THROW(ModelChatTemplates::from_dir(broken.path()), ChatTemplateError);
  TempDir no_default;
  no_default.write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "R"}]})");
  EXPECT_THROW(ModelChatTemplates::from_dir(no_default.path()), Error);
}

}  // namespace
}  // namespace lserve
