#pragma once
// The BPE model of tokenizer.json (internal): vocabulary, ranked merges, byte fallback and unknown
// tokens, applied to one pre-tokenized word at a time as the `tokenizers` library's BPE does.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ferry/io/json.h"

namespace ferry::tokenizers::detail {

class Bpe {
 public:
  /// Reads tokenizer.json's "model"; `source` names the file in messages.
  static Bpe load(const io::JsonValue& model, const std::string& source);

  /// Appends the ids of `word`.
  void encode_word(std::string_view word, std::vector<int64_t>& ids) const;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  size_t vocab_size() const { return vocab_.size(); }

 private:
  struct Merge {
    uint32_t rank;
    int64_t id;
  };
  static uint64_t key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<const std::string*> by_id_;  // id -> token (nullptr for an id with no token)
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int64_t> unk_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  int64_t byte_ids_[256];  // <0xXX> tokens, -1 where absent
};

}  // namespace ferry::tokenizers::detail
