// make_big_llama OUT_DIR [--layers N] [--hidden H] [--kv-heads K] [--vocab V] [--dtype float32|bfloat16] [--shard-mb M]
//
// Writes a random, Llama-shaped Hugging Face checkpoint (config.json, sharded safetensors and
// model.safetensors.index.json) of a given size, one shard at a time, so that a model larger than
// the memory budget can be run with `ferry run OUT_DIR --device-map auto --max-memory cpu=...`.
// Default: 6 layers of a 2048-wide Llama (GQA 16/4 heads, intermediate 5632, vocab 32000) in
// float32, about 1.5 GB. --kv-heads (default hidden / 512) sets the heads of the KV cache (of 128
// dimensions each; as many as the query heads, hidden / 128, for multi-head attention), --vocab the
// vocabulary (default 32000): a small model with a large KV cache is how bench/long_context.py
// makes the caches outweigh the weights.

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/causal_lm.h"
#include "ferry/nn/init_on_device.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

using namespace ferry::models;

int main(int argc, char** argv) {
  try {
    std::string out;
    int64_t layers = 6, hidden = 2048, shard_mb = 400, kv_heads = 0, vocab = 32000;
    std::string dtype = "float32";
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        FERRY_CHECK(i + 1 < argc, a, " needs a value");
        return argv[++i];
      };
      if (a == "--layers") layers = std::stoll(next());
      else if (a == "--hidden") hidden = std::stoll(next());
      else if (a == "--kv-heads") kv_heads = std::stoll(next());
      else if (a == "--vocab") vocab = std::stoll(next());
      else if (a == "--dtype") dtype = next();
      else if (a == "--shard-mb") shard_mb = std::stoll(next());
      else if (a == "-h" || a == "--help") {
        std::cout << "usage: make_big_llama OUT_DIR [--layers 6] [--hidden 2048] [--kv-heads HIDDEN/512] [--vocab 32000] "
                     "[--dtype float32|bfloat16] [--shard-mb 400]\n";
        return 0;
      } else out = a;
    }
    FERRY_CHECK(!out.empty(), "give the output folder: make_big_llama OUT_DIR");
    ModelConfig c;
    c.architecture = "LlamaForCausalLM";
    c.model_type = "llama";
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.intermediate_size = hidden * 11 / 4;
    c.num_hidden_layers = layers;
    c.num_attention_heads = hidden / 128;
    c.num_key_value_heads = kv_heads > 0 ? kv_heads : std::max<int64_t>(1, hidden / 512);
    FERRY_CHECK(hidden % 128 == 0 && c.num_attention_heads % c.num_key_value_heads == 0, "--hidden ", hidden,
                " gives ", c.num_attention_heads, " heads of 128, which ", c.num_key_value_heads,
                " KV heads must divide (--kv-heads)");
    c.head_dim = 128;
    c.max_position_embeddings = 4096;
    c.norm_eps = 1e-5;
    c.rope.theta = 500000.0;
    c.sliding_layers.assign(layers, false);
    c.eos_token_ids = {2};
    c.bos_token_id = 1;
    c.dtype = ferry::parse_dtype(dtype);

    std::shared_ptr<CausalLM> model;
    {
      auto guard = ferry::init_empty_weights();
      model = create_model(c);
    }
    std::filesystem::create_directories(out);
    // Shards by size, in state-dict order, then write each with fresh random values.
    std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
    uint64_t shard_bytes = 0, total = 0, max_shard = static_cast<uint64_t>(shard_mb) << 20;
    for (auto& [name, t] : model->state_dict()) {
      uint64_t b = t.numel() * t.element_size();
      if (!shards.back().empty() && shard_bytes + b > max_shard) {
        shards.emplace_back();
        shard_bytes = 0;
      }
      shards.back().emplace_back(name, t);
      shard_bytes += b;
      total += b;
    }
    at::manual_seed(1234);
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      char file[64];
      std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      ferry::io::NamedTensors tensors;
      for (auto& [name, meta] : shards[i]) {
        bool norm = name.find("norm") != std::string::npos;
        at::Tensor v = norm ? at::ones(meta.sizes(), at::kFloat) : at::randn(meta.sizes(), at::kFloat).mul_(0.02);
        tensors.emplace_back(name, v.to(meta.scalar_type()));
        weight_map[name] = file;
      }
      ferry::io::save_safetensors((std::filesystem::path(out) / file).string(), tensors, {{"format", "pt"}});
      std::fprintf(stderr, "wrote %s (%zu tensors)\n", file, tensors.size());
    }
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream(std::filesystem::path(out) / "model.safetensors.index.json") << index.dump(2);
    std::ofstream(std::filesystem::path(out) / "config.json") << config_to_json(c);
    std::cout << "wrote a " << ferry::format_bytes(static_cast<double>(total)) << " " << dtype << " Llama ("
              << layers << " layers, hidden " << hidden << ") in " << shards.size() << " shards to " << out << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "make_big_llama: error: " << e.what() << "\n";
    return 1;
  }
}
