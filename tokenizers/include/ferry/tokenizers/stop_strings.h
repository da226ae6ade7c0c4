#pragma once
/// \file
/// Stop strings for streamed text: generation ends when the text contains one of them, and the text
/// shown stops just before it, as llama.cpp's `--reverse-prompt`/server `stop` do. Text that could be
/// the start of a stop string is held back until the next chunk settles it, so nothing is printed
/// that later turns out to belong to a stop string.
///
///     StopStrings stops({"\nUser:"});
///     std::cout << stops.push("Hello.\nUs");   // "Hello." ("\nUs" is held back)
///     std::cout << stops.push("er: hi");       // "" and stops.stopped(): the text ends at "Hello."
///     std::cout << stops.finish();             // "" (what is still held back, when nothing stopped)

#include <string>
#include <string_view>
#include <vector>

namespace ferry::tokenizers {

/// Watches streamed text for stop strings (see the file comment). Chunks are UTF-8 pieces such as
/// StreamDecoder's; held-back text is always a prefix of a stop string, so whole characters stay whole.
class StopStrings {
 public:
  /// `stops`: the strings to stop at (none: every chunk passes straight through). Empty ones are ignored.
  explicit StopStrings(std::vector<std::string> stops = {});
  /// The text that is safe to show now. After a stop string has appeared: "" for ever.
  std::string push(std::string_view chunk);
  /// At the end of generation: the text still held back ("" after a stop string).
  std::string finish();
  /// Whether a stop string has appeared.
  bool stopped() const { return !matched_.empty(); }
  /// The stop string that appeared ("" if none).
  const std::string& matched() const { return matched_; }
  /// All text shown so far (the pushes' and finish's results together).
  const std::string& text() const { return shown_; }
  /// `text` up to the first of the stop strings in it (all of it when none is): the same cut for a
  /// whole decode as push() makes while streaming.
  std::string cut(std::string_view text) const;

 private:
  std::vector<std::string> stops_;
  std::string held_;     // pending text that a stop string may start with
  std::string shown_;
  std::string matched_;
};

}  // namespace ferry::tokenizers
