#pragma once
/// \file
/// Runs planner conformance cases (shared/conformance/README.md): each case names an API
/// (compute_module_sizes, compute_module_total_buffer_size, check_device_map,
/// find_tied_parameters, get_balanced_memory, infer_auto_device_map), a model tree and the call's
/// arguments; the result has the shape of the case's `accelerate` field.
///
///     std::string results = run_conformance_cases(read_file("device_map_cases.json"));
///     // {"results": [{"id": "CMS-1", "result": {"": 236, ...}}, ...]}

#include <string>

namespace ferry {

/// Runs every case of a cases file (a {"cases": [...]} object or a bare array) and returns
/// {"results": [{"id", "result"}]} as JSON text. A ferry::Error raised by a case becomes
/// {"error": "ValueError", "message": ...} (the message without its "[function] " prefix);
/// a malformed case is an error of the whole run, naming the case.
std::string run_conformance_cases(const std::string& cases_json);

/// Runs one case (JSON text of one case object); returns the result as JSON text.
std::string run_conformance_case(const std::string& case_json);

}  // namespace ferry
