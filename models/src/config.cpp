#include "ferry/models/config.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ferry::models {
namespace {

using json = nlohmann::json;  // for writing config.json
namespace fs = std::filesystem;

std::string read_text(const fs::path& path) { return io::read_regular_file(path.string(), "load_config"); }

using io::JsonValue;

// A member that is absent or null reads as absent, as transformers' defaults do.
std::optional<JsonValue> member(const JsonValue& j, const char* key) {
  auto v = j.find(key);
  if (!v || v->is_null()) return std::nullopt;
  return v;
}

bool present(const JsonValue& j, const char* key) { return member(j, key).has_value(); }

int64_t get_int(const JsonValue& j, const char* key, const std::string& source) {
  auto v = member(j, key);
  if (!v) FERRY_FAIL(source, " has no '", key, "': it is required for this architecture");
  auto i = v->as_int64();
  if (!i) FERRY_FAIL(source, ": '", key, "' must be an integer, got ", v->dump());
  return *i;
}

int64_t get_int_or(const JsonValue& j, const char* key, int64_t fallback, const std::string& source) {
  return present(j, key) ? get_int(j, key, source) : fallback;
}

double get_double_or(const JsonValue& j, const char* key, double fallback, const std::string& source) {
  auto v = member(j, key);
  if (!v) return fallback;
  auto d = v->as_double();
  if (!d) FERRY_FAIL(source, ": '", key, "' must be a number, got ", v->dump());
  return *d;
}

bool get_bool_or(const JsonValue& j, const char* key, bool fallback, const std::string& source) {
  auto v = member(j, key);
  if (!v) return fallback;
  auto b = v->as_bool();
  if (!b) FERRY_FAIL(source, ": '", key, "' must be true or false, got ", v->dump());
  return *b;
}

std::string get_string_or(const JsonValue& j, const char* key, const std::string& fallback, const std::string& source) {
  auto v = member(j, key);
  if (!v) return fallback;
  auto s = v->as_string();
  if (!s) FERRY_FAIL(source, ": '", key, "' must be a string, got ", v->dump());
  return std::string(*s);
}

std::vector<int64_t> get_ids(const JsonValue& j, const char* key, const std::string& source) {
  std::vector<int64_t> ids;
  auto v = member(j, key);
  if (!v) return ids;
  if (auto one = v->as_int64()) {
    ids.push_back(*one);
  } else if (v->is_array()) {
    for (JsonValue e : v->elements()) {
      auto id = e.as_int64();
      if (!id) FERRY_FAIL(source, ": '", key, "' must hold integers, got ", v->dump());
      ids.push_back(*id);
    }
  } else {
    FERRY_FAIL(source, ": '", key, "' must be an integer or a list of integers, got ", v->dump());
  }
  return ids;
}

// The rope settings: transformers 5's rope_parameters, else legacy rope_theta + rope_scaling.
RopeConfig parse_rope(const JsonValue& j, double default_theta, const std::string& source) {
  RopeConfig rope;
  std::optional<JsonValue> params;
  if (present(j, "rope_parameters")) {
    params = member(j, "rope_parameters");
    if (!params->is_object())
      FERRY_FAIL(source, ": 'rope_parameters' must be an object, got ", params->dump());
    rope.theta = get_double_or(*params, "rope_theta", get_double_or(j, "rope_theta", default_theta, source), source);
  } else {
    rope.theta = get_double_or(j, "rope_theta", default_theta, source);
    if (present(j, "rope_scaling")) {
      params = member(j, "rope_scaling");
      if (!params->is_object()) FERRY_FAIL(source, ": 'rope_scaling' must be an object, got ", params->dump());
    }
  }
  if (params) {
    // Older configs spell the type "type".
    rope.type = get_string_or(*params, "rope_type", get_string_or(*params, "type", "default", source), source);
    double partial = get_double_or(*params, "partial_rotary_factor", 1.0, source);
    FERRY_CHECK(partial == 1.0, source, ": partial_rotary_factor ", partial,
                " is not supported (ferry's Llama-family attention rotates the whole head)");
  }
  if (rope.type == "llama3") {
    const char* what = present(j, "rope_parameters") ? "rope_parameters" : "rope_scaling";
    for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      FERRY_CHECK(present(*params, key), source, ": rope type 'llama3' needs '", key, "' in '", what, "'");
    rope.factor = get_double_or(*params, "factor", 1.0, source);
    rope.low_freq_factor = get_double_or(*params, "low_freq_factor", 1.0, source);
    rope.high_freq_factor = get_double_or(*params, "high_freq_factor", 4.0, source);
    rope.original_max_position_embeddings = get_int(*params, "original_max_position_embeddings", source);
    FERRY_CHECK(rope.factor > 0 && rope.high_freq_factor > rope.low_freq_factor && rope.low_freq_factor > 0,
                source, ": llama3 rope needs factor > 0 and high_freq_factor > low_freq_factor > 0, got factor=",
                rope.factor, ", low_freq_factor=", rope.low_freq_factor, ", high_freq_factor=", rope.high_freq_factor);
  } else if (rope.type != "default") {
    FERRY_FAIL(source, ": rope type '", rope.type,
               "' is not supported; ferry implements 'default' and 'llama3' (linear, dynamic, yarn, longrope are not)");
  }
  FERRY_CHECK(rope.theta > 0, source, ": rope_theta must be positive, got ", rope.theta);
  return rope;
}

void check_positive(int64_t value, const char* name, const std::string& source) {
  FERRY_CHECK(value > 0, source, ": '", name, "' must be positive, got ", value);
}

// Note [Config limits]: the model is built from these numbers before any weight is read, so a
// damaged config.json could ask for a billion layers (a hang) or a 2-billion-wide head (gigabytes
// allocated before a shape check). Each size must be far above every published model's and far
// below what would cost noticeable time or memory to build on the meta device.
void check_within_limits(const ModelConfig& c, const std::string& source) {
  const std::pair<int64_t, std::pair<const char*, int64_t>> limits[] = {
      {c.vocab_size, {"vocab_size", int64_t(1) << 24}},
      {c.hidden_size, {"hidden_size", int64_t(1) << 18}},
      {c.intermediate_size, {"intermediate_size", int64_t(1) << 21}},
      {c.num_hidden_layers, {"num_hidden_layers", 4096}},
      {c.num_attention_heads, {"num_attention_heads", 8192}},
      {c.num_key_value_heads, {"num_key_value_heads", 8192}},
      {c.head_dim, {"head_dim", 1 << 15}},
      {c.max_position_embeddings, {"max_position_embeddings", int64_t(1) << 26}},
  };
  for (const auto& [value, limit] : limits)
    FERRY_CHECK(value <= limit.second, source, ": '", limit.first, "' is ", value, ", beyond any model ferry can build (at most ",
                limit.second, "); is config.json damaged?");
  FERRY_CHECK(c.num_attention_heads * c.head_dim <= (int64_t(1) << 18), source, ": num_attention_heads x head_dim is ",
              c.num_attention_heads * c.head_dim, ", beyond any model ferry can build; is config.json damaged?");
}

// The mixture-of-experts fields, under each family's names: Mixtral's num_local_experts and
// intermediate_size per expert; Qwen's num_experts (transformers 5 also writes num_local_experts),
// moe_intermediate_size, norm_topk_prob, decoder_sparse_step, mlp_only_layers and Qwen2-MoE's shared
// expert.
void parse_moe(const JsonValue& j, ModelConfig& c, const std::string& source) {
  c.num_experts = present(j, "num_experts") ? get_int(j, "num_experts", source) : get_int(j, "num_local_experts", source);
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", source);
  check_positive(c.num_experts, "num_experts", source);
  check_positive(c.num_experts_per_tok, "num_experts_per_tok", source);
  FERRY_CHECK(c.num_experts <= 4096, source, ": 'num_experts' is ", c.num_experts,
              ", beyond any model ferry can build (at most 4096); is config.json damaged?");
  FERRY_CHECK(c.num_experts_per_tok <= c.num_experts, source, ": num_experts_per_tok ", c.num_experts_per_tok,
              " is more than the ", c.num_experts, " experts");
  c.sparse_layers.assign(static_cast<size_t>(c.num_hidden_layers), true);
  if (c.model_type == "mixtral") {
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = true;
    return;
  }
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", source);
  check_positive(c.moe_intermediate_size, "moe_intermediate_size", source);
  FERRY_CHECK(c.moe_intermediate_size <= (int64_t(1) << 21), source, ": 'moe_intermediate_size' is ",
              c.moe_intermediate_size, ", beyond any model ferry can build; is config.json damaged?");
  c.norm_topk_prob = get_bool_or(j, "norm_topk_prob", c.model_type == "qwen3_moe", source);
  if (c.model_type == "qwen2_moe") {
    c.shared_expert_intermediate_size = get_int_or(j, "shared_expert_intermediate_size", 0, source);
    FERRY_CHECK(c.shared_expert_intermediate_size >= 0 && c.shared_expert_intermediate_size <= (int64_t(1) << 21),
                source, ": 'shared_expert_intermediate_size' must be from 0 to 2^21, got ",
                c.shared_expert_intermediate_size);
  }
  const int64_t step = get_int_or(j, "decoder_sparse_step", 1, source);
  check_positive(step, "decoder_sparse_step", source);
  std::vector<int64_t> dense;
  if (present(j, "mlp_only_layers")) {
    const JsonValue list = *member(j, "mlp_only_layers");
    FERRY_CHECK(list.is_array(), source, ": 'mlp_only_layers' must be a list of layer indices, got ", list.dump());
    for (JsonValue v : list.elements()) {
      auto i = v.as_int64();
      FERRY_CHECK(i && *i >= 0 && *i < c.num_hidden_layers, source, ": 'mlp_only_layers' holds ", v.dump(),
                  ", not a layer index from 0 to ", c.num_hidden_layers - 1);
      dense.push_back(*i);
    }
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.sparse_layers[static_cast<size_t>(i)] =
        (i + 1) % step == 0 && std::find(dense.begin(), dense.end(), i) == dense.end();
}

void parse_llama_family(const JsonValue& j, ModelConfig& c, const std::string& source) {
  c.vocab_size = get_int(j, "vocab_size", source);
  c.hidden_size = get_int(j, "hidden_size", source);
  c.intermediate_size = get_int(j, "intermediate_size", source);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", source);
  c.num_attention_heads = get_int(j, "num_attention_heads", source);
  c.num_key_value_heads = get_int_or(j, "num_key_value_heads", c.num_attention_heads, source);
  for (auto [v, n] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "hidden_size"},
                      {c.intermediate_size, "intermediate_size"}, {c.num_hidden_layers, "num_hidden_layers"},
                      {c.num_attention_heads, "num_attention_heads"}, {c.num_key_value_heads, "num_key_value_heads"}})
    check_positive(v, n, source);
  if (present(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", source);
  } else {
    FERRY_CHECK(c.hidden_size % c.num_attention_heads == 0, source, ": hidden_size ", c.hidden_size,
                " is not divisible by num_attention_heads ", c.num_attention_heads, " and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  check_positive(c.head_dim, "head_dim", source);
  FERRY_CHECK(c.head_dim % 2 == 0, source, ": head_dim must be even for rotary embeddings, got ", c.head_dim);
  FERRY_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, source, ": num_attention_heads ",
              c.num_attention_heads, " is not a multiple of num_key_value_heads ", c.num_key_value_heads);
  c.max_position_embeddings = get_int_or(j, "max_position_embeddings", 2048, source);
  check_positive(c.max_position_embeddings, "max_position_embeddings", source);
  check_within_limits(c, source);  // before anything is sized by these numbers
  c.norm_eps = get_double_or(j, "rms_norm_eps", 1e-6, source);
  c.hidden_act = get_string_or(j, "hidden_act", "silu", source);
  FERRY_CHECK(c.hidden_act == "silu", source, ": hidden_act '", c.hidden_act,
              "' is not supported for ", c.architecture, " (ferry implements 'silu')");
  c.tie_word_embeddings = get_bool_or(j, "tie_word_embeddings", false, source);
  c.mlp_bias = get_bool_or(j, "mlp_bias", false, source);
  c.attention_bias = get_bool_or(j, "attention_bias", false, source);
  c.rope = parse_rope(j, c.model_type == "qwen2" || c.model_type == "qwen2_moe" ? 1e6 : 10000.0, source);

  std::vector<std::string> layer_types;
  if (present(j, "layer_types")) {
    const JsonValue lt = *member(j, "layer_types");
    FERRY_CHECK(lt.is_array() && static_cast<int64_t>(lt.size()) == c.num_hidden_layers, source,
                ": 'layer_types' must list one type per layer (", c.num_hidden_layers, "), got ", lt.dump());
    for (JsonValue t : lt.elements()) {
      FERRY_CHECK(t.is_string(), source, ": 'layer_types' entries must be strings, got ", t.dump());
      std::string s(*t.as_string());
      FERRY_CHECK(s == "full_attention" || s == "sliding_attention", source, ": layer type '", s,
                  "' is not supported (ferry implements full_attention and sliding_attention)");
      layer_types.push_back(s);
    }
  }
  c.sliding_layers.assign(static_cast<size_t>(c.num_hidden_layers), false);
  if (c.model_type == "qwen2_moe") c.qkv_bias = true;
  if (c.model_type == "qwen3_moe") c.qk_norm = true;
  if (c.model_type == "qwen2" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") {
    if (c.model_type == "qwen2") c.qkv_bias = true;
    bool use_sliding = get_bool_or(j, "use_sliding_window", false, source);
    if (use_sliding && present(j, "sliding_window")) {
      c.sliding_window = get_int(j, "sliding_window", source);
      int64_t max_window_layers = get_int_or(j, "max_window_layers", c.num_hidden_layers, source);
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        c.sliding_layers[i] = layer_types.empty() ? i >= max_window_layers : layer_types[i] == "sliding_attention";
    }
  } else if (c.model_type == "mistral" || c.model_type == "mixtral") {
    if (present(j, "sliding_window")) {
      c.sliding_window = get_int(j, "sliding_window", source);
      c.sliding_layers.assign(static_cast<size_t>(c.num_hidden_layers), true);
    }
  } else if (!layer_types.empty() &&
             std::find(layer_types.begin(), layer_types.end(), "sliding_attention") != layer_types.end()) {
    FERRY_FAIL(source, ": ", c.architecture, " has no sliding-window attention, but 'layer_types' asks for it");
  }
  if (c.sliding_window) check_positive(*c.sliding_window, "sliding_window", source);
  if (c.model_type == "mixtral" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") parse_moe(j, c, source);
}

void parse_gpt2(const JsonValue& j, ModelConfig& c, const std::string& source) {
  c.vocab_size = get_int(j, "vocab_size", source);
  c.hidden_size = get_int(j, "n_embd", source);
  c.num_hidden_layers = get_int(j, "n_layer", source);
  c.num_attention_heads = get_int(j, "n_head", source);
  for (auto [v, n] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "n_embd"},
                      {c.num_hidden_layers, "n_layer"}, {c.num_attention_heads, "n_head"}})
    check_positive(v, n, source);
  FERRY_CHECK(c.hidden_size % c.num_attention_heads == 0, source, ": n_embd ", c.hidden_size,
              " is not divisible by n_head ", c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.intermediate_size = get_int_or(j, "n_inner", 4 * c.hidden_size, source);
  c.max_position_embeddings = get_int(j, "n_positions", source);
  check_positive(c.max_position_embeddings, "n_positions", source);
  check_within_limits(c, source);  // before anything is sized by these numbers
  c.norm_eps = get_double_or(j, "layer_norm_epsilon", 1e-5, source);
  c.hidden_act = get_string_or(j, "activation_function", "gelu_new", source);
  FERRY_CHECK(c.hidden_act == "gelu_new", source, ": activation_function '", c.hidden_act,
              "' is not supported for GPT-2 (ferry implements 'gelu_new')");
  c.tie_word_embeddings = get_bool_or(j, "tie_word_embeddings", true, source);
  c.scale_attn_weights = get_bool_or(j, "scale_attn_weights", true, source);
  c.scale_attn_by_inverse_layer_idx = get_bool_or(j, "scale_attn_by_inverse_layer_idx", false, source);
  FERRY_CHECK(!get_bool_or(j, "reorder_and_upcast_attn", false, source), source,
              ": reorder_and_upcast_attn is not supported");
  FERRY_CHECK(!get_bool_or(j, "add_cross_attention", false, source), source,
              ": add_cross_attention (GPT-2 as a decoder of an encoder-decoder model) is not supported");
  c.sliding_layers.assign(static_cast<size_t>(c.num_hidden_layers), false);
}

}  // namespace

std::string default_attn_implementation() {
  return torch_has(TorchFeature::ScaledDotProductAttention) ? "sdpa" : "eager";
}

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> names = {"LlamaForCausalLM",    "MistralForCausalLM",  "Qwen2ForCausalLM",
                                                 "MixtralForCausalLM",  "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
                                                 "GPT2LMHeadModel"};
  return names;
}

