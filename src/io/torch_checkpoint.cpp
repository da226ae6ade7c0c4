// torch.save'd checkpoints: LibTorch's zip reader, ferry's restricted unpickler (see the header's
// Note [Restricted unpickler]).
#include "ferry/io/torch_checkpoint.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/shape.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/version.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string_view>
#include <unordered_map>

// PyTorchStreamReader::getRecordSize (a record's size from the central directory, before reading it)
// exists from LibTorch 2.1 on; on 1.13 a record's size is checked once read.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define FERRY_HAS_RECORD_SIZE 1
#endif

namespace ferry::io {
namespace fs = std::filesystem;

int64_t TorchTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t TorchTensorInfo::nbytes() const {
  return static_cast<uint64_t>(numel()) * static_cast<uint64_t>(dtype_storage_bytes(dtype));
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A string from a hostile file, made safe to print: at most 80 bytes, control bytes escaped.
std::string printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > 80) out += "...";
  return out;
}

// ---- the restricted unpickler --------------------------------------------------------------------

enum class Kind : uint8_t { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

// "an int", "a list", "None": a kind in a sentence.
std::string a_kind(Kind k) {
  if (k == Kind::None) return "None";
  return std::string(k == Kind::Int ? "an " : "a ") + kind_name(k);
}

// The only globals a state dict's pickle names.
enum class Global : uint8_t { OrderedDict, RebuildTensorV2, RebuildParameter, StorageType };

struct Value {
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;  // Int; Storage: numel; Tensor: index into the parser's tensors
  double f = 0;
  Global global = Global::OrderedDict;
  c10::ScalarType dtype = c10::ScalarType::Undefined;  // Global::StorageType and Storage
  std::string s;                                      // String; Storage: its key
  std::vector<Value*> items;                          // Tuple, List; Dict: key, value, key, value...
  std::unique_ptr<std::unordered_map<std::string_view, size_t>> string_keys;  // Dict: key -> its slot in items
};

// The storage types torch.save names in a persistent id: the legacy typed-storage classes, and the
// dtype itself for dtypes that have none (float8).
bool storage_dtype(const std::string& name, c10::ScalarType* out) {
  static const std::unordered_map<std::string, c10::ScalarType> known = {
      {"DoubleStorage", at::kDouble},   {"FloatStorage", at::kFloat},
      {"HalfStorage", at::kHalf},       {"BFloat16Storage", at::kBFloat16},
      {"LongStorage", at::kLong},       {"IntStorage", at::kInt},
      {"ShortStorage", at::kShort},     {"CharStorage", at::kChar},
      {"ByteStorage", at::kByte},       {"BoolStorage", at::kBool},
      {"ComplexFloatStorage", at::kComplexFloat}, {"ComplexDoubleStorage", at::kComplexDouble},
#ifdef FERRY_HAS_FLOAT8
      {"float8_e4m3fn", at::kFloat8_e4m3fn},       {"float8_e5m2", at::kFloat8_e5m2},
#endif
  };
  auto it = known.find(name);
  if (it == known.end()) return false;
  *out = it->second;
  return true;
}

constexpr size_t kMaxDims = 64;
constexpr int64_t kMaxElements = int64_t{1} << 60;

class PickleReader {
 public:
  PickleReader(const uint8_t* data, size_t size, const std::string& source)
      : p_(data), end_(data + size), begin_(data), source_(source) {
    none_ = make(Kind::None);
    true_ = make(Kind::Bool);
    true_->b = true;
    false_ = make(Kind::Bool);
    empty_tuple_ = make(Kind::Tuple);
  }

  std::vector<TorchTensorInfo> run() {
    for (;;) {
      op_at_ = static_cast<size_t>(p_ - begin_);
      if (p_ == end_) fail("the pickle ends without a STOP opcode: the file is truncated or damaged");
      const uint8_t op = u8();
      if (op == '.') break;
      step(op);
    }
    if (stack_.size() != 1 || !marks_.empty())
      fail("the pickle stops with ", stack_.size(), " values and ", marks_.size(), " open marks on its stack, not one value");
    return state_dict(stack_.back());
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    throw Error("parse_torch_pickle", detail::concat(source_, ": ", parts..., " (data.pkl, byte ", op_at_, ")"));
  }

  Value* make(Kind kind) {
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }

