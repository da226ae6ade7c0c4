#include "ferry/tokenizers/stream_decoder.h"

#include "ferry/core/error.h"
#include "ferry/tokenizers/tokenizer.h"
#include "text.h"

#include <algorithm>

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
  // Text already emitted can change: byte-fallback bytes that a later byte shows not to form UTF-8
  // all become U+FFFD in a whole decode ("\x01" then "<0xCD>" decode to "\uFFFD\uFFFD"). What was
  // printed stays printed; the new ids' text is emitted on its own, and the stream goes on (its text
  // then differs from decode() in those bytes only).
  std::string chunk = text.compare(0, prefix_.size(), prefix_) == 0
                          ? text.substr(prefix_.size())
                          : tokenizer_.decode(std::vector<int64_t>(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_), ids_.end()),
                                              skip_special_);
  // The ids just emitted become the context of the next chunk, unless they decode to nothing on their
  // own (a lone "▁" that SentencePiece strips at the start of a text, a skipped special token): then
  // the context keeps the ids before them too, so that the next token is not taken for the start.
  const std::vector<int64_t> emitted(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_), ids_.end());
  std::string emitted_text = tokenizer_.decode(emitted, skip_special_);
  if (emitted_text.empty()) {
    prefix_ = std::move(text);
    prefix_index_ = ids_.size();
  } else {
    ids_ = emitted;
    prefix_ = std::move(emitted_text);
    prefix_index_ = ids_.size();
  }
  return chunk;
}

std::string StreamDecoder::finish() {
  std::string text = tokenizer_.decode(ids_, skip_special_);
  std::string rest;
  if (text.compare(0, prefix_.size(), prefix_) == 0)
    rest = text.substr(std::min(prefix_.size(), text.size()));
  else  // emitted text changed (see push): the ids not emitted yet, on their own
    rest = tokenizer_.decode(std::vector<int64_t>(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_), ids_.end()),
                             skip_special_);
  reset();
  return rest;
}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
}

}  // namespace ferry::tokenizers
