#include "ferry/nn/torch_module.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>
#include <c10/util/Type.h>
#include <torch/nn.h>

#include <set>
#include <unordered_map>

namespace ferry {
namespace {

// An empty tensor of `dtype` on the CPU: what a wrapped torch tensor holds outside calls.
at::Tensor placeholder(c10::ScalarType dtype) { return at::empty({0}, at::TensorOptions().dtype(dtype)); }

template <class Impl>
TorchModule::Forward single_tensor_forward() {
  return [](TorchModule& self, Args& args) -> c10::IValue { return self.wrapped_as<Impl>().forward(args.tensor(0)); };
}

// LibTorch's layers that take and return one tensor (default 4 of the header).
TorchModule::Forward builtin_forward(const torch::nn::Module& m) {
#define FERRY_TORCH_LAYER(Impl) \
  if (dynamic_cast<const torch::nn::Impl*>(&m) != nullptr) return single_tensor_forward<torch::nn::Impl>();
  FERRY_TORCH_LAYER(LinearImpl)
  FERRY_TORCH_LAYER(Conv1dImpl)
  FERRY_TORCH_LAYER(Conv2dImpl)
  FERRY_TORCH_LAYER(Conv3dImpl)
  FERRY_TORCH_LAYER(ConvTranspose1dImpl)
  FERRY_TORCH_LAYER(ConvTranspose2dImpl)
  FERRY_TORCH_LAYER(ConvTranspose3dImpl)
  FERRY_TORCH_LAYER(EmbeddingImpl)
  FERRY_TORCH_LAYER(LayerNormImpl)
  FERRY_TORCH_LAYER(GroupNormImpl)
  FERRY_TORCH_LAYER(BatchNorm1dImpl)
  FERRY_TORCH_LAYER(BatchNorm2dImpl)
  FERRY_TORCH_LAYER(BatchNorm3dImpl)
  FERRY_TORCH_LAYER(DropoutImpl)
  FERRY_TORCH_LAYER(IdentityImpl)
  FERRY_TORCH_LAYER(FlattenImpl)
  FERRY_TORCH_LAYER(ReLUImpl)
  FERRY_TORCH_LAYER(GELUImpl)
  FERRY_TORCH_LAYER(SiLUImpl)
  FERRY_TORCH_LAYER(TanhImpl)
  FERRY_TORCH_LAYER(SigmoidImpl)
  FERRY_TORCH_LAYER(SoftmaxImpl)
  FERRY_TORCH_LAYER(LogSoftmaxImpl)
#undef FERRY_TORCH_LAYER
  return nullptr;
}

// A Sequential: its children in order, each through the adapter (default 2).
c10::IValue sequential_forward(TorchModule& self, Args& args) {
  at::Tensor x = args.tensor(0);
  for (const auto& [name, child] : self.children()) x = (*child)(x);  // duplicates run each time, as in Sequential
  return x;
}

struct WrapState {
  const TorchWrapOptions& options;
  std::unordered_map<const torch::nn::Module*, std::shared_ptr<TorchModule>> modules;  // each wrapped once
  std::unordered_map<const c10::TensorImpl*, at::Tensor> aliases;                      // each tensor aliased once
  std::vector<TorchModule*> all;
  std::set<std::string> names;  // every path and class name, to check TorchWrapOptions::forwards
};

std::shared_ptr<TorchModule> wrap(const std::shared_ptr<torch::nn::Module>& m, const std::string& path,
                                  TorchModule::Forward fallback, WrapState& state) {
  if (auto done = state.modules.find(m.get()); done != state.modules.end()) return done->second;
  const std::string class_name = torch_module_class_name(*m);
  TorchModule::Forward forward;
  if (auto f = state.options.forwards.find(path); f != state.options.forwards.end()) {
    forward = f->second;
  } else if (auto c = state.options.forwards.find(class_name); c != state.options.forwards.end()) {
    forward = c->second;
  } else if (dynamic_cast<const torch::nn::SequentialImpl*>(m.get()) != nullptr) {
    forward = &sequential_forward;
  } else if (fallback) {
    forward = std::move(fallback);
  } else {
    forward = builtin_forward(*m);
  }
  auto out = std::make_shared<TorchModule>(m, class_name, path, std::move(forward));
  state.modules.emplace(m.get(), out);
  state.all.push_back(out.get());
  state.names.insert(path);
  state.names.insert(class_name);

  auto alias_of = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) return t;
    auto [it, fresh] = state.aliases.emplace(t.unsafeGetTensorImpl(), at::Tensor());
    if (fresh) it->second = t.detach();  // the same memory, another TensorImpl (ferry's slot owns it)
    return it->second;
  };
  for (const auto& item : m->named_parameters(/*recurse=*/false))
    out->register_wrapped_tensor(item.key(), item.value(), alias_of(item.value()), /*is_buffer=*/false);
  for (const auto& item : m->named_buffers(/*recurse=*/false))
    out->register_wrapped_tensor(item.key(), item.value(), alias_of(item.value()), /*is_buffer=*/true);

