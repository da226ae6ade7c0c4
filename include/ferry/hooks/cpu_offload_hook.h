#pragma once
/// \file
/// Whole-model CPU offload for pipelines (Accelerate's CpuOffload and UserCpuOffloadHook): a
/// model sits in CPU RAM and moves to the execution device when called; the previous model of a
/// pipeline is sent back to the CPU first, so several models can share one accelerator.
///
///     auto [enc, enc_hook] = ferry::cpu_offload_with_hook(encoder, c10::Device("cuda:0"));
///     auto [dec, dec_hook] = ferry::cpu_offload_with_hook(decoder, c10::Device("cuda:0"), enc_hook);
///     (*dec)((*enc)(x));        // encoder goes back to the CPU before the decoder moves in
///     dec_hook->offload();      // decoder back to the CPU

#include "ferry/hooks/model_hook.h"

#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <utility>

namespace ferry {

class UserCpuOffloadHook;

/// Moves the whole module to `execution_device` before forward (and inputs with it).
class CpuOffloadHook : public ModelHook {
 public:
  /// `execution_device` defaults to accelerator 0 when LibTorch has one, else the CPU.
  explicit CpuOffloadHook(std::optional<c10::Device> execution_device = std::nullopt,
                          std::shared_ptr<UserCpuOffloadHook> prev_module_hook = nullptr);
  void init_hook(Module& module) override;
  void pre_forward(Module& module, Args& args) override;
  c10::Device execution_device() const { return execution_device_; }

 private:
  c10::Device execution_device_;
  std::shared_ptr<UserCpuOffloadHook> prev_module_hook_;
};

/// The handle cpu_offload_with_hook returns: offload() sends the model back to the CPU.
class UserCpuOffloadHook {
 public:
  UserCpuOffloadHook(Module& model, std::shared_ptr<CpuOffloadHook> hook) : model_(model), hook_(std::move(hook)) {}
  /// Moves the model back to the CPU.
  void offload() { hook_->init_hook(model_); }
  /// Removes the hook from the model.
  void remove();
  Module& model() { return model_; }

 private:
  Module& model_;
  std::shared_ptr<CpuOffloadHook> hook_;
};

/// Attaches a CpuOffloadHook (appended to any hook there) and returns the user handle.
/// `model` must outlive the handle.
/// What cpu_offload_with_hook returns, as Accelerate's `(model, hook)`: `auto [m, hook] = ...`.
struct ModelWithOffloadHook {
  Module& model;
  std::shared_ptr<UserCpuOffloadHook> hook;
};

ModelWithOffloadHook cpu_offload_with_hook(Module& model, std::optional<c10::Device> execution_device = std::nullopt,
                                           std::shared_ptr<UserCpuOffloadHook> prev_module_hook = nullptr);

/// Accelerator 0 when LibTorch was built with CUDA and a device is present, else the CPU.
c10::Device default_execution_device();

}  // namespace ferry
