// generation_config.json: the sampling defaults a model folder asks for, read as transformers'
// GenerationConfig reads them (see load_generation_config in generate.h).
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/models/generate.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace ferry::models {
namespace {

using json = nlohmann::json;

// transformers' GenerationConfig defaults for what ferry applies.
constexpr int64_t kDefaultTopK = 50;

// An id or a list of ids (eos_token_id), or nothing for null.
std::vector<int64_t> read_ids(const json& v, const std::string& key, const std::string& source) {
  if (v.is_null()) return {};
  if (v.is_number_integer()) return {v.get<int64_t>()};
  FERRY_CHECK(v.is_array(), source, ": ", key, " must be a token id or a list of ids, got ", v.dump());
  std::vector<int64_t> ids;
  for (const json& e : v) {
    FERRY_CHECK(e.is_number_integer(), source, ": ", key, " must list token ids, got ", e.dump());
    ids.push_back(e.get<int64_t>());
  }
  return ids;
}

template <typename T>
T number(const json& j, const std::string& key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  FERRY_CHECK(it->is_number(), source, ": ", key, " must be a number, got ", it->dump());
  return it->get<T>();
}

}  // namespace

GenerationConfig load_generation_config(const std::string& dir, const ModelConfig& config) {
  GenerationConfig g;
  g.top_k = kDefaultTopK;
  g.eos_token_ids = config.eos_token_ids;
  g.pad_token_id = config.pad_token_id;
  const std::filesystem::path path = std::filesystem::path(dir) / "generation_config.json";
  std::ifstream in(path);
  if (!in) return g;
  const std::string source = path.string();
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  FERRY_CHECK(!j.is_discarded(), source, " is not valid JSON; fix or remove it (it only sets sampling defaults)");
  FERRY_CHECK(j.is_object(), source, " must hold a JSON object, got ", j.type_name());

  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    FERRY_CHECK(it->is_boolean(), source, ": do_sample must be true or false, got ", it->dump());
    g.do_sample = it->get<bool>();
  }
  g.temperature = number<double>(j, "temperature", g.temperature, source);
  g.top_k = number<int64_t>(j, "top_k", g.top_k, source);
  g.top_p = number<double>(j, "top_p", g.top_p, source);
  g.max_new_tokens = number<int64_t>(j, "max_new_tokens", g.max_new_tokens, source);
  if (j.contains("eos_token_id")) g.eos_token_ids = read_ids(j["eos_token_id"], "eos_token_id", source);
  if (auto it = j.find("pad_token_id"); it != j.end()) {
    std::vector<int64_t> pad = read_ids(*it, "pad_token_id", source);
    g.pad_token_id = pad.empty() ? c10::nullopt : c10::optional<int64_t>(pad.front());
  }
  // Settings that would change the tokens if ferry applied them: named, not dropped in silence.
  std::vector<std::string> ignored;
  auto differs = [&](const char* key, double neutral) {
    auto it = j.find(key);
    if (it != j.end() && it->is_number() && it->get<double>() != neutral) ignored.push_back(std::string(key) + " " + it->dump());
  };
  differs("num_beams", 1);
  differs("repetition_penalty", 1);
  differs("no_repeat_ngram_size", 0);
  differs("typical_p", 1);
  differs("min_p", 0);
  differs("length_penalty", 1);
  if (!ignored.empty()) {
    std::string list;
    for (const auto& s : ignored) list += (list.empty() ? "" : ", ") + s;
    log_warning(source + " sets " + list + ", which ferry does not apply: tokens may differ from transformers' generate");
  }
  return g;
}

}  // namespace ferry::models