  auto* sequential = dynamic_cast<torch::nn::SequentialImpl*>(m.get());
  auto sequential_ptr = sequential != nullptr ? std::dynamic_pointer_cast<torch::nn::SequentialImpl>(m) : nullptr;
  size_t index = 0;
  for (const auto& item : m->named_children()) {
    TorchModule::Forward element;
    if (sequential_ptr && index < sequential_ptr->size() && sequential_ptr->ptr(index) == item.value()) {
      // An element of a Sequential: its own forward, whatever its type, through the AnyModule (default 3).
      element = [seq = sequential_ptr, index](TorchModule&, Args& args) -> c10::IValue {
        return seq->begin()[static_cast<std::ptrdiff_t>(index)].forward(args.tensor(0));
      };
    }
    out->register_child(item.key(), wrap(item.value(), join_name(path, item.key()), std::move(element), state));
    ++index;
  }
  return out;
}

}  // namespace

std::string torch_module_class_name(const torch::nn::Module& module) {
  std::string name = module.name();
  if (const size_t colon = name.rfind("::"); colon != std::string::npos && name.find('<') == std::string::npos)
    name = name.substr(colon + 2);
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) name.resize(name.size() - 4);
  return name;
}

TorchModule::TorchModule(std::shared_ptr<torch::nn::Module> wrapped, std::string class_name, std::string path,
                         Forward forward)
    : Module(std::move(class_name)), wrapped_(std::move(wrapped)), path_(std::move(path)), forward_(std::move(forward)) {}

void TorchModule::register_wrapped_tensor(const std::string& name, const at::Tensor& torch_tensor,
                                          const at::Tensor& alias, bool is_buffer) {
  if (is_buffer) register_buffer(name, alias);
  else register_parameter(name, alias);
  const auto& slots = is_buffer ? buffer_slots() : parameter_slots();
  bindings_.push_back(Binding{torch_tensor, slots.back().second, name});
}

void TorchModule::bind() {
  try {
    for (Binding& b : bindings_) {
      const at::Tensor& t = b.slot->tensor;
      if (!b.torch_tensor.defined() || !t.defined()) continue;  // a registered None
      FERRY_CHECK(!t.is_meta(), "module '", path_, "' (", class_name(), ") runs with its tensor '", b.name,
                  "' on the meta device: it is offloaded and no hook loaded it. Call the wrapped model through its "
                  "TorchModule, and in a Forward call children as (*self.child(name))(...), so that their hooks run");
      b.torch_tensor.set_data(t);
    }
  } catch (...) {
    unbind();
    throw;
  }
}

void TorchModule::unbind() noexcept {
  for (Binding& b : bindings_) {
    if (!b.torch_tensor.defined()) continue;
    try {
      b.torch_tensor.set_data(placeholder(b.torch_tensor.scalar_type()));
    } catch (...) {  // set_data between CPU tensors of one dtype does not throw
    }
  }
}

c10::IValue TorchModule::forward(Args& args) {
  if (!forward_)
    throw Error("TorchModule::forward", detail::concat("module '", path_, "' (", class_name(), ", ", wrapped_->name(),
              ") has no forward ferry can call: give one in TorchWrapOptions::forwards under its path \"", path_,
              "\" or its class name \"", class_name(), "\""));
  try {
    bind();
  } catch (const Error& e) {
    throw e.in("TorchModule::forward");
  }
  struct Unbind {
    TorchModule* self;
    ~Unbind() { self->unbind(); }
  } unbind_after{this};
  return forward_(*this, args);
}

void TorchModule::throw_wrong_type(const char* wanted) const {
  throw Error("TorchModule::wrapped_as",
              detail::concat("module '", path_, "' wraps a ", wrapped_->name(), ", not a ", c10::demangle(wanted)));
}

std::shared_ptr<TorchModule> wrap_torch_module(const std::shared_ptr<torch::nn::Module>& root,
                                               const TorchWrapOptions& options) {
  FERRY_CHECK(root != nullptr, "wrap_torch_module: the module is null");
  WrapState state{options, {}, {}, {}, {}};
  std::shared_ptr<TorchModule> out = wrap(root, "", nullptr, state);
  for (const auto& [key, forward] : options.forwards) {
    if (state.names.count(key)) continue;
    std::string names;
    for (const TorchModule* m : state.all) names += "\n  \"" + m->path() + "\" (" + m->class_name() + ")";
    FERRY_FAIL("TorchWrapOptions::forwards names \"", key, "\", which is neither the path nor the class name of a "
               "module of the wrapped tree; its modules:",
               names);
  }
  // From here the ferry tree owns the weights: the torch tensors hold nothing outside calls.
  for (TorchModule* m : state.all) m->unbind();
  return out;
}

}  // namespace ferry
