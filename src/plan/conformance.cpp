#include "ferry/plan/conformance.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/plan/balanced_memory.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/tied_parameters.h"

#include <nlohmann/json.hpp>

namespace ferry {
namespace {

using Json = nlohmann::ordered_json;

Json bytes_json(int64_t bits) {
  if (bits % 8 == 0) return Json(bits / 8);
  return Json(static_cast<double>(bits) / 8.0);
}

Json placement_json(const Placement& p) {
  if (p.is_device() && p.device().is_cuda() && p.device().has_index()) return Json(static_cast<int>(p.device().index()));
  return Json(p.str());
}

Placement placement_from(const Json& value) {
  if (value.is_number_integer()) return Placement::cuda(value.get<int>());
  return Placement::parse(value.get<std::string>());
}

MaxMemory max_memory_from(const Json& args) {
  MaxMemory out;
  if (!args.contains("max_memory") || args.at("max_memory").is_null()) return out;
  for (auto it = args.at("max_memory").begin(); it != args.at("max_memory").end(); ++it) {
    const Json& v = it.value();
    int64_t bytes = v.is_number_integer() ? v.get<int64_t>()
                    : v.is_number()       ? static_cast<int64_t>(v.get<double>())
                                          : parse_byte_size(v.get<std::string>());
    out.push_back(DeviceBudget{Placement::parse(it.key()), bytes});
  }
  return out;
}

SizeOptions sizes_from(const Json& args) {
  SizeOptions s;
  if (args.contains("dtype") && !args.at("dtype").is_null()) s.dtype = parse_dtype(args.at("dtype").get<std::string>());
  if (args.contains("special_dtypes") && !args.at("special_dtypes").is_null())
    for (auto it = args.at("special_dtypes").begin(); it != args.at("special_dtypes").end(); ++it)
      s.special_dtypes[it.key()] = parse_dtype(it.value().get<std::string>());
  return s;
}

NoSplitRules no_split_from(const Json& args) {
  NoSplitRules rules;
  if (!args.contains("no_split_module_classes") || args.at("no_split_module_classes").is_null()) return rules;
  const Json& v = args.at("no_split_module_classes");
  if (v.is_string()) rules.classes.push_back(v.get<std::string>());
  else rules.classes = v.get<std::vector<std::string>>();
  return rules;
}

Json run_case(const Json& c) {
  const std::string api = c.at("api").get<std::string>();
  const Json args = c.value("args", Json::object());
  const ModelTree tree = ModelTree::from_json(c.at("model").dump());
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
    for (auto it = args.at("device_map").begin(); it != args.at("device_map").end(); ++it)
      map.set(it.key(), placement_from(it.value()));
    check_device_map(tree, map);
    return Json("ok");
  }
  if (api == "find_tied_parameters") return Json(find_tied_parameters(tree));
  if (api == "get_balanced_memory") {
    Json out = Json::object();
    for (const auto& b : get_balanced_memory(tree, max_memory_from(args), no_split_from(args), sizes_from(args),
                                             args.value("low_zero", false)))
      out[b.device.hf_str()] = b.bytes;
    return out;
  }
  if (api == "infer_auto_device_map") {
    PlanOptions options;
    options.max_memory = max_memory_from(args);
    options.no_split = no_split_from(args);
    options.sizes = sizes_from(args);
    options.clean_result = args.value("clean_result", true);
    options.offload_buffers = args.value("offload_buffers", false);
    options.fallback_allocation = args.value("fallback_allocation", false);
    Json out = Json::object();
    for (const auto& [name, p] : infer_auto_device_map(tree, options)) out[name] = placement_json(p);
    return out;
  }
  FERRY_FAIL("unknown api '", api, "'");
}

Json run_guarded(const Json& c) {
  try {
    return run_case(c);
  } catch (const Error& e) {
    std::string message = e.what();
    if (!message.empty() && message[0] == '[') {
      size_t close = message.find("] ");
      if (close != std::string::npos) message = message.substr(close + 2);
    }
    return Json{{"error", "ValueError"}, {"message", message}};
  }
}

Json parse(const std::string& text) {
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    FERRY_FAIL("invalid cases JSON: ", e.what());
  }
}

}  // namespace

std::string run_conformance_cases(const std::string& cases_json) {
  Json doc = parse(cases_json);
  const Json& cases = doc.is_object() && doc.contains("cases") ? doc.at("cases") : doc;
  FERRY_CHECK(cases.is_array(), "a cases file holds {\"cases\": [...]} or an array of cases");
  Json results = Json::array();
  for (const auto& c : cases) {
    std::string id = c.is_object() ? c.value("id", std::string("?")) : std::string("?");
    try {
      results.push_back(Json{{"id", id}, {"result", run_guarded(c)}});
    } catch (const nlohmann::json::exception& e) {
      FERRY_FAIL("case '", id, "' is malformed: ", e.what());
    }
  }
  return Json{{"results", results}}.dump();
}

std::string run_conformance_case(const std::string& case_json) {
  Json c = parse(case_json);
  try {
    return run_guarded(c).dump();
  } catch (const nlohmann::json::exception& e) {
    FERRY_FAIL("case '", c.value("id", std::string("?")), "' is malformed: ", e.what());
  }
}

}  // namespace ferry
