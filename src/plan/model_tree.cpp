#include "ferry/plan/model_tree.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/shape.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace ferry {
namespace {
// A model tree nests two JSON levels per module ("children": [ {...} ]); real models nest a few
// dozen modules deep. Deeper documents are refused with a clear message, before any walk.
constexpr int kMaxTreeDepth = 2 * 256 + 4;
}  // namespace

int64_t TreeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

ModelTree::ModelTree(std::string root_class) { modules_.push_back(TreeModule{std::move(root_class), {}, {}, {}}); }

ModuleId ModelTree::add_module(std::string class_name) {
  modules_.push_back(TreeModule{std::move(class_name), {}, {}, {}});
  return static_cast<ModuleId>(modules_.size() - 1);
}

TreeModule& ModelTree::mutable_module(ModuleId id) {
  FERRY_CHECK(id >= 0 && static_cast<size_t>(id) < modules_.size(), "module id ", id, " out of range");
  return modules_[static_cast<size_t>(id)];
}

ModuleId ModelTree::add_submodule(ModuleId parent, std::string name, std::string class_name) {
  ModuleId child = add_module(std::move(class_name));
  add_child(parent, std::move(name), child);
  return child;
}

void ModelTree::add_child(ModuleId parent, std::string name, ModuleId child) {
  FERRY_CHECK(child >= 0 && static_cast<size_t>(child) < modules_.size(), "module id ", child, " out of range");
  mutable_module(parent).children.push_back(TreeChild{std::move(name), child});
}

TensorId ModelTree::add_tensor(TreeTensor info) {
  // Note [Sizes never overflow]: every tensor's size in bits must fit int64, so that the planner's
  // sums (checked again where they add up) never wrap to a small or negative size.
  uint64_t numel = 1;
  for (int64_t d : info.shape) {
    FERRY_CHECK(d >= 0, "negative dimension ", d, " in a tensor shape");
    FERRY_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) &&
                    numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                "a tensor of shape ", shape_str(info.shape), " has more elements than fit in 64 bits");
  }
  uint64_t bits = 0;
  FERRY_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_bits(info.dtype)), &bits) &&
                  bits <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              "a tensor of shape ", shape_str(info.shape), " and dtype ", dtype_name(info.dtype),
              " is too large: its size in bits does not fit in 64 bits");
  tensors_.push_back(std::move(info));
  return static_cast<TensorId>(tensors_.size() - 1);
}

TensorId ModelTree::add_param(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype) {
  TensorId id = add_tensor(TreeTensor{std::move(shape), dtype});
  add_param_slot(module, std::move(name), id);
  return id;
}

void ModelTree::add_param_slot(ModuleId module, std::string name, TensorId tensor) {
  FERRY_CHECK(tensor >= kNoTensor && tensor < static_cast<TensorId>(tensors_.size()), "tensor id ", tensor,
              " out of range");
  mutable_module(module).params.push_back(TreeSlot{std::move(name), tensor, true});
}

TensorId ModelTree::add_buffer(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype,
                               bool persistent) {
  TensorId id = add_tensor(TreeTensor{std::move(shape), dtype});
  add_buffer_slot(module, std::move(name), id, persistent);
  return id;
}

void ModelTree::reserve(size_t modules, size_t tensors) {
  modules_.reserve(modules);
  tensors_.reserve(tensors);
}

void ModelTree::add_buffer_slot(ModuleId module, std::string name, TensorId tensor, bool persistent) {
  FERRY_CHECK(tensor >= kNoTensor && tensor < static_cast<TensorId>(tensors_.size()), "tensor id ", tensor,
              " out of range");
  mutable_module(module).buffers.push_back(TreeSlot{std::move(name), tensor, persistent});
}

