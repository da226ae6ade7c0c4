#include "ferry/hooks/model_hook.h"

#include "ferry/core/error.h"

#include <typeinfo>

namespace ferry {

void SequentialHook::init_hook(Module& module) {
  for (size_t i = 0; i < hooks.size(); ++i)
    FERRY_CHECK(hooks[i], "the SequentialHook attached to a ", module.class_name(), " holds no hook at position ", i);
  for (auto& hook : hooks) hook->init_hook(module);
}

void SequentialHook::pre_forward(Module& module, Args& args) {
  for (auto& hook : hooks) hook->pre_forward(module, args);
}

c10::IValue SequentialHook::post_forward(Module& module, c10::IValue output) {
  for (auto& hook : hooks) output = hook->post_forward(module, std::move(output));
  return output;
}

void SequentialHook::detach_hook(Module& module) {
  for (auto& hook : hooks) hook->detach_hook(module);
}

void SequentialHook::abort_forward(Module& module) {
  for (auto& hook : hooks) hook->abort_forward(module);
}

void add_hook_to_module(Module& module, std::shared_ptr<ModelHook> hook, bool append) {
  FERRY_CHECK(hook, "no hook given for the ", module.class_name(),
              "; to take a hook off, call remove_hook_from_module");
  if (append && module.hook()) {
    std::shared_ptr<ModelHook> old = module.hook();
    remove_hook_from_module(module);
    // Flatten, so that appending many times gives one flat SequentialHook. Only a plain
    // SequentialHook is flattened: a subclass may add behaviour of its own and is kept whole.
    std::vector<std::shared_ptr<ModelHook>> chain;
    if (typeid(*old) == typeid(SequentialHook)) chain = static_cast<SequentialHook&>(*old).hooks;
    else chain.push_back(old);
    chain.push_back(std::move(hook));
    hook = std::make_shared<SequentialHook>(std::move(chain));
  }
  hook->init_hook(module);
  module.set_hook(std::move(hook));
}

void remove_hook_from_module(Module& module, bool recurse) {
  if (recurse) {
    remove_hook_from_submodules(module);
    return;
  }
  if (auto hook = module.hook()) {
    hook->detach_hook(module);
    module.set_hook(nullptr);
  }
  module.set_move_guard(nullptr);
}

void remove_hook_from_submodules(Module& module) {
  // Children first, so that a hook on a parent sees its subtree restored when it detaches.
  auto modules = module.named_modules();
  for (auto it = modules.rbegin(); it != modules.rend(); ++it) remove_hook_from_module(*it->second);
}

}  // namespace ferry
