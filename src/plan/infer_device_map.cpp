#include "ferry/plan/infer_device_map.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/plan/balanced_memory.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/expert_plan.h"
#include "plan_tree.h"

#include <algorithm>
#include <optional>
#include <climits>
#include <map>
#include <sstream>
#include <unordered_map>

// Builds the explanation only when someone listens: formatting sizes costs more than planning.
#define FERRY_EXPLAIN(...) \
  do {                     \
    if (explaining()) options_.verbose(::ferry::detail::concat(__VA_ARGS__)); \
  } while (false)

namespace ferry {
namespace {

using plan_detail::NodeKind;
using plan_detail::PlanTree;
using plan_detail::TiedGroup;

constexpr int64_t kUnlimited = INT64_MAX / 4;

// Accelerate prints byte counts as Python numbers: integers unless a bool made them fractional.
std::string py_bytes(int64_t bits) {
  if (bits % 8 == 0) return std::to_string(bits / 8);
  std::ostringstream out;
  out << static_cast<double>(bits) / 8.0;
  return out.str();
}

std::string human(int64_t bits) { return format_bytes(static_cast<double>(bits) / 8.0); }

// Note [Largest-layer reservation]
// Accelerate keeps `max_layer` (the size of the largest layer still to place) and the list of
// layers of that size. Popping an entry removes the names under it from the list; when the list
// runs empty, or after any split, the largest layer is recomputed over the todo list. Recomputing
// by scanning the todo list is what makes Accelerate quadratic. Here:
//  * `active_` counts, per size, the layers not placed yet; placing removes them;
//  * the list is implicit: a layer belongs to the snapshot of epoch E if it has the snapshot's
//    size, was not placed before E began, and was not filtered out during E. `names_left_` counts
//    the members. Exactly Accelerate's list, including its stale names (layers placed as tied
//    partners stay in the list, as they do upstream).
// The cost per pop is the number of layers under the popped entry, so a whole plan costs
// O(layers x depth + log) instead of O(entries x layers).
class Planner {
 public:
  Planner(const ModelTree& tree, const PlanOptions& options, plan_detail::PlanTree plan)
      : tree_(tree), options_(options), plan_(std::move(plan)) {}

  DeviceMap run();

 private:
  // ---- the phases of run() -----------------------------------------------------------------
  void setup_devices();
  void find_ties();
  void fill_todo();
  void place_all();
  DeviceMap cover_every_name();
  DeviceMap finish(DeviceMap map);

  // ---- todo list: doubly linked over node ids, sentinel = n -------------------------------
  int32_t sentinel() const { return plan_.size(); }
  bool todo_empty() const { return next_[static_cast<size_t>(sentinel())] == sentinel(); }
  void link_after(int32_t pos, int32_t x) {
    auto ux = static_cast<size_t>(x);
    int32_t after = next_[static_cast<size_t>(pos)];
    prev_[ux] = pos;
    next_[ux] = after;
    next_[static_cast<size_t>(pos)] = x;
    prev_[static_cast<size_t>(after)] = x;
    in_todo_[ux] = 1;
  }
  void unlink(int32_t x) {
    auto ux = static_cast<size_t>(x);
    if (!in_todo_[ux]) return;
    next_[static_cast<size_t>(prev_[ux])] = next_[ux];
    prev_[static_cast<size_t>(next_[ux])] = prev_[ux];
    in_todo_[ux] = 0;
  }
  void push_front(int32_t x) { link_after(sentinel(), x); }
  int32_t pop_front() {
    int32_t x = next_[static_cast<size_t>(sentinel())];
    unlink(x);
    return x;
  }
  // Replaces entry x by its pieces, in place.
  void replace_by_pieces(int32_t x) {
    int32_t pos = prev_[static_cast<size_t>(x)];
    unlink(x);
    plan_.for_each_piece(x, [&](int32_t j) {
      link_after(pos, j);
      pos = j;
    });
  }
  void push_pieces_front(int32_t x) {
    int32_t pos = sentinel();
    plan_.for_each_piece(x, [&](int32_t j) {
      link_after(pos, j);
      pos = j;
    });
  }

