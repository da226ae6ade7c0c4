// Tokenizer throughput: encode and decode of the hard-case corpus with each family's tokenizer.json,
// one thread.
//
// Why: issue 16's target is at least the throughput of Hugging Face's `tokenizers` library, one thread,
// same corpus; bench/tokenizer_vs_hf.py runs this and the library side by side.
//
// What: the corpus is the texts of tests/data/tokenizers/<family>.reference.json, one encode call per
// text, repeated until about 2 MB have been encoded per round; the best of --rounds rounds is reported
// as MB/s of UTF-8 input and tokens/s, then decode of those ids (one call per text).
//
//   cmake --build build --target bench_tokenizer
//   ./build/bench_tokenizer [--data tests/data/tokenizers] [--rounds 5] [--json]
#include "ferry/io/json.h"
#include "ferry/tokenizers/tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::string data = FERRY_SOURCE_DIR "/tests/data/tokenizers";
  int rounds = 5;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
    else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--json")) json = true;
    else {
      std::fprintf(stderr, "usage: %s [--data DIR] [--rounds N] [--json]\n", argv[0]);
      return 2;
    }
  }
  using clock = std::chrono::steady_clock;
  if (json) std::printf("[");
  bool first = true;
  for (const char* family : {"gpt2", "llama3", "qwen2", "llama2", "mistral"}) {
    const auto tok = ferry::tokenizers::Tokenizer::from_file(data + "/" + family + ".tokenizer.json");
    const auto ref = ferry::io::read_json_file(data + "/" + family + ".reference.json");
    std::vector<std::string> texts;
    for (ferry::io::JsonValue c : ref.root().at("cases", "reference").elements())
      texts.emplace_back(c.at("text", "case").string("text"));
    size_t corpus_bytes = 0;
    for (const auto& t : texts) corpus_bytes += t.size();
    const size_t repeats = std::max<size_t>(1, 2'000'000 / std::max<size_t>(1, corpus_bytes));
    double best_encode = 1e30, best_decode = 1e30;
    size_t tokens = 0;
    std::vector<std::vector<int64_t>> ids(texts.size());
    for (int r = 0; r < rounds; ++r) {
      tokens = 0;
      auto t0 = clock::now();
      for (size_t k = 0; k < repeats; ++k)
        for (size_t i = 0; i < texts.size(); ++i) {
          ids[i] = tok.encode(texts[i]);
          tokens += ids[i].size();
        }
      best_encode = std::min(best_encode, std::chrono::duration<double>(clock::now() - t0).count());
      size_t chars = 0;
      t0 = clock::now();
      for (size_t k = 0; k < repeats; ++k)
        for (const auto& x : ids) chars += tok.decode(x).size();
      best_decode = std::min(best_decode, std::chrono::duration<double>(clock::now() - t0).count());
      if (chars == 0) std::printf(" ");  // (keeps the decode from being optimised away)
    }
    const double mb = static_cast<double>(corpus_bytes * repeats) / 1e6;
    if (json) {
      std::printf("%s{\"family\": \"%s\", \"encode_mb_per_s\": %.2f, \"encode_tokens_per_s\": %.0f, "
                  "\"decode_tokens_per_s\": %.0f, \"tokens\": %zu}",
                  first ? "" : ", ", family, mb / best_encode, tokens / best_encode, tokens / best_decode, tokens);
    } else {
      std::printf("%-8s encode %7.2f MB/s %10.0f tokens/s   decode %10.0f tokens/s   (%zu tokens a round)\n", family,
                  mb / best_encode, tokens / best_encode, tokens / best_decode, tokens);
    }
    first = false;
  }
  if (json) std::printf("]\n");
}
