#include "ferry/tokenizers/stream_decoder.h"

#include "ferry/core/error.h"
#include "ferry/tokenizers/tokenizer.h"
#include "text.h"

namespace ferry::tokenizers {

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::string text = tokenizer_.decode(ids_, skip_special_);
  const auto ends_incomplete = [&] {
    const auto& r = detail::kReplacementChar;
    return text.size() >= r.size() && text.compare(text.size() - r.size(), r.size(), r) == 0;
  };
  if (text.size() <= prefix_.size() || ends_incomplete()) return "";
  FERRY_CHECK(text.compare(0, prefix_.size(), prefix_) == 0, "decoding the latest ids of ", tokenizer_.source(),
              " changed text already emitted ('", prefix_, "' became '", text.substr(0, prefix_.size()),
              "'): this tokenizer's decoder cannot stream; decode the ids at once instead");
  std::string chunk = text.substr(prefix_.size());
  // The ids just emitted become the context of the next chunk.
  const size_t emitted = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_);
  prefix_index_ = emitted;
  return chunk;
}

std::string StreamDecoder::finish() {
  std::string text = tokenizer_.decode(ids_, skip_special_);
  std::string rest = text.size() > prefix_.size() && text.compare(0, prefix_.size(), prefix_) == 0
                         ? text.substr(prefix_.size())
                         : "";
  reset();
  return rest;
}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
}

}  // namespace ferry::tokenizers
