#include "ferry/hooks/send_to_device.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace ferry {
namespace {
bool skipped(const std::vector<std::string>& skip_keys, const std::string& key) {
  return std::find(skip_keys.begin(), skip_keys.end(), key) != skip_keys.end();
}
}  // namespace

c10::IValue send_to_device(const c10::IValue& value, c10::Device device, const std::vector<std::string>& skip_keys,
                           bool non_blocking) {
  if (value.isTensor()) {
    const at::Tensor& t = value.toTensor();
    if (!t.defined() || t.device() == device) return value;
    return t.to(device, non_blocking);
  }
  if (value.isTuple()) {
    std::vector<c10::IValue> elements;
    for (const auto& e : value.toTupleRef().elements()) elements.push_back(send_to_device(e, device, skip_keys, non_blocking));
    return c10::ivalue::Tuple::create(std::move(elements));
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> moved;
    for (const at::Tensor& t : value.toTensorList()) moved.push_back(t.defined() ? t.to(device, non_blocking) : t);
    return moved;
  }
  if (value.isList()) {
    c10::impl::GenericList moved(value.toList().elementType());
    for (const auto& e : value.toList()) moved.push_back(send_to_device(e, device, skip_keys, non_blocking));
    return moved;
  }
  if (value.isGenericDict()) {
    auto dict = value.toGenericDict();
    c10::impl::GenericDict moved(dict.keyType(), dict.valueType());
    for (const auto& entry : dict) {
      bool keep = entry.key().isString() && skipped(skip_keys, entry.key().toStringRef());
      moved.insert(entry.key(), keep ? entry.value() : send_to_device(entry.value(), device, skip_keys, non_blocking));
    }
    return moved;
  }
  return value;
}

void send_to_device(Args& args, c10::Device device, const std::vector<std::string>& skip_keys, bool non_blocking) {
  for (auto& value : args.positional) value = send_to_device(value, device, skip_keys, non_blocking);
  for (auto& [name, value] : args.keyword)
    if (!skipped(skip_keys, name)) value = send_to_device(value, device, skip_keys, non_blocking);
}

std::optional<c10::Device> find_device(const c10::IValue& value) {
  if (value.isTensor()) {
    const at::Tensor& t = value.toTensor();
    if (t.defined()) return t.device();
    return std::nullopt;
  }
  if (value.isTuple()) {
    for (const auto& e : value.toTupleRef().elements())
      if (auto d = find_device(e)) return d;
  } else if (value.isList()) {
    for (const auto& e : value.toList())
      if (auto d = find_device(e)) return d;
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict())
      if (auto d = find_device(entry.value())) return d;
  }
  return std::nullopt;
}

std::optional<c10::Device> find_device(const Args& args) {
  for (const auto& value : args.positional)
    if (auto d = find_device(value)) return d;
  for (const auto& [name, value] : args.keyword)
    if (auto d = find_device(value)) return d;
  return std::nullopt;
}

}  // namespace ferry
