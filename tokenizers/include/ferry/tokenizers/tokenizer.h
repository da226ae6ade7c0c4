#pragma once
/// \file
/// Hugging Face tokenizers in C++: `tokenizer.json` (the `tokenizers` library's format) loaded and run
/// with the same results, ids and text, as the `tokenizers` library from PyPI; `tokenizer.model`
/// (SentencePiece) where a model has no tokenizer.json (see the end of this comment).
///
///     auto tok = ferry::tokenizers::Tokenizer::from_model_dir("Llama-3.2-1B");  // its tokenizer.json
///     std::vector<int64_t> ids = tok.encode("Hello world");   // [128000, 9906, 1917]: BOS added
///     std::string text = tok.decode(ids);                      // "Hello world": special tokens skipped
///     ferry::tokenizers::StreamDecoder stream(tok);            // generated ids -> UTF-8-safe chunks
///     for (int64_t id : generated) std::cout << stream.push(id) << std::flush;
///     std::cout << stream.finish();
///
/// Supported (what Llama 2/3, Mistral, Qwen2/2.5/3 and GPT-2 use); anything else is refused by name with
/// the file's path, never approximated:
/// - model: BPE (vocab; merges as "a b" strings or [a, b] pairs; byte_fallback, fuse_unk, unk_token,
///   ignore_merges; not continuing_subword_prefix, end_of_word_suffix or dropout);
/// - added tokens (special or not), matched before pre-tokenization, leftmost and longest first, never
///   split: those marked "normalized" in the normalized text as their normalized content, the others in
///   the raw text, as the library does (not lstrip, rstrip or single_word);
/// - normalizers: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD;
/// - pre-tokenizers: ByteLevel, Split (Regex or String; every behaviour; invert), Metaspace, Sequence;
///   regexes are run by PCRE2 with Unicode properties (the `tokenizers` library uses Oniguruma);
/// - post-processors: TemplateProcessing (single sequences), ByteLevel, Sequence;
/// - decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence.
///
/// Text is UTF-8. The `tokenizers` library takes a Python `str`, which cannot hold bytes that are not
/// UTF-8, so it has no answer for them; ferry refuses such input with an error naming the byte offset.
/// Decoding is as lossy as the library's: bytes that do not form UTF-8 (a byte token cut off, say)
/// become U+FFFD, exactly where the library puts them. Added tokens go through the decoder with the
/// others, as in the library.
///
/// tokenizer.model (SentencePiece, for model folders without a tokenizer.json: from_model_dir falls
/// back to it, from_file takes a path ending in ".model") is run by the sentencepiece library
/// (Debian's libsentencepiece), unigram and BPE models alike, with every normalisation and option the
/// model sets; its results are those of the `sentencepiece` Python package (through 0.2.1: 0.2.2 breaks
/// exact ties between unigram segmentations of equal score differently) under the rules of Hugging
/// Face's slow tokenizers in legacy mode (`LlamaTokenizer(legacy=True)`), which are:
/// - special tokens: SentencePiece's control pieces (<s>, </s>, <pad>) and unknown piece (<unk>), and
///   the tokens tokenizer_config.json names (bos/eos/unk/pad_token, additional_special_tokens) or marks
///   special in added_tokens_decoder; added_tokens_decoder may add tokens beyond the model's ids;
/// - encode: special and added tokens are matched in the text first (leftmost, longest first, never
///   split); each stretch of text between them is encoded by SentencePiece on its own (so each gets
///   the model's dummy prefix "▁"); with add_special_tokens, BOS when add_bos_token (default true) and
///   EOS when add_eos_token (default false), as LlamaTokenizer. User-defined pieces are matched by
///   SentencePiece itself and are not special;
/// - decode: special tokens are left out (skip_special_tokens) or written as their text, as are added
///   tokens; each run of the other ids between them is decoded by SentencePiece (without the spaces the
///   slow tokenizers' legacy decode puts around special and added tokens);
/// - tokenizer_config.json is read when it lies beside the tokenizer.model; refused: "legacy": false,
///   and added tokens with lstrip, rstrip or single_word. Other keys (chat_template, model_max_length,
///   clean_up_tokenization_spaces, tokenizer_class...) do not change tokenization here.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::tokenizers {

/// A loaded tokenizer.json or tokenizer.model. Immutable once loaded: copies share it and every method
/// is safe to call from several threads at once.
class Tokenizer {
 public:
  /// Loads a tokenizer.json, or a SentencePiece model when `path` ends in ".model" (with the
  /// tokenizer_config.json beside it, if there is one). Throws ferry::Error naming the file for a
  /// damaged file (with line and column for JSON) and for every piece or setting ferry does not
  /// support ("normalizer 'BertNormalizer' is not supported").
  static Tokenizer from_file(const std::string& path);
  /// Loads `dir`/tokenizer.json (a model folder as the Hub has it), or `dir`/tokenizer.model when
  /// there is no tokenizer.json; an error naming both when neither is there.
  static Tokenizer from_model_dir(const std::string& dir);
  /// Loads a tokenizer.json's text; `source` names it in messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  /// The ids of `text` (UTF-8; else ferry::Error with the offset of the first bad byte). With
  /// `add_special_tokens`, the post-processor adds what the model expects (Llama's BOS, say).
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  /// The text of `ids`. With `skip_special_tokens`, added tokens marked special are left out. An id
  /// beyond the vocabulary is an error (the `tokenizers` library drops it silently).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  /// The id of a token (of the model's vocabulary or an added token), if there is one.
  std::optional<int64_t> token_to_id(std::string_view token) const;
  /// The token (as stored: byte-level characters, "▁" for spaces, "<0x0A>") of an id, if there is one.
  std::optional<std::string> id_to_token(int64_t id) const;
  /// Whether `id` is an added token marked special (skipped by decode's skip_special_tokens); for a
  /// tokenizer.model, also its control pieces and unknown piece.
  bool is_special(int64_t id) const;
  /// The number of ids: the model's vocabulary and the added tokens (one more than the largest id when
  /// the ids are contiguous), as `get_vocab_size(with_added_tokens=True)`; for a tokenizer.model, its
  /// pieces and the added tokens beyond them.
  size_t vocab_size() const;
  /// The file (or source) it was loaded from.
  const std::string& source() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

}  // namespace ferry::tokenizers

#include "ferry/tokenizers/stream_decoder.h"  // IWYU pragma: export
