#include "ferry/plan/conformance.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "ferry/plan/balanced_memory.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/tied_parameters.h"

#include <nlohmann/json.hpp>

#include <optional>

namespace ferry {
namespace {

using Json = nlohmann::ordered_json;  // what the results are written with
using io::JsonValue;

Json bytes_json(int64_t bits) {
  if (bits % 8 == 0) return Json(bits / 8);
  return Json(static_cast<double>(bits) / 8.0);
}

Json placement_json(const Placement& p) {
  if (p.is_device() && p.device().is_cuda() && p.device().has_index()) return Json(static_cast<int>(p.device().index()));
  return Json(p.str());
}

Placement placement_from(const JsonValue& value) {
  if (auto i = value.as_int64()) return Placement::cuda(static_cast<int>(*i));
  return Placement::parse(std::string(value.string("a device")));
}

// A member that is absent or null reads as absent.
std::optional<JsonValue> arg(const JsonValue& args, const char* key) {
  auto v = args.find(key);
  if (!v || v->is_null()) return std::nullopt;
  return v;
}

bool bool_arg(const JsonValue& args, const char* key, bool fallback) {
  auto v = arg(args, key);
  if (!v) return fallback;
  FERRY_CHECK(v->is_bool(), "\"", key, "\" must be true or false, got ", v->dump());
  return *v->as_bool();
}

MaxMemory max_memory_from(const JsonValue& args) {
  MaxMemory out;
  auto mm = arg(args, "max_memory");
  if (!mm) return out;
  for (auto [key, v] : mm->items()) {
    int64_t bytes = 0;
    if (auto i = v.as_int64()) bytes = *i;
    else if (auto d = v.as_double()) bytes = static_cast<int64_t>(*d);
    else bytes = parse_byte_size(std::string(v.string("a max_memory value")));
    out.push_back(DeviceBudget{Placement::parse(std::string(key)), bytes});
  }
  return out;
}

SizeOptions sizes_from(const JsonValue& args) {
  SizeOptions s;
  if (auto d = arg(args, "dtype")) s.dtype = parse_dtype(std::string(d->string("\"dtype\"")));
  if (auto special = arg(args, "special_dtypes"))
    for (auto [key, v] : special->items())
      s.special_dtypes[std::string(key)] = parse_dtype(std::string(v.string("a special dtype")));
  return s;
}

NoSplitRules no_split_from(const JsonValue& args) {
  NoSplitRules rules;
  auto v = arg(args, "no_split_module_classes");
  if (!v) return rules;
  if (auto one = v->as_string()) {
    rules.classes.emplace_back(*one);
  } else {
    FERRY_CHECK(v->is_array(), "\"no_split_module_classes\" must be a string or a list, got ", v->dump());
    for (JsonValue c : v->elements()) rules.classes.emplace_back(c.string("a no-split class"));
  }
  return rules;
}

Json run_case(const std::string& api, const JsonValue& model, const JsonValue& args) {
  const ModelTree tree = ModelTree::from_json_value(model);
  if (api == "compute_module_sizes") {
    Json out = Json::object();
    const ModuleSizes sizes = compute_module_sizes(tree, sizes_from(args));
    for (const auto& [name, bits] : sizes.entries()) out[name] = bytes_json(bits);
    return out;
  }
  if (api == "compute_module_total_buffer_size")
    return bytes_json(compute_module_sizes(tree, sizes_from(args), true).bits(""));
  if (api == "check_device_map") {
    DeviceMap map;
    for (auto [key, v] : args.at("device_map", "the args").items()) map.set(std::string(key), placement_from(v));
    check_device_map(tree, map);
    return Json("ok");
  }
  if (api == "find_tied_parameters") return Json(find_tied_parameters(tree));
  if (api == "get_balanced_memory") {
    Json out = Json::object();
    for (const auto& b : get_balanced_memory(tree, max_memory_from(args), no_split_from(args), sizes_from(args),
                                             bool_arg(args, "low_zero", false)))
      out[b.device.hf_str()] = b.bytes;
    return out;
  }
  if (api == "infer_auto_device_map") {
    PlanOptions options;
    options.max_memory = max_memory_from(args);
    options.no_split = no_split_from(args);
    options.sizes = sizes_from(args);
    options.clean_result = bool_arg(args, "clean_result", true);
    options.offload_buffers = bool_arg(args, "offload_buffers", false);
    options.fallback_allocation = bool_arg(args, "fallback_allocation", false);
    Json out = Json::object();
    for (const auto& [name, p] : infer_auto_device_map(tree, options)) out[name] = placement_json(p);
    return out;
  }
  FERRY_FAIL("unknown api '", api, "'");
}

std::string case_id(const JsonValue& c) {
  auto id = c.find("id");
  auto text = id ? id->as_string() : std::nullopt;
  return text ? std::string(*text) : std::string("?");
}

// A case whose structure is wrong (no "api", no "model") is an error of the cases file; an error
// the API raises is the case's result, as Accelerate's ValueError.
Json run_guarded(const JsonValue& c) {
  static const io::JsonDocument no_args = io::parse_json("{}", "");
  std::string api;
  JsonValue model, args;
  try {
    FERRY_CHECK(c.is_object(), "a case must be a JSON object, got ", c.dump());
    api = std::string(c.at("api", "the case").string("\"api\""));
    model = c.at("model", "the case");
    args = arg(c, "args").value_or(no_args.root());
  } catch (const Error& e) {
    FERRY_FAIL("case '", case_id(c), "' is malformed: ", e.message());
  }
  try {
    return run_case(api, model, args);
  } catch (const Error& e) {
    return Json{{"error", "ValueError"}, {"message", e.message()}};
  }
}

io::JsonDocument parse(const std::string& text) {
  try {
    return io::parse_json(text, "the cases file");
  } catch (const Error& e) {
    throw e.in("run_conformance_cases", "invalid cases JSON: ");
  }
}

}  // namespace

std::string run_conformance_cases(const std::string& cases_json) {
  const io::JsonDocument doc = parse(cases_json);
  const JsonValue cases = doc.root().find("cases").value_or(doc.root());
  FERRY_CHECK(cases.is_array(), "a cases file holds {\"cases\": [...]} or an array of cases");
  Json results = Json::array();
  for (JsonValue c : cases.elements()) {
    results.push_back(Json{{"id", case_id(c)}, {"result", run_guarded(c)}});
  }
  return Json{{"results", results}}.dump();
}

std::string run_conformance_case(const std::string& case_json) {
  const io::JsonDocument doc = parse(case_json);
  return run_guarded(doc.root()).dump();
}

}  // namespace ferry
