#include "ferry/hooks/model_hook.h"

namespace ferry {

void SequentialHook::init_hook(Module& module) {
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
  if (append && module.hook()) {
    std::shared_ptr<ModelHook> old = module.hook();
    remove_hook_from_module(module);
    // Flatten, so that appending many times gives one flat SequentialHook.
    std::vector<std::shared_ptr<ModelHook>> chain;
    if (auto sequential = std::dynamic_pointer_cast<SequentialHook>(old)) chain = sequential->hooks;
    else chain.push_back(old);
    chain.push_back(std::move(hook));
    hook = std::make_shared<SequentialHook>(std::move(chain));
  }
  hook->init_hook(module);
  module.set_hook(std::move(hook));
}

void remove_hook_from_module(Module& module, bool recurse) {
  if (auto hook = module.hook()) {
    hook->detach_hook(module);
    module.set_hook(nullptr);
  }
  module.set_move_guard(nullptr);
  if (recurse)
    for (auto& [name, child] : module.named_children()) remove_hook_from_module(*child, true);
}

void remove_hook_from_submodules(Module& module) {
  for (auto& [name, child] : module.named_modules()) remove_hook_from_module(*child);
}

}  // namespace ferry