  // ---- reading the byte stream
  void need(size_t n) const {
    if (static_cast<size_t>(end_ - p_) < n) fail("the pickle is cut short: it needs ", n, " more bytes, ", end_ - p_, " are left");
  }
  uint8_t u8() {
    need(1);
    return *p_++;
  }
  template <class T>
  T little() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));  // x86 and ARM hosts are little-endian, as the format
    p_ += sizeof(T);
    return v;
  }
  std::string_view bytes(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) fail("a string of ", n, " bytes runs past the pickle's end (", end_ - p_, " bytes left)");
    std::string_view v(reinterpret_cast<const char*>(p_), static_cast<size_t>(n));
    p_ += n;
    return v;
  }
  std::string line() {
    const void* nl = std::memchr(p_, '\n', static_cast<size_t>(end_ - p_));
    if (nl == nullptr) fail("a GLOBAL's name has no end of line: the pickle is cut short");
    std::string s(reinterpret_cast<const char*>(p_), static_cast<const uint8_t*>(nl) - p_);
    p_ = static_cast<const uint8_t*>(nl) + 1;
    return s;
  }

  // ---- the stack
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.size() <= floor()) fail("an opcode takes a value from an empty stack (or from below a MARK)");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) fail("an opcode needs a value on an empty stack (or below a MARK)");
    return stack_.back();
  }
  std::vector<Value*> pop_to_mark() {
    if (marks_.empty()) fail("an opcode needs a MARK and there is none");
    const size_t start = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(start), stack_.end());
    stack_.resize(start);
    return items;
  }
  Value* expect(Value* v, Kind kind, const char* what) {
    if (v->kind != kind) fail(what, " must be ", a_kind(kind), ", got ", a_kind(v->kind));
    return v;
  }
  void memo_put(uint64_t id) { memo_[id] = top(); }
  Value* memo_get(uint64_t id) {
    auto it = memo_.find(id);
    if (it == memo_.end()) fail("the pickle reads memo entry ", id, ", which it never stored");
    return it->second;
  }

  void dict_set(Value* dict, Value* key, Value* value) {
    if (key->kind == Kind::String) {
      if (!dict->string_keys) dict->string_keys = std::make_unique<std::unordered_map<std::string_view, size_t>>();
      auto [it, fresh] = dict->string_keys->emplace(std::string_view(key->s), dict->items.size());
      if (!fresh) {  // Python's dict: the last value wins, the first position stays
        dict->items[it->second + 1] = value;
        return;
      }
    }
    dict->items.push_back(key);
    dict->items.push_back(value);
  }
  void set_items(Value* dict, const std::vector<Value*>& kv) {
    expect(dict, Kind::Dict, "the target of SETITEMS");
    if (kv.size() % 2 != 0) fail("SETITEMS has an odd number (", kv.size(), ") of keys and values");
    for (size_t i = 0; i < kv.size(); i += 2) dict_set(dict, kv[i], kv[i + 1]);
  }

  Value* tuple(std::vector<Value*> items) {
    if (items.empty()) return empty_tuple_;
    Value* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }

  Value* global(const std::string& module, const std::string& name) {
    Value* g = make(Kind::Global);
    if (module == "collections" && name == "OrderedDict") {
      g->global = Global::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g->global = Global::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      g->global = Global::RebuildParameter;
    } else if (module == "torch" && storage_dtype(name, &g->dtype)) {
      g->global = Global::StorageType;
    } else if (module == "torch" && ends_with(name, "Storage")) {
      fail("the tensors are stored as torch.", printable(name), ", a type ferry does not read (quantized or unknown to "
           "LibTorch ", torch_version(), ")");
    } else {
      fail("the pickle asks for the Python global '", printable(module), ".", printable(name),
           "'; a state dict needs only collections.OrderedDict and torch's tensor rebuilding, so the file is refused "
           "unread (nothing in it was run). If it holds a whole pickled model or a training checkpoint, save its "
           "state dict instead: torch.save(model.state_dict(), path)");
    }
    return g;
  }

  std::vector<int64_t> int_tuple(Value* v, const char* what) {
    expect(v, Kind::Tuple, what);
    if (v->items.size() > kMaxDims) fail(what, " has ", v->items.size(), " dimensions; at most ", kMaxDims, " are read");
    std::vector<int64_t> out;
    for (Value* e : v->items) out.push_back(expect(e, Kind::Int, what)->i);
    return out;
  }

  Value* rebuild_tensor(const std::vector<Value*>& args) {
    if (args.size() != 6 && args.size() != 7)
      fail("_rebuild_tensor_v2 takes 6 or 7 arguments, the pickle gives ", args.size());
    Value* storage = expect(args[0], Kind::Storage, "a tensor's storage");
    TorchTensorInfo t;
    t.dtype = storage->dtype;
    t.storage_key = storage->s;
    t.storage_numel = storage->i;
    t.storage_offset = expect(args[1], Kind::Int, "a tensor's storage offset")->i;
    t.shape = int_tuple(args[2], "a tensor's size");
    t.strides = int_tuple(args[3], "a tensor's stride");
    expect(args[4], Kind::Bool, "a tensor's requires_grad");
    if (args[5]->kind != Kind::Dict && args[5]->kind != Kind::None)
      fail("a tensor's backward hooks must be an OrderedDict, got ", a_kind(args[5]->kind));
    if (args.size() == 7 && !(args[6]->kind == Kind::Dict && args[6]->items.empty()) && args[6]->kind != Kind::None)
      fail("a tensor carries metadata (a conjugate or negative bit) that ferry does not apply");
    check_view(t);
    Value* v = make(Kind::Tensor);
    v->i = static_cast<int64_t>(tensors_.size());
    tensors_.push_back(std::move(t));
    return v;
  }

  // The view (offset, sizes, strides) lies inside its storage: nothing outside it is ever read.
  void check_view(const TorchTensorInfo& t) {
    if (t.shape.size() != t.strides.size())
      fail("a tensor has ", t.shape.size(), " sizes but ", t.strides.size(), " strides");
    if (t.storage_offset < 0) fail("a tensor has a negative storage offset (", t.storage_offset, ")");
    int64_t numel = 1;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] < 0 || t.strides[d] < 0)
        fail("a tensor has size ", shape_str(t.shape), " and stride ", shape_str(t.strides), ": negative values");
      if (t.shape[d] != 0 && numel > kMaxElements / t.shape[d]) fail("a tensor of size ", shape_str(t.shape), " is too large");
      numel *= t.shape[d];
    }
    if (numel == 0) {
      if (t.storage_offset > t.storage_numel)
        fail("an empty tensor starts at element ", t.storage_offset, " of a storage of ", t.storage_numel);
      return;
    }
    // Last element's index, in 128 bits: sizes and strides below 2^63 cannot overflow it.
    __int128 last = t.storage_offset;
    for (size_t d = 0; d < t.shape.size(); ++d) last += static_cast<__int128>(t.shape[d] - 1) * t.strides[d];
    if (last >= t.storage_numel)
      fail("a tensor of size ", shape_str(t.shape), ", stride ", shape_str(t.strides), " and offset ", t.storage_offset,
           " reaches element ", static_cast<long long>(last > kMaxElements ? kMaxElements : last), " of storage '",
           printable(t.storage_key), "', which holds ", t.storage_numel, " (", dtype_name(t.dtype),
           "): the view lies outside its storage");
  }

  Value* call(Value* fn, Value* args) {
    expect(fn, Kind::Global, "what REDUCE calls");
    expect(args, Kind::Tuple, "REDUCE's arguments");
    switch (fn->global) {
      case Global::OrderedDict:
        if (!args->items.empty()) fail("OrderedDict is called with ", args->items.size(), " arguments; torch.save passes none");
        return make(Kind::Dict);
      case Global::RebuildTensorV2:
        return rebuild_tensor(args->items);
      case Global::RebuildParameter:
        if (args->items.size() != 3) fail("_rebuild_parameter takes 3 arguments, the pickle gives ", args->items.size());
        return expect(args->items[0], Kind::Tensor, "a parameter's data");
      case Global::StorageType:
        break;
    }
    fail("the pickle calls the storage type ", dtype_name(fn->dtype), ", which torch.save never does");
  }

  Value* persistent(Value* pid) {
    expect(pid, Kind::Tuple, "a persistent id");
    const auto& a = pid->items;
    if (a.size() != 5 || a[0]->kind != Kind::String || a[0]->s != "storage")
      fail("a persistent id must be ('storage', type, key, location, numel), got a tuple of ", a.size());
    Value* type = expect(a[1], Kind::Global, "a storage's type");
    if (type->global != Global::StorageType) fail("a storage's type must be a torch storage type");
    const std::string& key = expect(a[2], Kind::String, "a storage's key")->s;
    expect(a[3], Kind::String, "a storage's location");
    const int64_t numel = expect(a[4], Kind::Int, "a storage's size")->i;
    bool plain = !key.empty() && key.size() <= 64;
    for (char c : key) plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!plain) fail("a storage key must be a short name of letters and digits, got '", printable(key), "'");
    if (numel < 0 || numel > kMaxElements / 16) fail("storage '", key, "' claims ", numel, " elements");
    auto [it, fresh] = storages_.emplace(key, std::make_pair(type->dtype, numel));
    if (!fresh && (it->second.first != type->dtype || it->second.second != numel))
      fail("storage '", key, "' is described twice, as ", dtype_name(it->second.first), " x ", it->second.second,
           " and as ", dtype_name(type->dtype), " x ", numel);
    Value* s = make(Kind::Storage);
    s->s = key;
    s->dtype = type->dtype;
    s->i = numel;
    return s;
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80:  // PROTO
        if (u8() > 5) fail("pickle protocol above 5");
        break;
      case 0x95:  // FRAME: a length hint, transparent
        little<uint64_t>();
        break;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case '0':  // POP
        pop();
        break;
      case '1':  // POP_MARK
        pop_to_mark();
        break;
      case '2':  // DUP
        push(top());
        break;
      case 'N':
        push(none_);
        break;
      case 0x88:
        push(true_);
        break;
      case 0x89:
        push(false_);
        break;
      case 'J':
        push_int(little<int32_t>());
        break;
      case 'K':
        push_int(u8());
        break;
      case 'M':
        push_int(little<uint16_t>());
        break;
      case 0x8a: {  // LONG1: n bytes, little-endian two's complement
        const uint8_t n = u8();
        if (n > 8) fail("an integer of ", int(n), " bytes is too large");
        std::string_view b = bytes(n);
        uint64_t v = 0;
        for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(b[k])) << (8 * k);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(b[n - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        push_int(static_cast<int64_t>(v));
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        uint64_t bits = 0;
        for (uint8_t b : bytes(8)) bits = (bits << 8) | static_cast<uint8_t>(b);
        Value* v = make(Kind::Float);
        std::memcpy(&v->f, &bits, sizeof bits);
        push(v);
        break;
      }
      case 'X':
        push_string(bytes(little<uint32_t>()));
        break;
      case 0x8c:  // SHORT_BINUNICODE
        push_string(bytes(u8()));
        break;
      case 0x8d:  // BINUNICODE8
        push_string(bytes(little<uint64_t>()));
        break;
      case ')':
        push(empty_tuple_);
        break;
      case 't':
        push(tuple(pop_to_mark()));
        break;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        std::vector<Value*> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        push(tuple(std::move(items)));
        break;
      }
      case ']':
        push(make(Kind::List));
        break;
      case 'l': {
        Value* l = make(Kind::List);
        l->items = pop_to_mark();
        push(l);
        break;
      }
      case 'a': {
        Value* v = pop();
        expect(top(), Kind::List, "the target of APPEND")->items.push_back(v);
        break;
      }
      case 'e': {
        std::vector<Value*> items = pop_to_mark();
        Value* l = expect(top(), Kind::List, "the target of APPENDS");
        l->items.insert(l->items.end(), items.begin(), items.end());
        break;
      }
      case '}':
        push(make(Kind::Dict));
        break;
      case 'd': {
        std::vector<Value*> kv = pop_to_mark();
        Value* d = make(Kind::Dict);
        set_items(d, kv);
        push(d);
        break;
      }
      case 's': {
        Value* v = pop();
        Value* k = pop();
        dict_set(expect(top(), Kind::Dict, "the target of SETITEM"), k, v);
        break;
      }
      case 'u': {
        std::vector<Value*> kv = pop_to_mark();
        set_items(top(), kv);
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        std::string name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = expect(pop(), Kind::String, "STACK_GLOBAL's name");
        Value* module = expect(pop(), Kind::String, "STACK_GLOBAL's module");
        push(global(module->s, name->s));
        break;
      }
      case 'R': {
        Value* args = pop();
        Value* fn = pop();
        push(call(fn, args));
        break;
      }
      case 'b': {  // BUILD: an OrderedDict's attributes (state_dict()'s _metadata): kept out
        Value* state = pop();
        Value* obj = top();
        if (obj->kind != Kind::Dict || (state->kind != Kind::Dict && state->kind != Kind::None && state->kind != Kind::Tuple))
          fail("BUILD sets the state of ", a_kind(obj->kind), " from ", a_kind(state->kind),
               "; torch.save only sets an OrderedDict's attributes");
        break;
      }
      case 'Q':
        push(persistent(pop()));
        break;
      case 'q':
        memo_put(u8());
        break;
      case 'r':
        memo_put(little<uint32_t>());
        break;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        break;
      case 'h':
        push(memo_get(u8()));
        break;
      case 'j':
        push(memo_get(little<uint32_t>()));
        break;
      default:
        fail("opcode 0x", hex(op), " is not one torch.save writes for a state dict");
    }
  }

  static std::string hex(uint8_t op) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%02x", op);
    return buf;
  }
  void push_int(int64_t i) {
    Value* v = make(Kind::Int);
    v->i = i;
    push(v);
  }
  void push_string(std::string_view s) {
    Value* v = make(Kind::String);
    v->s.assign(s);
    push(v);
  }

  std::vector<TorchTensorInfo> state_dict(Value* root) {
    if (root->kind != Kind::Dict)
      fail("the pickle holds ", a_kind(root->kind), ", not a state dict (a dict of name -> tensor)");
    std::vector<TorchTensorInfo> out;
    out.reserve(root->items.size() / 2);
    for (size_t k = 0; k < root->items.size(); k += 2) {
      Value* key = root->items[k];
      Value* value = root->items[k + 1];
      if (key->kind != Kind::String) fail("a key of the state dict is ", a_kind(key->kind), ", not a string");
      if (value->kind == Kind::Dict)
        fail("'", printable(key->s), "' holds a dict, not a tensor: this looks like a training checkpoint; save the "
             "model's state dict alone, e.g. torch.save(checkpoint['", printable(key->s), "'], 'pytorch_model.bin')");
      if (value->kind != Kind::Tensor)
        fail("'", printable(key->s), "' holds ", a_kind(value->kind), ", not a tensor; a checkpoint ferry reads maps "
             "names to tensors only");
      TorchTensorInfo t = tensors_[static_cast<size_t>(value->i)];
      t.name = key->s;
      out.push_back(std::move(t));
    }
    return out;
  }

  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* begin_;
  const std::string& source_;
  size_t op_at_ = 0;
  std::deque<Value> arena_;  // every value; pointers stay valid as it grows
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  std::unordered_map<std::string, std::pair<c10::ScalarType, int64_t>> storages_;
  std::vector<TorchTensorInfo> tensors_;
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
  Value* empty_tuple_ = nullptr;
};

