#pragma once
// The tokenizer.model backend of ferry::tokenizers::Tokenizer (internal): a SentencePiece model run by
// the sentencepiece library (Debian's libsentencepiece-dev), with the special-token handling, BOS/EOS
// and decoding rules of Hugging Face's slow `LlamaTokenizer` (legacy mode) around it. See tokenizer.h
// for what is supported and refused.
#include "sentencepiece_library.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ferry::tokenizers::detail {

/// A loaded tokenizer.model (with tokenizer_config.json's settings when one was given). Immutable
/// once loaded; every method is safe to call from several threads at once.
class SentencePieceModel {
 public:
  /// Loads the SentencePiece model at `model_path` and, unless `config_path` is empty, the
  /// tokenizer_config.json at `config_path` (add_bos_token, add_eos_token, added_tokens_decoder, the
  /// special tokens, legacy). Throws ferry::Error naming the file for a damaged file and for settings
  /// ferry does not reproduce.
  static std::shared_ptr<const SentencePieceModel> load(const std::string& model_path,
                                                        const std::string& config_path);
  ~SentencePieceModel();

  /// The ids of `text` (valid UTF-8): each stretch between special and added tokens through
  /// SentencePiece's Encode; with `add_special_tokens`, BOS and/or EOS as the settings say.
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const;
  /// The text of `ids`: each run of ordinary ids through SentencePiece's Decode, special and added
  /// tokens as their text (special ones left out with `skip_special_tokens`).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;

  /// The id of a piece or added token, if there is one (never the unknown id for an unknown piece).
  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// The piece ("▁Hello", "<0x0A>", "<s>") or added token of an id, if there is one.
  std::optional<std::string> id_to_token(int64_t id) const;
  /// Whether `id` is special: a control piece (<s>, </s>, <pad>), the unknown piece, or a token that
  /// tokenizer_config.json marks special.
  bool is_special(int64_t id) const;
  /// The model's pieces plus the added tokens beyond them.
  size_t vocab_size() const;

 private:
  SentencePieceModel();

  /// A token matched in the text before SentencePiece sees it (special pieces, added tokens).
  struct Token {
    std::string content;
    int64_t id;
    bool special;
  };

  std::string source_;  // the tokenizer.model's path, for messages
  std::unique_ptr<SentencePieceLibrary> sp_;  // the library, in its own module
  int64_t pieces_ = 0;  // SentencePiece's vocabulary: ids [0, pieces_)
  std::vector<Token> tokens_;                               // matched in the text
  std::unordered_map<std::string, size_t> token_by_content_;
  std::unordered_map<int64_t, size_t> token_by_id_;
  std::vector<std::vector<size_t>> by_first_byte_;  // first byte -> tokens_ indices, longest first
  std::optional<int64_t> bos_, eos_;                // added by encode(add_special_tokens)
};

}  // namespace ferry::tokenizers::detail
