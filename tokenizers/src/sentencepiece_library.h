#pragma once
// Internal: the sentencepiece library, reached through a module loaded at first use.
//
// Note [sentencepiece in its own scope]: Debian's libsentencepiece carries its own copy of protobuf-lite
// (3.14) and exports every symbol of it; Debian's LibTorch links the system's libprotobuf (3.21). Linked
// into one program, one set of protobuf symbols replaces the other and the process crashes as it starts
// (or aborts on protobuf's version check). So ferry links libsentencepiece into a separate module,
// libferry_sentencepiece.so, and opens it with dlopen(RTLD_LOCAL | RTLD_DEEPBIND) when a tokenizer.model
// is first loaded: the module and its libsentencepiece bind to their own protobuf, and nothing else sees
// it. Programs without LibTorch (`ferry tokenize`) take the same path.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::tokenizers::detail {

/// What ferry uses of a loaded sentencepiece::SentencePieceProcessor (same meanings as its methods).
class SentencePieceLibrary {
 public:
  virtual ~SentencePieceLibrary() = default;
  virtual int piece_size() const = 0;
  virtual bool is_control(int id) const = 0;
  virtual bool is_unknown(int id) const = 0;
  virtual std::string id_to_piece(int id) const = 0;
  /// The unknown id for a piece the model does not have.
  virtual int piece_to_id(std::string_view piece) const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  /// "" when it worked, else the library's message.
  virtual std::string encode(std::string_view text, std::vector<int>* ids) const = 0;
  virtual std::string decode(const std::vector<int>& ids, std::string* text) const = 0;
};

/// Loads the SentencePiece model at `path` through libferry_sentencepiece.so (Note above). Throws
/// ferry::Error naming the file for a damaged one, and saying where it looked when the module is missing.
std::unique_ptr<SentencePieceLibrary> open_sentencepiece_model(const std::string& path);

}  // namespace ferry::tokenizers::detail