// ---- the zip --------------------------------------------------------------------------------------

// LibTorch's message without its C++ backtrace and source location.
std::string torch_message(const c10::Error& e) {
  std::string m = e.msg();
  const size_t nl = m.find('\n');
  if (nl != std::string::npos) m.resize(nl);
  return m;
}

// Refuses what is not a torch.save zip, from the first bytes, saying what it is and what to do.
void check_format(const uint8_t* head, size_t n, uint64_t file_size, const std::string& source) {
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return;
  FERRY_CHECK(file_size > 0, source, ": the file is empty");
  auto legacy = [&](const char* what) {
    FERRY_FAIL(source, ": ", what, ", which ferry does not read. Re-save it in the zip format of PyTorch 1.6 and later: "
               "python -c \"import torch; torch.save(torch.load('", source, "', map_location='cpu', weights_only=True), '",
               source, "')\"");
  };
  if (n >= 2 && head[0] == 0x80 && head[1] <= 5) legacy("is in PyTorch's legacy (pre-1.6) pickle format");
  if (n >= 262 && std::memcmp(head + 257, "ustar", 5) == 0) legacy("is in PyTorch's legacy (pre-0.4) tar format");
  if (n >= 9 && head[8] == '{') {
    uint64_t header = 0;
    std::memcpy(&header, head, 8);
    if (header >= 2 && header + 8 <= file_size)
      FERRY_FAIL(source, ": is a safetensors file, not a PyTorch pickle; give it the .safetensors extension (or name it "
                 "model.safetensors in a model folder) and ferry reads it directly");
  }
  FERRY_FAIL(source, ": is not a PyTorch checkpoint: it starts with neither a zip header (torch.save since 1.6) nor "
             "a pickle; the file is damaged or of another format (first bytes: '",
             printable(std::string_view(reinterpret_cast<const char*>(head), std::min<size_t>(n, 16))), "')");
}