void ModelTree::validate() const {
  // 0 = unvisited, 1 = on the current path, 2 = done. Iterative DFS: trees can be deep. Each module
  // is checked once however many paths reach it; paths are spelt out only for a message.
  std::vector<uint8_t> state(modules_.size(), 0);
  struct Frame {
    ModuleId module;
    size_t next_child;
    const std::string* name;  // the child slot that reached it (nullptr for the root)
  };
  std::vector<Frame> stack{{0, 0, nullptr}};
  auto path_to = [&](const std::string* last) {
    std::string path;
    for (const Frame& f : stack)
      if (f.name) (path += path.empty() ? "" : ".") += *f.name;
    if (last) (path += path.empty() ? "" : ".") += *last;
    return path;
  };
  auto where = [&] {
    const std::string path = path_to(nullptr);
    return path.empty() ? std::string("the root module") : "module '" + path + "'";
  };
  std::vector<std::pair<std::string_view, const char*>> names;  // reused: (name, kind)
  state[0] = 1;
  while (!stack.empty()) {
    Frame& frame = stack.back();
    const TreeModule& node = modules_[static_cast<size_t>(frame.module)];
    if (frame.next_child == 0) {
      names.clear();
      for (const auto& p : node.params) names.emplace_back(p.name, "parameter");
      for (const auto& b : node.buffers) names.emplace_back(b.name, "buffer");
      for (const auto& c : node.children) names.emplace_back(c.name, "child");
      for (const auto& [name, kind] : names) {
        FERRY_CHECK(!name.empty(), where(), " has a ", kind, " with an empty name");
        FERRY_CHECK(name.find('.') == std::string_view::npos, where(), " has a ", kind, " named '", name,
                    "': local names cannot contain '.'");
      }
      std::sort(names.begin(), names.end());
      for (size_t k = 1; k < names.size(); ++k)
        FERRY_CHECK(names[k - 1].first != names[k].first, where(), " uses the name '", names[k].first, "' twice");
    }
    if (frame.next_child == node.children.size()) {
      state[static_cast<size_t>(frame.module)] = 2;
      stack.pop_back();
      continue;
    }
    const TreeChild& child = node.children[frame.next_child++];
    uint8_t s = state[static_cast<size_t>(child.module)];
    FERRY_CHECK(s != 1, "module '", path_to(&child.name), "' contains itself: a module tree cannot have cycles");
    if (s == 0) {
      state[static_cast<size_t>(child.module)] = 1;
      stack.push_back(Frame{child.module, 0, &child.name});
    }
  }
}

// ---- the conformance JSON format ----------------------------------------------------------------

namespace {

// Reads a tree node by node, by reference (a copy per level made deep trees quadratic), checking
// every value's JSON type before it is used. Messages are spelt out only when something is wrong,
// and paths are recorded only when the document refers to earlier modules or tensors.
struct JsonLoader {
  ModelTree& tree;
  bool has_references;  // the text mentions "same_module_as" or "tied_to"
  std::unordered_map<std::string, ModuleId> modules_by_path;
  std::unordered_map<std::string, TensorId> tensors_by_name;

  static std::string join(const std::string& prefix, std::string_view name) {
    return prefix.empty() ? std::string(name) : prefix + "." + std::string(name);
  }
  static std::string where(const std::string& path) { return path.empty() ? "the root module" : "module '" + path + "'"; }

  // The string member `key` of `node`; absent -> nullopt when optional, else an error.
  static std::optional<std::string_view> string_member(const io::JsonValue& node, const char* key, bool required,
                                                       const std::function<std::string()>& context) {
    auto v = node.find(key);
    if (!v) {
      FERRY_CHECK(!required, context(), " has no \"", key, "\"");
      return std::nullopt;
    }
    auto s = v->as_string();
    FERRY_CHECK(s.has_value(), context(), ": \"", key, "\" must be a string, got ", v->dump());
    return s;
  }

  static io::JsonValue array_member(const io::JsonValue& node, const char* key, const std::string& path) {
    static const io::JsonDocument empty = io::parse_json("[]", "");
    auto v = node.find(key);
    if (!v) return empty.root();
    FERRY_CHECK(v->is_array(), where(path), ": \"", key, "\" must be an array, got ", v->type_name());
    return *v;
  }

  TensorId tensor_of(const io::JsonValue& slot, const std::string& path, std::string_view name, const char* kind) {
    auto context = [&] { return std::string(kind) + " '" + join(path, name) + "'"; };
    if (auto tied = string_member(slot, "tied_to", false, context)) {
      auto it = tensors_by_name.find(std::string(*tied));
      FERRY_CHECK(it != tensors_by_name.end(), context(), " is tied to '", *tied,
                  "', which is not an earlier parameter or buffer");
      return it->second;
    }
    auto shape = slot.find("shape");
    if (!shape) return kNoTensor;
    FERRY_CHECK(shape->is_array(), context(), ": \"shape\" must be an array of sizes, got ", shape->dump());
    TreeTensor info;
    info.shape.reserve(shape->size());
    for (io::JsonValue d : shape->elements()) {
      // 3.5 is not a size, and 2^64 is too large rather than negative.
      FERRY_CHECK(d.is_integer(), context(), ": shape entries must be integers, got ", d.dump());
      const auto size = d.as_uint64();
      FERRY_CHECK(size.has_value(), context(), ": shape entries must be non-negative, got ", d.dump());
      FERRY_CHECK(*size <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), context(), ": shape entry ",
                  d.dump(), " is too large");
      info.shape.push_back(static_cast<int64_t>(*size));
    }
    auto dtype = string_member(slot, "dtype", false, context);
    FERRY_CHECK(dtype.has_value(), context(), " has a shape but no dtype");
    try {
      info.dtype = parse_dtype(std::string(*dtype));
      return tree.add_tensor(std::move(info));
    } catch (const Error& e) {
      throw e.in(__func__, context() + ": ");
    }
  }

