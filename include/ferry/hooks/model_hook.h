#pragma once
/// \file
/// Hooks: code that runs around a module's forward, as Accelerate's `ModelHook`. Everything
/// Accelerate does by rewriting `forward` in Python (moving weights in, moving inputs, casting),
/// ferry does through one hook slot on each `Module`, consulted by `Module::operator()`.
///
///     struct AddOne : ferry::ModelHook {
///       void pre_forward(ferry::Module&, ferry::Args& args) override {
///         args.positional[0] = args.tensor(0) + 1;
///       }
///     };
///     ferry::add_hook_to_module(model, std::make_shared<AddOne>());
///     model(x);                                   // == original model(x + 1)
///     ferry::add_hook_to_module(model, std::make_shared<AddOne>(), /*append=*/true);
///     model(x);                                   // SequentialHook: model(x + 2)
///     ferry::remove_hook_from_module(model);      // original behaviour, exactly

#include "ferry/nn/module.h"
#include "ferry/nn/module_hook.h"  // the ModelHook interface itself

#include <memory>
#include <vector>

namespace ferry {

/// Several hooks run in order: init/pre_forward/post_forward/detach thread through each.
class SequentialHook : public ModelHook {
 public:
  explicit SequentialHook(std::vector<std::shared_ptr<ModelHook>> hooks) : hooks(std::move(hooks)) {}
  void init_hook(Module& module) override;
  void pre_forward(Module& module, Args& args) override;
  c10::IValue post_forward(Module& module, c10::IValue output) override;
  void detach_hook(Module& module) override;
  void abort_forward(Module& module) override;

  std::vector<std::shared_ptr<ModelHook>> hooks;
};

/// Attaches `hook` to `module` and calls its init_hook. A hook already there is replaced (its
/// detach_hook is not called, as in Accelerate) unless `append`, in which case the old hook is
/// detached and both run as SequentialHook(old, hook), each re-initialised.
void add_hook_to_module(Module& module, std::shared_ptr<ModelHook> hook, bool append = false);

/// Detaches and removes the hook of `module` (and its descendants with `recurse`, children first); also removes a
/// move guard installed by dispatch_model. Safe on a module without a hook.
void remove_hook_from_module(Module& module, bool recurse = false);

/// remove_hook_from_module on `module` and every descendant.
void remove_hook_from_submodules(Module& module);

/// Calls `fn` with every hook of type H on `module` and its descendants, those inside a
/// SequentialHook included. Builds no names: a mixture of experts calls it for every picked
/// expert on every forward.
template <class H, class Fn>
void for_each_hook(Module& module, Fn&& fn) {
  const std::shared_ptr<ModelHook> hook = module.hook();
  if (auto sequential = std::dynamic_pointer_cast<SequentialHook>(hook)) {
    for (const auto& h : sequential->hooks)
      if (auto typed = std::dynamic_pointer_cast<H>(h)) fn(*typed);
  } else if (auto typed = std::dynamic_pointer_cast<H>(hook)) {
    fn(*typed);
  }
  for (const auto& [name, child] : module.children())
    if (child) for_each_hook<H>(*child, fn);
}

/// The hook of `module` if it is (exactly) of type H, else nullptr.
template <class H>
std::shared_ptr<H> hook_as(const Module& module) {
  return std::dynamic_pointer_cast<H>(module.hook());
}

}  // namespace ferry