// A file image in memory for PyTorchStreamReader. LibTorch 1.13's MemoryReadAdapter copies whatever
// range miniz asks for, and a damaged zip's directory makes it ask past the end (found by the fuzzer);
// this one clamps reads to the image, as FileAdapter does (and 2.x's MemoryReadAdapter now does).
class BoundedMemoryAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  BoundedMemoryAdapter(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what = "") const override {
    (void)what;
    if (pos >= size_) return 0;
    n = std::min<uint64_t>(n, size_ - pos);
    std::memcpy(buf, data_ + pos, n);
    return n;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

// A torch.save zip opened by LibTorch, with its pickle parsed and every storage record checked.
struct OpenArchive {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  std::vector<TorchTensorInfo> tensors;
  std::vector<std::string> storage_keys;  // each once, first use first
};

std::pair<at::DataPtr, size_t> get_record(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name,
                                          const std::string& source) {
  try {
    auto [data, size] = reader.getRecord(name);
    return {std::move(data), size};
  } catch (const c10::Error& e) {
    FERRY_FAIL(source, ": cannot read the record '", name, "' (LibTorch: ", torch_message(e),
               "); the file is truncated or damaged: download or save it again");
  }
}

uint64_t storage_bytes(const TorchTensorInfo& t) {
  return static_cast<uint64_t>(t.storage_numel) * static_cast<uint64_t>(dtype_storage_bytes(t.dtype));
}

OpenArchive open_archive(std::shared_ptr<caffe2::serialize::ReadAdapterInterface> adapter, uint64_t file_size,
                         const std::string& source) {
  OpenArchive a;
  try {
    a.reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(std::move(adapter));
  } catch (const c10::Error& e) {
    FERRY_FAIL(source, ": is not a readable PyTorch zip archive (LibTorch: ", torch_message(e),
               "); the file is truncated or damaged: download or save it again");
  }
  caffe2::serialize::PyTorchStreamReader& r = *a.reader;
  try {
    if (!r.hasRecord("data.pkl")) {
      const bool script = r.hasRecord("constants.pkl") || r.hasRecord("code/__torch__.py");
      FERRY_FAIL(source, script ? ": is a TorchScript archive (torch.jit.save), not a state dict; save the model's "
                                  "state_dict() with torch.save instead"
                                : ": is a zip archive without data.pkl: it was not written by torch.save");
    }
    if (r.hasRecord("byteorder")) {
      auto [data, size] = get_record(r, "byteorder", source);
      const std::string order(static_cast<const char*>(data.get()), size);
      FERRY_CHECK(order == "little", source, ": was saved on a ", printable(order),
                  "-endian machine; ferry reads little-endian checkpoints only: load and re-save it on this machine");
    }
  } catch (const c10::Error& e) {
    FERRY_FAIL(source, ": is a damaged PyTorch zip archive (LibTorch: ", torch_message(e), ")");
  }
  auto [pickle, pickle_size] = get_record(r, "data.pkl", source);
  a.tensors = parse_torch_pickle(static_cast<const uint8_t*>(pickle.get()), pickle_size, source);

  std::set<std::string> seen;
  for (const TorchTensorInfo& t : a.tensors) {
    if (!seen.insert(t.storage_key).second || t.storage_numel == 0) continue;
    const std::string record = "data/" + t.storage_key;
    const uint64_t need = storage_bytes(t);
    try {
      FERRY_CHECK(need <= file_size, source, ": '", t.name, "' needs a storage of ", need, " bytes (",
                  dtype_name(t.dtype), " x ", t.storage_numel, ") but the whole file holds ", file_size,
                  ": the file is truncated or forged");
      FERRY_CHECK(r.hasRecord(record), source, ": '", t.name, "' is stored in '", record,
                  "', which the archive lacks: the file is damaged or incomplete");
#ifdef FERRY_HAS_RECORD_SIZE
      const size_t have = r.getRecordSize(record);
      FERRY_CHECK(have == need, source, ": record '", record, "' holds ", have, " bytes but the storage of '", t.name,
                  "' needs ", need, " (", dtype_name(t.dtype), " x ", t.storage_numel, "): the file is damaged");
#else
      const size_t offset = r.getRecordOffset(record);
      FERRY_CHECK(offset <= file_size && need <= file_size - offset, source, ": record '", record, "' starts at byte ",
                  offset, " and cannot hold the ", need, " bytes the storage of '", t.name, "' needs: the file is truncated");
#endif
    } catch (const c10::Error& e) {
      FERRY_FAIL(source, ": cannot locate the record '", record, "' (LibTorch: ", torch_message(e),
                 "); the file is truncated or damaged");
    }
    a.storage_keys.push_back(t.storage_key);
  }
  return a;
}

NamedTensors load_archive(OpenArchive a, const std::string& source) {
  std::unordered_map<std::string, at::Tensor> storages;  // key -> 1-d tensor over the whole storage
  for (const TorchTensorInfo& t : a.tensors) {
    if (storages.count(t.storage_key)) continue;
    const auto options = at::TensorOptions().dtype(t.dtype).device(at::kCPU);
    if (t.storage_numel == 0) {
      storages.emplace(t.storage_key, at::empty({0}, options));
      continue;
    }
    const std::string record = "data/" + t.storage_key;
    auto [data, size] = get_record(*a.reader, record, source);
    const uint64_t need = storage_bytes(t);
    FERRY_CHECK(size == need, source, ": record '", record, "' holds ", size, " bytes but the storage of '", t.name,
                "' needs ", need, " (", dtype_name(t.dtype), " x ", t.storage_numel, "): the file is damaged");
    at::Storage storage(at::Storage::use_byte_size_t(), static_cast<size_t>(need), std::move(data), nullptr, false);
    at::Tensor whole = at::empty({0}, options);
    whole.set_(storage, 0, {t.storage_numel}, {1});
    storages.emplace(t.storage_key, std::move(whole));
  }
  NamedTensors out;
  out.reserve(a.tensors.size());
  for (const TorchTensorInfo& t : a.tensors) {
    // parse_torch_pickle checked the view against the storage; as_strided checks it again.
    at::Tensor v = storages.at(t.storage_key).as_strided(t.shape, t.strides, t.storage_offset);
    out.emplace_back(t.name, v.is_contiguous() ? v : v.contiguous());
  }
  return out;
}

OpenArchive open_file(const std::string& path) {
  check_regular_file(path, "read_torch_state_dict");
  std::ifstream in(path, std::ios::binary);
  FERRY_CHECK(in, path, ": cannot open the file (", std::strerror(errno), ")");
  uint8_t head[512];
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const size_t n = static_cast<size_t>(in.gcount());
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  FERRY_CHECK(!ec, path, ": cannot read the file's size (", ec.message(), ")");
  check_format(head, n, file_size, path);
  std::shared_ptr<caffe2::serialize::ReadAdapterInterface> adapter;
  try {
    adapter = std::make_shared<caffe2::serialize::FileAdapter>(path);
  } catch (const c10::Error& e) {
    FERRY_FAIL(path, ": cannot open the file (LibTorch: ", torch_message(e), ")");
  }
  return open_archive(std::move(adapter), file_size, path);
}

}  // namespace

