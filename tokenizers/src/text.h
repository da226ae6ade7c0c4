#pragma once
// Text primitives of the tokenizers (internal): UTF-8 checks, lossy decoding as Rust's
// String::from_utf8_lossy, GPT-2's byte-level alphabet, Unicode normal forms (utf8proc) and the
// regexes (PCRE2).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::tokenizers::detail {

/// The offset of the first byte that is not part of valid UTF-8, or npos when all of it is.
size_t find_invalid_utf8(std::string_view s);
/// The length of the UTF-8 character starting at s[i] (s is valid UTF-8).
inline size_t utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
/// `bytes` as UTF-8 with each maximal invalid subsequence replaced by U+FFFD, as Rust's from_utf8_lossy.
std::string utf8_lossy(std::string_view bytes);
/// U+FFFD, the replacement character.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

/// GPT-2's byte-level alphabet: the UTF-8 text of the character that stands for each byte.
const std::string& byte_to_char(unsigned char b);
/// The byte a byte-level character (one UTF-8 character at s[i], its length in *len) stands for, or
/// -1 when it is not one.
int char_to_byte(std::string_view s, size_t i, size_t* len);

/// Unicode normal forms through utf8proc.
enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize_unicode(std::string_view s, NormalForm form);

/// A compiled PCRE2 pattern (UTF, Unicode properties, JIT when available). Thread-safe to match.
class Regex {
 public:
  /// Throws ferry::Error naming `where` when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  /// Every non-empty match in `s`, left to right, as [start, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace ferry::tokenizers::detail