  void slots(ModuleId id, const io::JsonValue& node, const std::string& path, bool buffers) {
    const char* kind = buffers ? "buffer" : "parameter";
    for (io::JsonValue p : array_member(node, buffers ? "buffers" : "params", path).elements()) {
      FERRY_CHECK(p.is_object(), where(path), ": a ", kind, " must be an object, got ", p.dump());
      const std::string_view name = *string_member(p, "name", true, [&] { return "a " + std::string(kind) + " of " + where(path); });
      TensorId t = tensor_of(p, path, name, kind);
      if (buffers) {
        bool persistent = true;
        if (auto v = p.find("persistent")) {
          FERRY_CHECK(v->is_bool(), "buffer '", join(path, name), "': \"persistent\" must be true or false, got ",
                      v->dump());
          persistent = *v->as_bool();
        }
        tree.add_buffer_slot(id, std::string(name), t, persistent);
      } else {
        tree.add_param_slot(id, std::string(name), t);
      }
      if (has_references && t != kNoTensor) tensors_by_name.emplace(join(path, name), t);
    }
  }

  void fill(ModuleId id, const io::JsonValue& node, const std::string& path) {
    FERRY_CHECK(node.is_object(), where(path), " must be a JSON object, got ", node.type_name());
    if (has_references) modules_by_path[path] = id;
    slots(id, node, path, /*buffers=*/false);
    slots(id, node, path, /*buffers=*/true);
    for (io::JsonValue c : array_member(node, "children", path).elements()) {
      FERRY_CHECK(c.is_object(), where(path), ": a child must be an object, got ", c.type_name());
      const std::string_view name = *string_member(c, "name", true, [&] { return "a child of " + where(path); });
      std::string full = join(path, name);
      auto context = [&] { return "module '" + full + "'"; };
      if (auto target = string_member(c, "same_module_as", false, context)) {
        auto it = modules_by_path.find(std::string(*target));
        FERRY_CHECK(it != modules_by_path.end(), "module '", full, "' is the same module as '", *target,
                    "', which is not an earlier module");
        tree.add_child(id, std::string(name), it->second);
        continue;
      }
      auto cls = string_member(c, "class", false, context);
      ModuleId child = tree.add_submodule(id, std::string(name), cls ? std::string(*cls) : std::string());
      fill(child, c, full);
    }
  }
};

ModelTree tree_from_parsed(const io::JsonValue& doc, bool has_references) {
  FERRY_CHECK(doc.is_object(), "a model tree must be a JSON object with \"class\", \"params\", \"buffers\" and "
              "\"children\", got ", doc.type_name());
  std::string cls;
  if (auto v = doc.find("class")) cls = std::string(v->string("the root module's \"class\""));
  ModelTree tree(std::move(cls));
  JsonLoader loader{tree, has_references, {}, {}};
  try {
    loader.fill(tree.root(), doc, "");
  } catch (const Error& e) {
    throw e.in("ModelTree::from_json", "malformed model tree: ");
  }
  tree.validate();
  return tree;
}

}  // namespace

ModelTree ModelTree::from_json_value(const io::JsonValue& value) { return tree_from_parsed(value, true); }

namespace {
bool mentions_references(std::string_view text) {
  return text.find("same_module_as") != std::string_view::npos || text.find("tied_to") != std::string_view::npos;
}
}  // namespace

ModelTree ModelTree::from_json(const std::string& text) {
  io::JsonDocument doc;
  try {
    doc = io::parse_json(text, "the model tree", kMaxTreeDepth);
  } catch (const Error& e) {
    throw e.in("ModelTree::from_json", "invalid model tree JSON: ");
  }
  return tree_from_parsed(doc.root(), mentions_references(text));
}

ModelTree ModelTree::from_json_file(const std::string& path) {
  io::JsonDocument doc;
  bool has_references = true;
  try {
    const std::string text = io::read_regular_file(path, "ModelTree::from_json_file");
    has_references = mentions_references(text);
    doc = io::parse_json(text, path, kMaxTreeDepth);
  } catch (const Error& e) {
    throw e.in("ModelTree::from_json_file");
  }
  // A conformance case or a {"model": ...} wrapper is accepted too.
  const io::JsonValue& root = doc.root();
  auto model = root.find("model");
  try {
    return tree_from_parsed(model && model->is_object() ? *model : root, has_references);
  } catch (const Error& e) {
    throw e.in("ModelTree::from_json_file", "'" + path + "': ");
  }
}