std::vector<TorchTensorInfo> parse_torch_pickle(const uint8_t* data, size_t size, const std::string& source) {
  return PickleReader(data, size, source).run();
}

std::vector<TorchTensorInfo> list_torch_state_dict(const std::string& path) {
  try {
    return open_file(path).tensors;
  } catch (const Error& e) {
    throw e.in("list_torch_state_dict");
  }
}

NamedTensors read_torch_state_dict(const std::string& path) {
  try {
    OpenArchive a = open_file(path);
    return load_archive(std::move(a), path);
  } catch (const Error& e) {
    throw e.in("read_torch_state_dict");
  } catch (const c10::Error& e) {
    throw Error("read_torch_state_dict", path + ": " + torch_message(e));
  }
}

NamedTensors read_torch_state_dict(const uint8_t* data, size_t size, const std::string& source) {
  try {
    check_format(data, std::min<size_t>(size, 512), size, source);
    auto adapter = std::make_shared<BoundedMemoryAdapter>(data, size);
    return load_archive(open_archive(std::move(adapter), size, source), source);
  } catch (const Error& e) {
    throw e.in("read_torch_state_dict");
  } catch (const c10::Error& e) {
    throw Error("read_torch_state_dict", source + ": " + torch_message(e));
  }
}

// ---- checkpoints of several files -----------------------------------------------------------------

