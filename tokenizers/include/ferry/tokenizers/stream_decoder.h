#pragma once
/// \file
/// Streaming decode: ids arrive one at a time (from generation) and leave as text chunks that are
/// always whole UTF-8 characters, whose concatenation is what Tokenizer::decode gives for all the ids.
///
///     ferry::tokenizers::StreamDecoder stream(tokenizer);
///     for (int64_t id : ids) std::cout << stream.push(id) << std::flush;  // "" while a character is
///     std::cout << stream.finish();                                       // incomplete
///
/// It decodes a short window of the latest ids (those not emitted yet and those of the chunk before,
/// for context such as a leading space that a decoder strips only at the start) and emits what the
/// window's text gained, as the `tokenizers` library's DecodeStream does. A window
/// whose text ends in U+FFFD is held back: the bytes of a character split across byte tokens (an
/// emoji as four <0xXX> tokens, say) are not complete yet. Byte tokens that never form a character
/// are the exception to "the concatenation is decode()": a whole decode turns every byte of such a run
/// into U+FFFD, even one that was already shown as itself; the stream cannot take back what it emitted,
/// so it goes on with the new ids' text (the `tokenizers` library's DecodeStream raises an error there).

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/tokenizers/tokenizer.h"

namespace ferry::tokenizers {

/// Turns ids into UTF-8-safe text chunks, one id at a time. It shares `tokenizer` (a cheap copy).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);

  /// Adds one id; returns the text it completes (often one token's text, "" while held back).
  std::string push(int64_t id);
  /// Returns what is still held back (incomplete bytes decode to U+FFFD, as decode does) and starts over.
  std::string finish();
  /// Forgets every id pushed (a new sequence).
  void reset();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::vector<int64_t> ids_;  // the window: context ids (emitted) then ids not emitted yet
  std::string prefix_;         // the text of the window's ids when the last chunk was emitted
  size_t prefix_index_ = 0;    // ids_[0, prefix_index_) are context only
};

}  // namespace ferry::tokenizers
