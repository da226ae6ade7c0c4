#pragma once
/// \file
/// The interface that `Module::operator()` calls around forward: Accelerate's `ModelHook`. It lives
/// with the module (nn sits below hooks: the module layer calls it, the hooks layer implements it);
/// the hooks themselves, SequentialHook and the attach/remove functions are in hooks/model_hook.h.
///
///     struct AddOne : ferry::ModelHook {
///       void pre_forward(ferry::Module&, ferry::Args& args) override { args.positional[0] = args.tensor(0) + 1; }
///     };

#include "ferry/nn/args.h"

#include <ATen/core/ivalue.h>
#include <c10/core/GradMode.h>

namespace ferry {

class Module;

/// A hook around a module's forward. Every method has a do-nothing default.
class ModelHook {
 public:
  virtual ~ModelHook() = default;
  /// When true, the module's forward runs under c10::NoGradGuard.
  bool no_grad = false;
  /// Called when the hook is attached.
  virtual void init_hook(Module& module) {}
  /// Called before forward; may rewrite the arguments in place.
  virtual void pre_forward(Module& module, Args& args) {}
  /// Called after forward with its output; returns the (possibly replaced) output.
  virtual c10::IValue post_forward(Module& module, c10::IValue output) { return output; }
  /// Called when the hook is removed.
  virtual void detach_hook(Module& module) {}
  /// Called instead of post_forward when forward (or pre_forward) throws, before the exception
  /// propagates: release what pre_forward acquired (Accelerate has no such step and keeps
  /// offloaded weights loaded after an exception).
  virtual void abort_forward(Module& module) {}
};

}  // namespace ferry