namespace {

bool is_pickle_name(const std::string& name) {
  return ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth");
}

// Pickles that sit in model folders without being weights (transformers' Trainer writes them).
bool is_training_file(const std::string& name) {
  return name == "training_args.bin" || name == "optimizer.pt" || name == "scheduler.pt" || name == "scaler.pt" ||
         name.rfind("rng_state", 0) == 0;
}

struct TorchIndex {
  TorchCheckpointFiles files;
  std::vector<std::pair<std::string, std::string>> claimed;  // tensor -> its file
};

TorchIndex read_index(const std::string& index) {
  TorchIndex out;
  out.files.index_file = index;
  const fs::path folder = fs::path(index).parent_path();
  const JsonDocument doc = read_json_file(index);
  const JsonValue& root = doc.root();
  FERRY_CHECK(root.is_object(), index, ": an index must be a JSON object {\"metadata\": ..., \"weight_map\": {...}}");
  const JsonValue map = root.at("weight_map", index);
  FERRY_CHECK(map.is_object(), index, ": \"weight_map\" must map tensor names to files, got ", map.type_name());
  FERRY_CHECK(map.size() > 0, index, ": \"weight_map\" lists no tensors");
  std::set<std::string> files;
  for (auto [name, file_value] : map.items()) {
    const std::string file(file_value.string(index + ": the file of '" + std::string(name) + "'"));
    const fs::path rel(file);
    bool escapes = rel.is_absolute() || file.empty();
    for (const auto& part : rel) escapes = escapes || part == "..";
    FERRY_CHECK(!escapes, index, ": tensor '", std::string(name), "' maps to '", file,
                "', which is outside the index's folder; shards must be plain names next to the index");
    FERRY_CHECK(!ends_with(file, ".safetensors"), index, ": tensor '", std::string(name), "' maps to '", file,
                "', a safetensors shard: this index belongs to a safetensors checkpoint, which ferry opens directly");
    const std::string path = (folder / rel).string();
    files.insert(path);
    out.claimed.emplace_back(std::string(name), path);
  }
  out.files.files.assign(files.begin(), files.end());
  return out;
}

TorchIndex resolve(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::is_regular_file(dir / "pytorch_model.bin.index.json", ec)) return read_index((dir / "pytorch_model.bin.index.json").string());
    if (fs::is_regular_file(dir / "pytorch_model.bin", ec)) return TorchIndex{{"", {(dir / "pytorch_model.bin").string()}}, {}};
    std::vector<std::string> indexes, pickles;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file(ec)) continue;
      if (ends_with(name, ".bin.index.json") || ends_with(name, ".pt.index.json")) indexes.push_back(entry.path().string());
      else if (is_pickle_name(name) && !is_training_file(name)) pickles.push_back(entry.path().string());
    }
    if (indexes.size() == 1) return read_index(indexes[0]);
    FERRY_CHECK(indexes.empty(), path, ": holds ", indexes.size(), " indexes of .bin shards; give the one to read");
    FERRY_CHECK(!pickles.empty(), path, ": holds no PyTorch weights (pytorch_model.bin, pytorch_model.bin.index.json, "
                "or a .bin/.pt/.pth file)");
    std::sort(pickles.begin(), pickles.end());
    FERRY_CHECK(pickles.size() == 1, path, ": holds ", pickles.size(), " .bin/.pt/.pth files (", pickles[0], ", ",
                pickles[1], "...) and no index saying which are the model's shards; give the file to read");
    return TorchIndex{{"", {pickles[0]}}, {}};
  }
  FERRY_CHECK(fs::exists(path, ec), path, ": does not exist");
  if (ends_with(path, ".json")) return read_index(path);
  return TorchIndex{{"", {path}}, {}};
}

}  // namespace