  // ---- layers ------------------------------------------------------------------------------
  std::pair<size_t, size_t> layer_range(int32_t x) const {
    auto lo = std::lower_bound(layers_.begin(), layers_.end(), x);
    auto hi = std::lower_bound(lo, layers_.end(), plan_.end[static_cast<size_t>(x)]);
    return {static_cast<size_t>(lo - layers_.begin()), static_cast<size_t>(hi - layers_.begin())};
  }
  bool member(int32_t x) const {
    auto ux = static_cast<size_t>(x);
    if (plan_.bits[ux] != max_layer_ || filtered_at_[ux] == epoch_) return false;
    if (!plan_.is_module(x)) return epoch_ == 0;  // the root's tensors count in the first call only
    return placed_at_[ux] >= epoch_;
  }
  void filter(int32_t x) {
    if (!plan_.is_module(x)) {
      if (member(x)) {
        --names_left_;
        filtered_at_[static_cast<size_t>(x)] = epoch_;
      }
      return;
    }
    auto [lo, hi] = layer_range(x);
    for (size_t k = lo; k < hi; ++k) {
      int32_t l = layers_[k];
      if (member(l)) {
        --names_left_;
        filtered_at_[static_cast<size_t>(l)] = epoch_;
      }
    }
  }
  // get_max_layer_size over the todo list (modules only), without `excluded` (the popped entry).
  void recompute(int32_t excluded) {
    ++epoch_;
    std::unordered_map<int64_t, int64_t> minus;
    if (excluded >= 0 && plan_.is_module(excluded)) {
      auto [lo, hi] = layer_range(excluded);
      for (size_t k = lo; k < hi; ++k) {
        ++minus[plan_.bits[static_cast<size_t>(layers_[k])]];
        filtered_at_[static_cast<size_t>(layers_[k])] = epoch_;
      }
    }
    max_layer_ = 0;
    names_left_ = 0;
    for (auto it = active_.rbegin(); it != active_.rend(); ++it) {
      auto m = minus.find(it->first);
      int64_t left = it->second - (m == minus.end() ? 0 : m->second);
      if (left > 0) {
        max_layer_ = it->first;
        names_left_ = left;
        break;
      }
    }
  }

  // ---- placement -------------------------------------------------------------------------
  void place(int32_t x, size_t device) {
    auto [lo, hi] = layer_range(x);
    for (size_t k = lo; k < hi; ++k) {
      int32_t l = layers_[k];
      auto it = active_.find(plan_.bits[static_cast<size_t>(l)]);
      if (it != active_.end() && --it->second == 0) active_.erase(it);
      placed_at_[static_cast<size_t>(l)] = epoch_;
    }
    unlink(x);
    decided_[static_cast<size_t>(x)] = 1;
    decisions_.emplace_back(x, device);
  }
  // compute_module_total_buffer_size of the module at node x (its own de-duplicated walk).
  int64_t buffer_bits(int32_t x) {
    int64_t total = 0;
    const int64_t stamp = ++walk_stamp_;
    std::vector<ModuleId> stack{plan_.ref[static_cast<size_t>(x)]};
    module_stamp_[static_cast<size_t>(stack.back())] = stamp;
    while (!stack.empty()) {
      const TreeModule& m = tree_.module(stack.back());
      stack.pop_back();
      for (const auto& b : m.buffers) {
        if (b.tensor == kNoTensor || tensor_stamp_[static_cast<size_t>(b.tensor)] == stamp) continue;
        tensor_stamp_[static_cast<size_t>(b.tensor)] = stamp;
        total += plan_.tensor_bits[static_cast<size_t>(b.tensor)];
      }
      for (auto c = m.children.rbegin(); c != m.children.rend(); ++c) {
        if (module_stamp_[static_cast<size_t>(c->module)] == stamp) continue;
        module_stamp_[static_cast<size_t>(c->module)] = stamp;
        stack.push_back(c->module);
      }
    }
    return total;
  }