// ---- dotted names -------------------------------------------------------------------------------

namespace {

bool all_digits(const std::string& s, size_t begin, size_t end) {
  if (begin == end) return false;
  for (size_t i = begin; i < end; ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

// <0, 0, >0 as a sorts before, with or after b in natural order.
int natural_name_compare(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    size_t ei = a.find('.', i), ej = b.find('.', j);
    if (ei == std::string::npos) ei = a.size();
    if (ej == std::string::npos) ej = b.size();
    const bool num_a = all_digits(a, i, ei), num_b = all_digits(b, j, ej);
    if (num_a && num_b) {
      // compare as numbers without overflow: strip leading zeros, then length, then digits
      size_t si = i, sj = j;
      while (si + 1 < ei && a[si] == '0') ++si;
      while (sj + 1 < ej && b[sj] == '0') ++sj;
      if (ei - si != ej - sj) return ei - si < ej - sj ? -1 : 1;
      if (int c = a.compare(si, ei - si, b, sj, ej - sj)) return c;
    } else if (num_a != num_b) {
      return num_a ? -1 : 1;  // numbers before words
    } else if (int c = a.compare(i, ei - i, b, j, ej - j)) {
      return c;
    }
    i = ei + 1;
    j = ej + 1;
    if (ei == a.size() || ej == b.size()) {
      if (ei == a.size() && ej != b.size()) return -1;
      if (ej == b.size() && ei != a.size()) return 1;
      return a.size() < b.size() ? -1 : a.size() > b.size() ? 1 : 0;
    }
  }
  return a.size() < b.size() ? -1 : a.size() > b.size() ? 1 : 0;
}

}  // namespace

bool natural_name_less(const std::string& a, const std::string& b) { return natural_name_compare(a, b) < 0; }

namespace {

// Natural order of two local names (no dots): numbers as numbers, before words.
bool natural_local_less(const std::string& a, const std::string& b) {
  const bool num_a = all_digits(a, 0, a.size()), num_b = all_digits(b, 0, b.size());
  if (num_a != num_b) return num_a;
  if (!num_a) return a < b;
  size_t i = 0, j = 0;
  while (i + 1 < a.size() && a[i] == '0') ++i;
  while (j + 1 < b.size() && b[j] == '0') ++j;
  if (a.size() - i != b.size() - j) return a.size() - i < b.size() - j;
  const int c = a.compare(i, std::string::npos, b, j, std::string::npos);
  return c != 0 ? c < 0 : a.size() < b.size();
}

}  // namespace

// Note [Building a tree from dotted names]: names arrive grouped by module (a checkpoint lists a
// shard's tensors in offset order), so each tensor usually shares a prefix of modules with the one
// before it. A stack of the previous tensor's modules gives the shared ones for one string
// comparison; only modules entered for the first time (or re-entered) touch the map of paths.
// Natural order is then applied module by module: sorting each module's children and parameters by
// their local names gives the order of the fully sorted names (which compare component by
// component), at the cost of sorting short lists of short names instead of 100,000 long ones.
ModelTree model_tree_from_names(size_t count, const std::function<std::string_view(size_t)>& name_of,
                                 const std::function<TreeTensor(size_t)>& tensor_of, bool natural_order) {
  ModelTree tree;
  tree.reserve(count / 2, count);
  struct Open {
    size_t end;  // the module's path is name[0, end)
    ModuleId id;
  };
  std::vector<Open> stack;  // the modules of the previous tensor, outermost first
  // Paths view the callers' names, which outlive this function.
  std::vector<std::string_view> module_path{std::string_view()};
  // A module entered again (its tensors are not contiguous, e.g. a layer split across shards) is
  // found among its parent's children: by a scan while they are few, by a table of that parent's
  // own once they are many (small tables: a global one of 100,000 paths missed the caches).
  constexpr size_t kScanChildren = 16;
  std::unordered_map<ModuleId, std::unordered_map<std::string_view, ModuleId>> child_tables;
  auto local_name = [&](ModuleId m) {
    const std::string_view path = module_path[static_cast<size_t>(m)];
    const size_t dot = path.rfind('.');
    return dot == std::string_view::npos ? path : path.substr(dot + 1);
  };
  auto find_child = [&](ModuleId parent, std::string_view name) -> ModuleId {
    auto table = child_tables.find(parent);
    if (table == child_tables.end()) {
      const auto& children = tree.module(parent).children;
      if (children.size() < kScanChildren) {
        for (const auto& c : children)
          if (c.name == name) return c.module;
        return -1;
      }
      table = child_tables.emplace(parent, std::unordered_map<std::string_view, ModuleId>{}).first;
      for (const auto& c : children) table->second.emplace(local_name(c.module), c.module);
    }
    auto it = table->second.find(name);
    return it == table->second.end() ? -1 : it->second;
  };
  std::string_view previous;
  for (size_t i = 0; i < count; ++i) {
    const std::string_view name = name_of(i);
    FERRY_CHECK(!name.empty(), "a tensor has an empty name");
    FERRY_CHECK(name.front() != '.' && name.back() != '.' && name.find("..") == std::string_view::npos, "tensor name '",
                name, "' has an empty component");
    // Modules shared with the previous tensor: those whose path is a common prefix ending at a '.'.
    const size_t limit = std::min(name.size(), previous.size());
    size_t common = 0;
    while (common < limit && name[common] == previous[common]) ++common;
    size_t depth = 0;
    while (depth < stack.size() && stack[depth].end < name.size() && stack[depth].end <= common &&
           name[stack[depth].end] == '.')
      ++depth;
    stack.resize(depth);
    ModuleId parent = stack.empty() ? tree.root() : stack.back().id;
    size_t start = stack.empty() ? 0 : stack.back().end + 1;
    while (true) {
      const size_t dot = name.find('.', start);
      if (dot == std::string_view::npos) break;
      const std::string_view local = name.substr(start, dot - start);
      ModuleId m = find_child(parent, local);
      if (m < 0) {
        m = tree.add_submodule(parent, std::string(local), "");
        module_path.push_back(name.substr(0, dot));
        auto table = child_tables.find(parent);
        if (table != child_tables.end()) table->second.emplace(local, m);
      }
      parent = m;
      stack.push_back(Open{dot, parent});
      start = dot + 1;
    }
    TreeTensor info = tensor_of(i);
    tree.add_param(parent, std::string(name.substr(start)), std::move(info.shape), info.dtype);
    previous = name;
  }
  // Names met twice, found module by module on sorted local names: two tensors of one name, or a
  // tensor whose name is also a module's path (a parameter and a child of one module share a name).
  auto full = [&](ModuleId m, const std::string& local) {
    const std::string_view path = module_path[static_cast<size_t>(m)];
    return path.empty() ? local : std::string(path) + "." + local;
  };
  std::vector<const std::string*> params, children;
  for (size_t m = 0; m < tree.module_count(); ++m) {
    TreeModule& module = tree.mutable_module(static_cast<ModuleId>(m));
    if (natural_order) {
      std::stable_sort(module.children.begin(), module.children.end(),
                       [](const TreeChild& a, const TreeChild& b) { return natural_local_less(a.name, b.name); });
      std::stable_sort(module.params.begin(), module.params.end(),
                       [](const TreeSlot& a, const TreeSlot& b) { return natural_local_less(a.name, b.name); });
    }
    params.clear();
    children.clear();
    for (const auto& p : module.params) params.push_back(&p.name);
    for (const auto& c : module.children) children.push_back(&c.name);
    auto less = [](const std::string* a, const std::string* b) { return *a < *b; };
    if (!natural_order) std::sort(params.begin(), params.end(), less);
    if (!natural_order) std::sort(children.begin(), children.end(), less);
    for (size_t k = 1; k < params.size(); ++k)
      FERRY_CHECK(*params[k - 1] != *params[k], "tensor '", full(static_cast<ModuleId>(m), *params[k]), "' appears twice");
    if (params.empty() || children.empty()) continue;
    for (const std::string* p : params) {
      auto it = std::lower_bound(children.begin(), children.end(), p, natural_order ? +[](const std::string* a, const std::string* b) {
        return natural_local_less(*a, *b);
      } : +[](const std::string* a, const std::string* b) { return *a < *b; });
      FERRY_CHECK(it == children.end() || **it != *p, "'", full(static_cast<ModuleId>(m), *p),
                  "' is both a tensor and a module holding other tensors");
    }
  }
  return tree;
}

ModelTree model_tree_from_named_tensors(std::vector<NamedTreeTensor> tensors, bool natural_order) {
  return model_tree_from_names(
      tensors.size(), [&](size_t i) { return std::string_view(tensors[i].name); },
      [&](size_t i) { return std::move(tensors[i].info); }, natural_order);
}

}  // namespace ferry
