// libferry_sentencepiece.so: the sentencepiece library behind ferry's SentencePieceLibrary interface,
// in a module of its own. See Note [sentencepiece in its own scope] in tokenizers/src/sentencepiece_library.h.
#include "../src/sentencepiece_library.h"

#include <sentencepiece_processor.h>

namespace {

using ferry::tokenizers::detail::SentencePieceLibrary;

class Processor final : public SentencePieceLibrary {
 public:
  sentencepiece::SentencePieceProcessor sp;
  int piece_size() const override { return sp.GetPieceSize(); }
  bool is_control(int id) const override { return sp.IsControl(id); }
  bool is_unknown(int id) const override { return sp.IsUnknown(id); }
  std::string id_to_piece(int id) const override { return sp.IdToPiece(id); }
  int piece_to_id(std::string_view piece) const override { return sp.PieceToId(piece); }
  int bos_id() const override { return sp.bos_id(); }
  int eos_id() const override { return sp.eos_id(); }
  std::string encode(std::string_view text, std::vector<int>* ids) const override {
    const auto status = sp.Encode(text, ids);
    return status.ok() ? std::string() : status.ToString();
  }
  std::string decode(const std::vector<int>& ids, std::string* text) const override {
    const auto status = sp.Decode(ids, text);
    return status.ok() ? std::string() : status.ToString();
  }
};

}  // namespace

/// The module's one entry point: a loaded model, or null with `*error` set to the library's message.
extern "C" __attribute__((visibility("default"))) SentencePieceLibrary* ferry_sentencepiece_open(const char* path,
                                                                                                std::string* error) {
  auto p = std::make_unique<Processor>();
  const auto status = p->sp.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return p.release();
}