TorchCheckpointFiles resolve_torch_checkpoint(const std::string& path) {
  try {
    return resolve(path).files;
  } catch (const Error& e) {
    throw e.in("resolve_torch_checkpoint");
  }
}

bool is_torch_checkpoint(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    bool pickles = false;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      const std::string name = entry.path().filename().string();
      if (ends_with(name, ".safetensors") || name == "model.safetensors.index.json") return false;
      pickles = pickles || (is_pickle_name(name) && !is_training_file(name)) || ends_with(name, ".bin.index.json");
    }
    return pickles;
  }
  if (is_pickle_name(path)) return true;
  if (!ends_with(path, ".json") || !fs::is_regular_file(path, ec)) return false;
  try {
    const JsonDocument doc = read_json_file(path);
    auto map = doc.root().find("weight_map");
    if (!map || !map->is_object()) return false;
    for (auto [name, file] : map->items()) {
      auto s = file.as_string();
      return s && is_pickle_name(std::string(*s));
    }
  } catch (const Error&) {
  }
  return false;
}

namespace {

// Every tensor the index names is in the file it names (a tensor in no index is kept: Accelerate loads
// every tensor of every shard).
void check_claims(const TorchIndex& index, const std::unordered_map<std::string, std::string>& found) {
  for (const auto& [name, file] : index.claimed) {
    auto it = found.find(name);
    FERRY_CHECK(it != found.end() && it->second == file, index.files.index_file, ": names '", name, "' in ", file,
                it == found.end() ? std::string(", but no shard holds it") : ", but it is in " + it->second);
  }
}

void add_found(std::unordered_map<std::string, std::string>& found, const std::string& name, const std::string& file,
               const std::string& path) {
  auto [it, fresh] = found.emplace(name, file);
  FERRY_CHECK(fresh, path, ": tensor '", name, "' is in two shards, ", it->second, " and ", file);
}

}  // namespace

