#pragma once
/// \file
/// Accelerate's clear_device_cache: gives the memory LibTorch's allocator holds but no tensor uses
/// back to the device, so that the next model moved in finds it free (cpu_offload_with_hook does
/// this after sending the previous model back to the CPU).
///
///     ferry::clear_device_cache();   // no-op without CUDA

namespace ferry {

/// Empties LibTorch's CUDA caching allocator when ferry is built with CUDA and a GPU is present.
void clear_device_cache();

}  // namespace ferry