  // ---- ties ------------------------------------------------------------------------------
  // Partner entries of x: the entries holding the other names of tensors tied to a tensor under
  // x (Accelerate's tied_module_names), then, transitively, the entries tied to those partners,
  // so that a tied group always moves as a unit (Accelerate stops at the first step).
  // `container` maps a member's location to the entry holding it (-1: none).
  template <class Container>
  void tied_partners(int32_t x, std::vector<int32_t>& out, Container&& container) {
    out.clear();
    if (groups_inside_.empty()) return;
    const int64_t stamp = ++walk_stamp_;
    unit_stamp_[static_cast<size_t>(x)] = stamp;
    std::vector<int32_t>& unit = unit_scratch_;
    unit.assign(1, x);
    for (size_t k = 0; k < unit.size(); ++k) {
      const int32_t u = unit[k];
      for (int32_t g : groups_inside_[static_cast<size_t>(u)]) {
        if (group_stamp_[static_cast<size_t>(g)] == stamp) continue;  // handled for an earlier unit member
        group_stamp_[static_cast<size_t>(g)] = stamp;
        for (const auto& m : groups_[static_cast<size_t>(g)].members) {
          if (plan_.inside(m.location, x)) continue;
          int32_t entry = container(m.location);
          if (entry < 0) {
            if (m.in_tree) FERRY_EXPLAIN("  tied tensor ", m.name, " of ", name(x), " has no entry left to place");
            continue;
          }
          if (unit_stamp_[static_cast<size_t>(entry)] == stamp) continue;
          unit_stamp_[static_cast<size_t>(entry)] = stamp;
          unit.push_back(entry);
          out.push_back(entry);
        }
      }
    }
  }
  int32_t todo_container(int32_t location) const {
    for (int32_t a = location; a >= 0; a = plan_.parent[static_cast<size_t>(a)])
      if (in_todo_[static_cast<size_t>(a)]) return a;
    return -1;
  }
  int64_t size_with_partners(int32_t x, const std::vector<int32_t>& partners) {
    int64_t total = plan_.bits[static_cast<size_t>(x)];
    const int64_t stamp = ++walk_stamp_;
    for (int32_t p : partners) {
      if (partner_stamp_[static_cast<size_t>(p)] == stamp) continue;
      partner_stamp_[static_cast<size_t>(p)] = stamp;
      total += plan_.bits[static_cast<size_t>(p)];
    }
    return total;
  }

  // ---- fallback_allocate -------------------------------------------------------------------
  int32_t fallback_search(int64_t limit);
  void expand_to(int32_t n);

  // ---- explanations --------------------------------------------------------------------------
  const std::string& name(int32_t x) const { return plan_.name[static_cast<size_t>(x)]; }
  std::string dev(size_t d) const { return devices_[d].hf_str(); }
  bool explaining() const { return static_cast<bool>(options_.verbose); }