TorchCheckpointListing list_torch_checkpoint(const std::string& path) {
  try {
    const TorchIndex index = resolve(path);
    TorchCheckpointListing out;
    out.files = index.files;
    std::unordered_map<std::string, std::string> found;
    for (size_t f = 0; f < index.files.files.size(); ++f) {
      for (TorchTensorInfo& t : list_torch_state_dict(index.files.files[f])) {
        add_found(found, t.name, index.files.files[f], path);
        out.tensors.push_back(std::move(t));
        out.file_of.push_back(f);
      }
    }
    check_claims(index, found);
    return out;
  } catch (const Error& e) {
    throw e.in("list_torch_checkpoint");
  }
}

namespace {

// What Checkpoint::open (io/checkpoint.h, in ferry::base, which has no zip reader) lists a .bin
// checkpoint with; installed when this file is linked.
internal::TorchCheckpointContents list_for_checkpoint(const std::string& path) {
  TorchCheckpointListing listing = list_torch_checkpoint(path);
  internal::TorchCheckpointContents out;
  out.index_file = std::move(listing.files.index_file);
  out.files = std::move(listing.files.files);
  out.tensors.reserve(listing.tensors.size());
  for (size_t i = 0; i < listing.tensors.size(); ++i) {
    TorchTensorInfo& t = listing.tensors[i];
    CheckpointTensor& c = out.tensors.emplace_back();
    c.name = t.name;
    c.stored_name = std::move(t.name);
    c.file = out.files[listing.file_of[i]];
    c.shard = listing.file_of[i];
    c.dtype = t.dtype;
    c.nbytes = t.nbytes();
    c.shape = std::move(t.shape);
  }
  return out;
}

[[maybe_unused]] const bool lister_installed = (internal::set_torch_checkpoint_lister(&list_for_checkpoint), true);

}  // namespace

NamedTensors read_torch_checkpoint(const std::string& path) {
  try {
    const TorchIndex index = resolve(path);
    NamedTensors out;
    std::unordered_map<std::string, std::string> found;  // tensor -> file
    for (const std::string& file : index.files.files) {
      for (auto& [name, tensor] : read_torch_state_dict(file)) {
        add_found(found, name, file, path);
        out.emplace_back(name, std::move(tensor));
      }
    }
    check_claims(index, found);
    return out;
  } catch (const Error& e) {
    throw e.in("read_torch_checkpoint");
  }
}

}  // namespace ferry::io