ModelConfig parse_config(const std::string& json_text, const std::string& source) {
  io::JsonDocument doc;
  try {
    doc = io::parse_json(json_text, source);
  } catch (const Error& e) {
    throw e.in("parse_config");
  }
  const JsonValue& j = doc.root();
  FERRY_CHECK(j.is_object(), source, " must hold a JSON object");
  ModelConfig c;
  c.model_type = get_string_or(j, "model_type", "", source);
  if (present(j, "architectures")) {
    const JsonValue a = *member(j, "architectures");
    FERRY_CHECK(a.is_array() && a.size() > 0 && (*a.elements().begin()).is_string(), source,
                ": 'architectures' must be a non-empty list of names, got ", a.dump());
    FERRY_CHECK(a.size() == 1, source, ": 'architectures' lists ", a.size(), " classes (", a.dump(),
                "); ferry runs single-architecture checkpoints");
    c.architecture = std::string(*(*a.elements().begin()).as_string());
  } else {
    // Some configs only carry model_type.
    static const std::vector<std::pair<std::string, std::string>> by_type = {
        {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"},
        {"qwen2", "Qwen2ForCausalLM"}, {"mixtral", "MixtralForCausalLM"}, {"qwen2_moe", "Qwen2MoeForCausalLM"},
        {"qwen3_moe", "Qwen3MoeForCausalLM"}, {"gpt2", "GPT2LMHeadModel"}};
    for (const auto& [type, arch] : by_type)
      if (type == c.model_type) c.architecture = arch;
    FERRY_CHECK(!c.architecture.empty(), source, " has neither 'architectures' nor a known 'model_type' (got '",
                c.model_type, "')");
  }
  const auto& supported = supported_architectures();
  if (std::find(supported.begin(), supported.end(), c.architecture) == supported.end()) {
    std::string list;
    for (const auto& s : supported) list += (list.empty() ? "" : ", ") + s;
    FERRY_FAIL(source, ": architecture '", c.architecture, "' is not supported; ferry runs ", list);
  }
  std::string expected_type = c.architecture == "LlamaForCausalLM"     ? "llama"
                              : c.architecture == "MistralForCausalLM" ? "mistral"
                              : c.architecture == "Qwen2ForCausalLM"   ? "qwen2"
                              : c.architecture == "MixtralForCausalLM" ? "mixtral"
                              : c.architecture == "Qwen2MoeForCausalLM" ? "qwen2_moe"
                              : c.architecture == "Qwen3MoeForCausalLM" ? "qwen3_moe"
                                                                       : "gpt2";
  if (c.model_type.empty()) c.model_type = expected_type;
  FERRY_CHECK(c.model_type == expected_type, source, ": model_type '", c.model_type, "' does not match architecture '",
              c.architecture, "' (expected '", expected_type, "')");

  std::string dtype = get_string_or(j, "dtype", get_string_or(j, "torch_dtype", "float32", source), source);
  c.dtype = parse_dtype(dtype);
  if (c.model_type == "gpt2")
    parse_gpt2(j, c, source);
  else
    parse_llama_family(j, c, source);
  c.eos_token_ids = get_ids(j, "eos_token_id", source);
  auto bos = get_ids(j, "bos_token_id", source);
  if (!bos.empty()) c.bos_token_id = bos[0];
  auto pad = get_ids(j, "pad_token_id", source);
  if (!pad.empty()) c.pad_token_id = pad[0];
  return c;
}

ModelConfig load_config(const std::string& dir) {
  fs::path folder(dir);
  FERRY_CHECK(fs::is_directory(folder), "model folder '", dir, "' does not exist or is not a directory");
  fs::path config_path = folder / "config.json";
  std::error_code ec;
  FERRY_CHECK(fs::exists(fs::symlink_status(config_path, ec)), "model folder '", dir,
              "' has no config.json: ferry needs the Hugging Face config next to the weights");
  ModelConfig c = parse_config(read_text(config_path), config_path.string());
  fs::path gen_path = folder / "generation_config.json";
  if (fs::exists(fs::symlink_status(gen_path, ec))) {
    io::JsonDocument doc;
    try {
      doc = io::read_json_file(gen_path.string());
    } catch (const Error& e) {
      throw e.in("load_config");
    }
    const JsonValue& g = doc.root();
    if (g.is_object()) {
      if (present(g, "eos_token_id")) c.eos_token_ids = get_ids(g, "eos_token_id", gen_path.string());
      auto bos = get_ids(g, "bos_token_id", gen_path.string());
      if (!bos.empty()) c.bos_token_id = bos[0];
      auto pad = get_ids(g, "pad_token_id", gen_path.string());
      if (!pad.empty()) c.pad_token_id = pad[0];
    }
  }
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["dtype"] = dtype_name(c.dtype);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0]) : json(c.eos_token_ids);
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.model_type == "gpt2") {
    j["n_embd"] = c.hidden_size;
    j["n_layer"] = c.num_hidden_layers;
    j["n_head"] = c.num_attention_heads;
    j["n_inner"] = c.intermediate_size;
    j["n_positions"] = c.max_position_embeddings;
    j["layer_norm_epsilon"] = c.norm_eps;
    j["activation_function"] = c.hidden_act;
    j["scale_attn_weights"] = c.scale_attn_weights;
    j["scale_attn_by_inverse_layer_idx"] = c.scale_attn_by_inverse_layer_idx;
    return j.dump(2);
  }
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.norm_eps;
  j["hidden_act"] = c.hidden_act;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  json rope = {{"rope_theta", c.rope.theta}, {"rope_type", c.rope.type}};
  if (c.rope.type == "llama3") {
    rope["factor"] = c.rope.factor;
    rope["low_freq_factor"] = c.rope.low_freq_factor;
    rope["high_freq_factor"] = c.rope.high_freq_factor;
    rope["original_max_position_embeddings"] = c.rope.original_max_position_embeddings;
  }
  j["rope_parameters"] = rope;
  if (c.sliding_window) {
    j["sliding_window"] = *c.sliding_window;
    if (c.model_type != "mistral" && c.model_type != "mixtral") {
      j["use_sliding_window"] = true;
      json types = json::array();
      for (bool s : c.sliding_layers) types.push_back(s ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
  }
  if (c.num_experts > 0) {
    j["num_local_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    if (c.model_type != "mixtral") {
      j["moe_intermediate_size"] = c.moe_intermediate_size;
      j["norm_topk_prob"] = c.norm_topk_prob;
      if (c.shared_expert_intermediate_size > 0) j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
      json dense = json::array();
      for (size_t i = 0; i < c.sparse_layers.size(); ++i)
        if (!c.sparse_layers[i]) dense.push_back(i);
      j["mlp_only_layers"] = dense;
    }
  }
  return j.dump(2);
}

}  // namespace ferry::models