  const ModelTree& tree_;
  const PlanOptions& options_;
  PlanTree plan_;
  std::vector<TiedGroup> groups_;
  std::vector<std::vector<int32_t>> groups_inside_;
  std::vector<int32_t> next_, prev_;
  std::vector<uint8_t> in_todo_, decided_;
  std::vector<int32_t> layers_;
  std::map<int64_t, int64_t> active_;
  std::vector<int64_t> filtered_at_, placed_at_;
  int64_t epoch_ = 0, max_layer_ = 0, names_left_ = 0;
  std::vector<int64_t> module_stamp_, tensor_stamp_, partner_stamp_, expanded_stamp_, unit_stamp_, group_stamp_;
  std::vector<int32_t> unit_scratch_;
  int64_t walk_stamp_ = 0;
  MaxMemory max_memory_;
  std::vector<Placement> devices_;
  std::vector<int64_t> budget_bits_, used_, buffers_kept_, min_needed_;
  std::vector<uint8_t> main_;
  std::vector<size_t> gpus_;  // accelerator devices (indices into devices_)
  std::vector<std::pair<int32_t, size_t>> decisions_;
};

int32_t Planner::fallback_search(int64_t limit) {
  // Depth-first over the todo list; `expanded` marks modules whose pieces are being searched,
  // so a tied partner's container is the search entry holding it (Accelerate's `search` list).
  const int64_t stamp = ++walk_stamp_;
  auto container = [&](int32_t location) {
    for (int32_t a = location; a >= 0; a = plan_.parent[static_cast<size_t>(a)]) {
      if (in_todo_[static_cast<size_t>(a)]) return a;
      int32_t p = plan_.parent[static_cast<size_t>(a)];
      if (p >= 0 && expanded_stamp_[static_cast<size_t>(p)] == stamp) return a;
    }
    return int32_t{-1};
  };
  std::vector<int32_t> partners;
  std::vector<int32_t> stack;
  for (int32_t e = next_[static_cast<size_t>(sentinel())]; e != sentinel(); e = next_[static_cast<size_t>(e)]) {
    stack.assign(1, e);
    while (!stack.empty()) {
      int32_t x = stack.back();
      stack.pop_back();
      tied_partners(x, partners, container);
      int64_t s = size_with_partners(x, partners);
      if (s <= limit) return x;
      auto ux = static_cast<size_t>(x);
      if (!plan_.is_module(x) || !plan_.has_children[ux] || plan_.no_split[ux]) continue;
      expanded_stamp_[ux] = stamp;
      size_t mark = stack.size();
      plan_.for_each_piece(x, [&](int32_t j) { stack.push_back(j); });
      std::reverse(stack.begin() + static_cast<std::ptrdiff_t>(mark), stack.end());
    }
  }
  return -1;
}

void Planner::expand_to(int32_t n) {
  std::vector<int32_t> path;  // n's ancestors up to the todo entry holding it
  int32_t a = n;
  while (!in_todo_[static_cast<size_t>(a)]) {
    a = plan_.parent[static_cast<size_t>(a)];
    FERRY_ASSERT(a >= 0, "fallback module is in no todo entry");
    path.push_back(a);
  }
  for (auto it = path.rbegin(); it != path.rend(); ++it) replace_by_pieces(*it);
  unlink(n);
}

DeviceMap Planner::run() {
  setup_devices();
  find_ties();
  fill_todo();
  place_all();
  return finish(cover_every_name());
}

// Devices (Accelerate §4.1): budgets in device order, "disk" appended; which ones are main devices.
void Planner::setup_devices() {
  // Devices (Accelerate §4.1): budgets in device order, "disk" appended.
  max_memory_ = get_max_memory(options_.max_memory);
  for (const auto& b : max_memory_) {
    devices_.push_back(b.device);
    budget_bits_.push_back(b.device.is_disk() ? kUnlimited : b.bytes * 8);
  }
  if (devices_.empty() || !devices_.back().is_disk()) {
    devices_.push_back(Placement::disk());
    budget_bits_.push_back(kUnlimited);
  }
  gpus_.clear();
  for (size_t d = 0; d < devices_.size(); ++d)
    if (!devices_[d].is_cpu() && !devices_[d].is_disk()) gpus_.push_back(d);
  main_.assign(devices_.size(), 0);
  bool has_mps = false;
  for (size_t d : gpus_)
    if (devices_[d].device().type() == c10::kMPS) {
      main_[d] = 1;
      has_mps = true;
    }
  if (!has_mps) {
    if (!gpus_.empty()) main_[gpus_.front()] = 1;
    for (size_t d = 0; d < devices_.size(); ++d)
      if (devices_[d].is_cpu()) main_[d] = 1;
  }
  used_.assign(devices_.size(), 0);
  buffers_kept_.assign(devices_.size(), 0);
  min_needed_.assign(devices_.size(), -1);

}

// Ties: which groups have a member under each node.
void Planner::find_ties() {
  const size_t n = static_cast<size_t>(plan_.size());
  groups_ = plan_detail::find_tied_groups(plan_, /*buffers_too=*/true);
  if (!groups_.empty()) {
    groups_inside_.resize(n);
    std::vector<int32_t> last(n, -1);
    for (size_t g = 0; g < groups_.size(); ++g)
      for (const auto& m : groups_[g].members)
        for (int32_t a = m.location; a >= 0; a = plan_.parent[static_cast<size_t>(a)]) {
          if (last[static_cast<size_t>(a)] == static_cast<int32_t>(g)) break;
          last[static_cast<size_t>(a)] = static_cast<int32_t>(g);
          groups_inside_[static_cast<size_t>(a)].push_back(static_cast<int32_t>(g));
        }
  }

}

// The todo list = the root's pieces; the layers; the first get_max_layer_size (root tensors included).
void Planner::fill_todo() {
  const size_t n = static_cast<size_t>(plan_.size());
  next_.assign(n + 1, 0);
  prev_.assign(n + 1, 0);
  in_todo_.assign(n + 1, 0);
  decided_.assign(n, 0);
  next_[n] = prev_[n] = sentinel();
  push_pieces_front(0);
  filtered_at_.assign(n, -1);
  placed_at_.assign(n, INT64_MAX);
  module_stamp_.assign(tree_.module_count(), 0);
  tensor_stamp_.assign(tree_.tensor_count(), 0);
  partner_stamp_.assign(n, 0);
  expanded_stamp_.assign(n, 0);
  unit_stamp_.assign(n, 0);
  group_stamp_.assign(groups_.size(), 0);
  for (int32_t i = 1; i < plan_.size(); ++i)
    if (plan_.is_layer[static_cast<size_t>(i)]) {
      layers_.push_back(i);
      ++active_[plan_.bits[static_cast<size_t>(i)]];
    }
  plan_.for_each_piece(0, [&](int32_t j) {
    if (!plan_.is_module(j)) max_layer_ = std::max(max_layer_, plan_.bits[static_cast<size_t>(j)]);
  });
  if (!active_.empty()) max_layer_ = std::max(max_layer_, active_.rbegin()->first);
  names_left_ = 0;
  for (int32_t l : layers_) names_left_ += plan_.bits[static_cast<size_t>(l)] == max_layer_ ? 1 : 0;
  plan_.for_each_piece(0, [&](int32_t j) {
    if (!plan_.is_module(j) && plan_.bits[static_cast<size_t>(j)] == max_layer_) ++names_left_;
  });
  FERRY_EXPLAIN("Devices in order: ", to_string(max_memory_), "; largest layer: ", human(max_layer_));

}

// Accelerate §4.2-4.5: pops the todo list, placing, splitting or moving on to the next device.
void Planner::place_all() {
  size_t cur = 0;
  std::vector<int32_t> partners;
  while (!todo_empty()) {
    const int32_t x = pop_front();
    const auto ux = static_cast<size_t>(x);
    filter(x);
    if (names_left_ == 0) recompute(x);
    const int64_t module_size = plan_.bits[ux];
    tied_partners(x, partners, [&](int32_t location) { return todo_container(location); });

    FERRY_ASSERT(cur < devices_.size(), "ran out of devices while placing ", name(x));
    const size_t d = cur;
    int64_t cap = budget_bits_[d];
    int64_t reserved = 0;
    if (main_[d] && cap != kUnlimited) {
      cap -= max_layer_;
      reserved = max_layer_;
    }
    const int64_t size_wt = size_with_partners(x, partners);

    // (b) fits, with its tied partners
    if (cap == kUnlimited || used_[d] + size_wt <= cap) {
      used_[d] += size_wt;
      place(x, d);
      std::string partner_text;
      for (int32_t p : partners) {
        if (decided_[static_cast<size_t>(p)]) continue;  // a partner holding two tied parameters
        place(p, d);
        partner_text += (partner_text.empty() ? " with tied " : ", ") + name(p);
      }
      if (!options_.offload_buffers && plan_.is_module(x) && (devices_[d].is_cpu() || devices_[d].is_disk()))
        buffers_kept_[d] += buffer_bits(x);
      if (cap == kUnlimited)
        FERRY_EXPLAIN("Putting ", name(x), " (", human(size_wt), ")", partner_text, " on ", dev(d), ".");
      else
        FERRY_EXPLAIN("Putting ", name(x), " (", human(size_wt), ")", partner_text, " on ", dev(d), ": ", human(used_[d]),
                " of ", human(cap), " used", reserved ? " (" + human(reserved) + " kept for the largest layer)" : "",
                ".");
      continue;
    }

    // (c) fits alone but not with its partners: split one partner
    if (!partners.empty() && used_[d] + module_size <= cap) {
      bool split = false;
      for (int32_t p : partners) {
        auto up = static_cast<size_t>(p);
        if (!plan_.is_module(p) || !plan_.has_children[up] || plan_.no_split[up]) continue;
        FERRY_EXPLAIN("Splitting tied partner ", name(p), " of ", name(x), ": together they need ", human(size_wt),
                ", ", human(cap - used_[d]), " left on ", dev(d), ".");
        replace_by_pieces(p);
        push_front(x);
        recompute(-1);
        split = true;
        break;
      }
      if (split) continue;
    }

    // (d) split the module itself (Accelerate's ">=")
    if (used_[d] + module_size >= cap && plan_.is_module(x) && plan_.has_children[ux] && !plan_.no_split[ux]) {
      FERRY_EXPLAIN("Splitting ", name(x), " (", human(module_size), "): ", human(std::max<int64_t>(cap - used_[d], 0)),
              " left on ", dev(d), ".");
      push_pieces_front(x);
      recompute(-1);
      continue;
    }

    // (e) fallback: something smaller on a device that holds nothing yet
    if (used_[d] == 0 && options_.fallback_allocation && !devices_[d].is_disk()) {
      int64_t limit = budget_bits_[d] - std::max(max_layer_, size_wt) - used_[d];
      int32_t found = limit >= 0 ? fallback_search(limit) : -1;
      if (found >= 0) {
        FERRY_EXPLAIN("Nothing placed on ", dev(d), " yet and ", name(x), " does not fit: trying ", name(found), " (",
                human(plan_.bits[static_cast<size_t>(found)]), ") first.");
        expand_to(found);
        push_front(x);
        push_front(found);
        continue;
      }
    }

    // (f) close this device
    FERRY_EXPLAIN("Not enough space on ", dev(d), " for ", name(x), " (", human(size_wt), partners.empty() ? "" : " with tied partners",
            "; ", human(std::max<int64_t>(cap - used_[d], 0)), " left", reserved ? ", " + human(reserved) + " kept for the largest layer" : "",
            "): moving on to ", d + 1 < devices_.size() ? dev(d + 1) : std::string("nothing"), ".");
    if (used_[d] == 0) min_needed_[d] = size_wt + reserved;
    used_[d] += reserved;
    ++cur;
    push_front(x);
  }

}

// Every name gets a device: the decisions, and tied names placed with their tensor.
DeviceMap Planner::cover_every_name() {
  const size_t n = static_cast<size_t>(plan_.size());
  std::vector<int32_t> device_of(n, -1);
  for (const auto& [node, d] : decisions_) device_of[static_cast<size_t>(node)] = static_cast<int32_t>(d);
  for (size_t i = 1; i < n; ++i)
    if (device_of[i] < 0) device_of[i] = device_of[static_cast<size_t>(plan_.parent[i])];
  std::vector<int32_t> canonical_node(tree_.tensor_count(), -1);
  for (size_t i = 1; i < n; ++i) {
    if (plan_.kind[i] == NodeKind::Module) continue;
    FERRY_ASSERT(device_of[i] >= 0, "tensor ", plan_.name[i], " got no device");
    if (plan_.canonical[i] && canonical_node[static_cast<size_t>(plan_.ref[i])] < 0)
      canonical_node[static_cast<size_t>(plan_.ref[i])] = static_cast<int32_t>(i);
  }
  DeviceMap map;
  for (const auto& [node, d] : decisions_) map.set(name(node), devices_[d]);
  for (const auto& g : groups_) {
    int32_t c = canonical_node[static_cast<size_t>(g.tensor)];
    for (const auto& m : g.members) {
      if (m.in_tree || c < 0 || map.placement_of(m.name)) continue;
      const Placement& p = devices_[static_cast<size_t>(device_of[static_cast<size_t>(c)])];
      FERRY_EXPLAIN("Putting ", m.name, " with ", name(c), " on ", p.hf_str(), ": the same tensor under another name.");
      map.set(m.name, p);
    }
  }
  return map;
}

// The epilogue (Accelerate §4.6): clean_device_map, the warning about offloaded buffers and the
// line about devices that received nothing.
DeviceMap Planner::finish(DeviceMap map) {
  if (options_.clean_result) map = clean_device_map(map);
  int64_t offloaded = 0;
  for (size_t d = 0; d < devices_.size(); ++d)
    if (devices_[d].is_cpu() || devices_[d].is_disk()) offloaded += buffers_kept_[d];
  if (offloaded > 0 && !options_.offload_buffers && !gpus_.empty()) {
    bool fits = false;
    for (size_t d = 0; d < devices_.size(); ++d) {
      if (devices_[d].is_cpu() || devices_[d].is_disk() || budget_of(max_memory_, devices_[d]) < 0) continue;
      fits = fits || budget_bits_[d] >= offloaded + used_[d];
    }
    if (!fits)
      log_warning("Current model requires " + py_bytes(offloaded) +
                  " bytes of buffer for offloaded layers, which seems does not fit any GPU's remaining memory. If "
                  "you are experiencing a OOM later, please consider using offload_buffers=True.");
  }
  std::string needed;
  for (size_t d = 0; d < devices_.size(); ++d)
    if (min_needed_[d] >= 0) needed += "  - " + dev(d) + ": " + py_bytes(min_needed_[d]) + " bytes required\n";
  if (!needed.empty())
    log_info("Based on the current allocation process, no modules could be assigned to the following devices due to "
             "insufficient memory:\n" + needed +
             "These minimum requirements are specific to this allocation attempt and may vary. Consider increasing "
             "the available memory for these devices to at least the specified minimum, or adjusting the model "
             "config.");
  return map;
}

}  // namespace

DeviceMap infer_auto_device_map(const ModelTree& tree, const PlanOptions& options) {
  if (options.plan_by_expert && has_routed_experts(tree)) return plan_by_expert(tree, options);
  Planner planner(tree, options, plan_detail::build_plan_tree(tree, options.sizes, options.no_split));
  return planner.run();
}

const std::vector<Strategy>& all_strategies() {
  static const std::vector<Strategy> all = {Strategy::Auto, Strategy::Balanced, Strategy::BalancedLow0,
                                            Strategy::Sequential};
  return all;
}

std::optional<Strategy> find_strategy(const std::string& text) {
  for (Strategy s : all_strategies())
    if (text == to_string(s)) return s;
  return std::nullopt;
}

Strategy parse_strategy(const std::string& text) {
  if (auto s = find_strategy(text)) return *s;
  FERRY_FAIL("If passing a string for `device_map`, please choose 'auto', 'balanced', 'balanced_low_0' or "
             "'sequential'; got '", text, "'");
}

const char* to_string(Strategy strategy) {
  switch (strategy) {
    case Strategy::Auto: return "auto";
    case Strategy::Balanced: return "balanced";
    case Strategy::BalancedLow0: return "balanced_low_0";
    case Strategy::Sequential: return "sequential";
  }
  return "?";
}

DeviceMap plan_device_map(const ModelTree& tree, Strategy strategy, const PlanOptions& options) {
  // One planning tree serves balancing and planning (both use the same sizes and no-split rules).
  std::optional<plan_detail::PlanTree> plan;
  auto planning_tree = [&]() -> const plan_detail::PlanTree& {
    return plan ? *plan : plan.emplace(plan_detail::build_plan_tree(tree, options.sizes, options.no_split));
  };
  PlanOptions effective = options;
  if (strategy != Strategy::Sequential) {
    effective.max_memory = plan_detail::balanced_memory(tree, planning_tree, options.max_memory, options.no_split,
                                                        strategy == Strategy::BalancedLow0);
    if (options.verbose) options.verbose("Balanced budgets (" + std::string(to_string(strategy)) + "): " + to_string(effective.max_memory));
  }
  if (options.plan_by_expert && has_routed_experts(tree)) return plan_by_expert(tree, effective);
  planning_tree();
  Planner planner(tree, effective, std::move(*plan));
  return planner.run();
}

}  // namespace ferry
