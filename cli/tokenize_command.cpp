// ferry tokenize MODEL_DIR_OR_TOKENIZER_JSON --text "...": text to ids and pieces (or --decode ids to
// text), as llama.cpp's llama-tokenize does. Runs in `ferry` itself: tokenizers need no LibTorch.

#include "commands.h"

#include "ferry/core/error.h"
#include "ferry/io/json.h"
#include "ferry/tokenizers/tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

namespace ferry::cli {
namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  std::string file;
  std::string decode;
  bool json = false;
  bool ids_only = false;
  bool no_add_special = false;
  bool keep_special = false;
};

tokenizers::Tokenizer load(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return tokenizers::Tokenizer::from_model_dir(path);
  return tokenizers::Tokenizer::from_file(path);
}

// A piece's text for a terminal: control characters escaped, the rest as it is.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::string t = text;
  for (char& c : t)
    if (c == ',' || c == '[' || c == ']') c = ' ';
  std::istringstream in(t);
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FERRY_CHECK(used == word.size() && v >= 0, "--decode takes token ids separated by spaces or commas, e.g. \"1 450 3681\"; '",
                word, "' is not a non-negative integer");
    ids.push_back(v);
  }
  return ids;
}

void run_tokenize(const TokenizeArgs& args) {
  FERRY_CHECK(!args.text.empty() + !args.file.empty() + !args.decode.empty() == 1,
              "give exactly one of --text TEXT, --file PATH or --decode \"IDS\"");
  const tokenizers::Tokenizer tok = load(args.model);
  std::string out;
  if (!args.decode.empty()) {
    const std::vector<int64_t> ids = parse_ids(args.decode);
    const std::string text = tok.decode(ids, !args.keep_special);
    if (args.json) {
      out = "{\"ids\": [";
      for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
      out += "], \"text\": ";
      io::append_json_string(out, text);
      out += "}\n";
    } else {
      out = text + "\n";
    }
    std::cout << out;
    return;
  }
  std::string text = args.text;
  if (!args.file.empty()) {
    std::ifstream in(args.file, std::ios::binary);
    FERRY_CHECK(in, "cannot read --file ", args.file);
    std::ostringstream s;
    s << in.rdbuf();
    text = s.str();
  }
  const std::vector<int64_t> ids = tok.encode(text, !args.no_add_special);
  if (args.ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
    std::cout << out << '\n';
    return;
  }
  // Each token's text in context (a leading space that a decoder strips only at the start is kept),
  // "" for the bytes of a character until its last byte, which carries the whole character.
  std::vector<std::string> pieces;
  tokenizers::StreamDecoder stream(tok, /*skip_special_tokens=*/false);
  for (int64_t id : ids) pieces.push_back(stream.push(id));
  if (!pieces.empty()) pieces.back() += stream.finish();
  if (args.json) {
    out = "{\"ids\": [";
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
    out += "], \"tokens\": [";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ", ";
      io::append_json_string(out, tok.id_to_token(ids[i]).value_or(""));
    }
    out += "], \"pieces\": [";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ", ";
      io::append_json_string(out, pieces[i]);
    }
    out += "], \"count\": " + std::to_string(ids.size()) + "}\n";
    std::cout << out;
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    const std::string& piece = pieces[i];
    const std::string token = tok.id_to_token(id).value_or("");
    char num[32];
    std::snprintf(num, sizeof num, "%8lld", static_cast<long long>(id));
    out += std::string(num) + " -> '" + printable(piece) + "'";
    if (token != piece) out += "  (" + printable(token) + (tok.is_special(id) ? ", special" : "") + ")";
    else if (tok.is_special(id)) out += "  (special)";
    out += '\n';
  }
  out += std::to_string(ids.size()) + " tokens\n";
  std::cout << out;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", kTokenizeDescription);
  cmd->add_option("model", args->model, "A model folder with a tokenizer.json (or tokenizer.model), or either file")->required();
  cmd->add_option("--text", args->text, "The text to tokenize (UTF-8)");
  cmd->add_option("--file", args->file, "Tokenize the contents of this file instead");
  cmd->add_option("--decode", args->decode, "Decode these ids instead, e.g. \"1 450 3681\"");
  cmd->add_flag("--json", args->json,
                "Print JSON: ids, tokens (as stored) and pieces (their text in context; the bytes of a character split "
                "over tokens come with its last byte), or with --decode ids and text");
  cmd->add_flag("--ids", args->ids_only, "Print only the ids, space-separated (as `ferry run --ids` takes them)");
  cmd->add_flag("--no-add-special", args->no_add_special,
                "Do not add the special tokens the post-processor adds (such as BOS)");
  cmd->add_flag("--keep-special", args->keep_special, "With --decode: keep special tokens in the text");
  cmd->callback([args]() { run_tokenize(*args); });
}

}  // namespace ferry::cli
