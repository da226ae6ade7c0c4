#include "ferry/nn/args.h"

#include "ferry/core/error.h"

namespace ferry {

Args& Args::set(const std::string& name, c10::IValue value) {
  if (c10::IValue* existing = find(name)) *existing = std::move(value);
  else keyword.emplace_back(name, std::move(value));
  return *this;
}

const c10::IValue* Args::find(const std::string& name) const {
  for (const auto& [key, value] : keyword)
    if (key == name) return &value;
  return nullptr;
}

c10::IValue* Args::find(const std::string& name) {
  for (auto& [key, value] : keyword)
    if (key == name) return &value;
  return nullptr;
}

at::Tensor Args::tensor(size_t i) const {
  FERRY_CHECK(i < positional.size(), "expected a tensor as positional argument ", i, " but only ",
              positional.size(), " positional arguments were given");
  FERRY_CHECK(positional[i].isTensor(), "positional argument ", i, " is a ", positional[i].tagKind(),
              ", not a tensor");
  return positional[i].toTensor();
}

at::Tensor Args::optional_tensor(const std::string& name) const {
  const c10::IValue* value = find(name);
  if (value && value->isTensor()) return value->toTensor();
  return at::Tensor();
}

}  // namespace ferry
