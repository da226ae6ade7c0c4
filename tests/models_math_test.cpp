// ferry's architectures against straightforward implementations of their published definitions,
// written here independently (per head, in float64, from the weights in the checkpoint files), on
// checkpoints the test writes with ferry's own safetensors writer: Llama 3 rope scaling with GQA,
// Mistral's sliding window, GPT-2 (Conv1D, learned positions, tied head) stored in float16.

#include "ferry/io/checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/causal_lm.h"
#include "ferry/models/generate.h"
#include "ferry/models/gpt2.h"
#include "ferry/models/llama.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <map>

using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

using Weights = std::map<std::string, at::Tensor>;

// Every tensor of a checkpoint folder, as float64, read with the io layer (not through a model).
Weights read_weights(const std::string& dir) {
  Weights w;
  auto ckpt = ferry::io::Checkpoint::open(dir);
  for (const auto& t : ckpt.tensors()) w[t.name] = ckpt.shard(t.shard).load(t.stored_name).to(at::kDouble);
  return w;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return x / at::sqrt(x.pow(2).mean(-1, true) + eps) * w;
}

// Llama-family causal LM, written from the papers: one query head at a time, rotation of pairs
// (i, i + d/2) by angle p * inv_freq[i], GQA by indexing the key/value head h / (H / KV).
at::Tensor reference_llama(const Weights& w, const ModelConfig& c, const at::Tensor& ids,
                           const std::vector<double>& inv_freq) {
  const int64_t T = ids.size(0), D = c.head_dim, H = c.num_attention_heads, KV = c.num_key_value_heads;
  auto lin = [&](const at::Tensor& x, const std::string& name, bool bias) {
    at::Tensor y = at::matmul(x, w.at(name + ".weight").t());
    return bias ? y + w.at(name + ".bias") : y;
  };
  at::Tensor x = w.at("model.embed_tokens.weight").index_select(0, ids);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    at::Tensor h = rms_norm(x, w.at(p + "input_layernorm.weight"), c.norm_eps);
    bool qkv_bias = c.attention_bias || c.qkv_bias;
    at::Tensor q = lin(h, p + "self_attn.q_proj", qkv_bias), k = lin(h, p + "self_attn.k_proj", qkv_bias),
               v = lin(h, p + "self_attn.v_proj", qkv_bias);
    auto rotate = [&](at::Tensor m) {  // m [T, D]
      at::Tensor out = m.clone();
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < D / 2; ++i) {
          double a = t * inv_freq[i], x1 = m[t][i].item<double>(), x2 = m[t][i + D / 2].item<double>();
          out[t][i] = x1 * std::cos(a) - x2 * std::sin(a);
          out[t][i + D / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      return out;
    };
    std::vector<at::Tensor> heads;
    bool sliding = c.sliding_window && c.sliding_layers[l];
    for (int64_t hd = 0; hd < H; ++hd) {
      int64_t g = hd / (H / KV);
      at::Tensor qh = rotate(q.narrow(1, hd * D, D)), kh = rotate(k.narrow(1, g * D, D)), vh = v.narrow(1, g * D, D);
      at::Tensor scores = at::matmul(qh, kh.t()) / std::sqrt(static_cast<double>(D));
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j)
          if (j > i || (sliding && i - j >= *c.sliding_window)) scores[i][j] = -INFINITY;
      heads.push_back(at::matmul(scores.softmax(-1), vh));
    }
    x = x + lin(at::cat(heads, 1), p + "self_attn.o_proj", c.attention_bias);
    h = rms_norm(x, w.at(p + "post_attention_layernorm.weight"), c.norm_eps);
    at::Tensor gate = lin(h, p + "mlp.gate_proj", c.mlp_bias);
    x = x + lin(gate * at::sigmoid(gate) * lin(h, p + "mlp.up_proj", c.mlp_bias), p + "mlp.down_proj", c.mlp_bias);
  }
  x = rms_norm(x, w.at("model.norm.weight"), c.norm_eps);
  const at::Tensor& head = w.count("lm_head.weight") ? w.at("lm_head.weight") : w.at("model.embed_tokens.weight");
  return at::matmul(x, head.t());
}

// Meta's published llama3 frequency scaling (llama-models apply_scaling), in float64.
std::vector<double> llama3_inv_freq(const RopeConfig& r, int64_t dim) {
  std::vector<double> out;
  double low_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
  double high_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
  for (int64_t i = 0; i < dim; i += 2) {
    double freq = 1.0 / std::pow(r.theta, static_cast<double>(i) / dim);
    double wavelen = 2 * M_PI / freq;
    if (r.type != "llama3" || wavelen < high_wavelen) {
      out.push_back(freq);
    } else if (wavelen > low_wavelen) {
      out.push_back(freq / r.factor);
    } else {
      double smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                      (r.high_freq_factor - r.low_freq_factor);
      out.push_back((1 - smooth) * freq / r.factor + smooth * freq);
    }
  }
  return out;
}

ModelConfig small_llama3(bool tie, bool bias) {
  return parse_config(std::string(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5, "eos_token_id": 2,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "tie_word_embeddings": )") + (tie ? "true" : "false") + R"(, "attention_bias": )" + (bias ? "true" : "false") +
                      R"(, "mlp_bias": )" + (bias ? "true" : "false") + "}");
}

}  // namespace

TEST(ModelsMath, Llama3RopeFrequenciesFollowThePublishedScaling) {
  RopeConfig r;
  r.type = "llama3";
  r.theta = 10000.0;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position_embeddings = 64;  // small, so that all three regimes occur with head_dim 32
  at::Tensor got = rope_inverse_frequencies(r, 32);
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  std::vector<double> want = llama3_inv_freq(r, 32);
  int kept = 0, scaled = 0, smoothed = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double freq = 1.0 / std::pow(10000.0, 2.0 * i / 32);
    EXPECT_NEAR(got[i].item<double>() / want[i], 1.0, 1e-6) << i;
    if (want[i] == freq) ++kept;
    else if (std::abs(want[i] - freq / 8) < 1e-15) ++scaled;
    else ++smoothed;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(smoothed, 0);
  r.type = "default";
  at::Tensor plain = rope_inverse_frequencies(r, 32);
  for (int64_t i = 0; i < 16; ++i) EXPECT_NEAR(plain[i].item<double>(), std::pow(10000.0, -2.0 * i / 32), 1e-7);
}

TEST(ModelsMath, Llama3WithGqaTiedHeadAndBiasesMatchesTheReference) {
  for (bool tie : {false, true}) {
    ModelConfig c = small_llama3(tie, /*bias=*/tie);
    auto model = create_model(c);
    randomize(*model, 11);
    TempDir dir("llama3");
    save_pretrained(*model, dir.str(), 40'000);  // several shards
    EXPECT_TRUE(std::filesystem::exists(dir.path() / "model.safetensors.index.json"));
    auto loaded = load_pretrained(dir.str());
    at::Tensor ids = at::tensor({5, 17, 3, 96, 40, 40, 8, 0, 61, 12}, at::kLong);
    at::Tensor got;
    {
      c10::NoGradGuard g;
      got = loaded->logits(ids.view({1, -1})).squeeze(0);
    }
    Weights w = read_weights(dir.str());
    EXPECT_EQ(w.count("lm_head.weight"), tie ? 0u : 1u);
    at::Tensor want = reference_llama(w, c, ids, llama3_inv_freq(c.rope, c.head_dim));
    EXPECT_LT(max_abs_diff(got, want), 1e-4) << "tie=" << tie;
  }
}

TEST(ModelsMath, MistralSlidingWindowMatchesTheReference) {
  ModelConfig c = parse_config(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 50,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 1, "sliding_window": 3, "rope_theta": 10000.0})");
  auto model = create_model(c);
  randomize(*model, 5);
  TempDir dir("mistral");
  save_pretrained(*model, dir.str());
  auto loaded = load_pretrained(dir.str());
  EXPECT_EQ(loaded->submodule("model.layers.0").class_name(), "MistralDecoderLayer");
  at::Tensor ids = at::tensor({1, 4, 9, 16, 25, 36, 49, 0, 7}, at::kLong);
  Weights w = read_weights(dir.str());
  at::Tensor want = reference_llama(w, c, ids, llama3_inv_freq(c.rope, c.head_dim));
  c10::NoGradGuard g;
  at::Tensor got = loaded->logits(ids.view({1, -1})).squeeze(0);
  EXPECT_LT(max_abs_diff(got, want), 1e-4);
  // The window matters: without it the answer differs.
  ModelConfig full = c;
  full.sliding_window.reset();
  EXPECT_GT(max_abs_diff(got, reference_llama(w, full, ids, llama3_inv_freq(c.rope, c.head_dim))), 1e-3);
  // Incremental decoding through the cache sees the same window.
  auto cache = c10::make_intrusive<KVCache>();
  at::Tensor first = loaded->logits(ids.narrow(0, 0, 5).view({1, -1}), cache);
  std::vector<at::Tensor> steps{first.squeeze(0)};
  for (int64_t t = 5; t < ids.size(0); ++t) steps.push_back(loaded->logits(ids.narrow(0, t, 1).view({1, 1}), cache).squeeze(0));
  EXPECT_LT(max_abs_diff(at::cat(steps, 0), got), 1e-5);
}

// GPT-2 from Radford et al. and the reference TensorFlow code: learned positions, pre-LayerNorm
// blocks, Conv1D (x W + b), gelu with the tanh approximation, lm_head = wte^T.
at::Tensor reference_gpt2(const Weights& w, const ModelConfig& c, const at::Tensor& ids) {
  const int64_t T = ids.size(0), E = c.hidden_size, H = c.num_attention_heads, D = E / H;
  auto ln = [&](const at::Tensor& x, const std::string& n) {
    at::Tensor mu = x.mean(-1, true), var = (x - mu).pow(2).mean(-1, true);
    return (x - mu) / at::sqrt(var + c.norm_eps) * w.at(n + ".weight") + w.at(n + ".bias");
  };
  auto conv = [&](const at::Tensor& x, const std::string& n) { return at::matmul(x, w.at(n + ".weight")) + w.at(n + ".bias"); };
  auto gelu = [](const at::Tensor& x) { return 0.5 * x * (1 + at::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x.pow(3)))); };
  at::Tensor x = w.at("transformer.wte.weight").index_select(0, ids) + w.at("transformer.wpe.weight").narrow(0, 0, T);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "transformer.h." + std::to_string(l) + ".";
    at::Tensor qkv = conv(ln(x, p + "ln_1"), p + "attn.c_attn");
    std::vector<at::Tensor> heads;
    for (int64_t hd = 0; hd < H; ++hd) {
      at::Tensor q = qkv.narrow(1, hd * D, D), k = qkv.narrow(1, E + hd * D, D), v = qkv.narrow(1, 2 * E + hd * D, D);
      at::Tensor s = at::matmul(q, k.t()) / std::sqrt(static_cast<double>(D));
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = i + 1; j < T; ++j) s[i][j] = -INFINITY;
      heads.push_back(at::matmul(s.softmax(-1), v));
    }
    x = x + conv(at::cat(heads, 1), p + "attn.c_proj");
    x = x + conv(gelu(conv(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj");
  }
  return at::matmul(ln(x, "transformer.ln_f"), w.at("transformer.wte.weight").t());
}

TEST(ModelsMath, Gpt2StoredInFloat16MatchesTheReference) {
  ModelConfig c = parse_config(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 71,
    "n_embd": 48, "n_layer": 2, "n_head": 3, "n_positions": 32, "eos_token_id": 70})");
  auto model = create_model(c);
  randomize(*model, 3);
  TempDir dir("gpt2");
  save_pretrained(*model, dir.str(), 30'000, at::kHalf);
  Weights w = read_weights(dir.str());
  EXPECT_EQ(w.count("lm_head.weight"), 0u);  // tied: saved once, as transformers does
  auto file_dtype = ferry::io::Checkpoint::open(dir.str()).at("transformer.h.0.attn.c_attn.weight").dtype;
  EXPECT_EQ(file_dtype, at::kHalf);

  auto loaded = load_pretrained(dir.str(), {at::kFloat});
  EXPECT_EQ(loaded->class_name(), "GPT2LMHeadModel");
  EXPECT_EQ(loaded->submodule("transformer.h.1").class_name(), "GPT2Block");
  EXPECT_EQ(loaded->submodule("transformer.h.1.attn.c_attn").class_name(), "Conv1D");
  EXPECT_TRUE(loaded->submodule("lm_head").parameter("weight").is_same(loaded->submodule("transformer.wte").parameter("weight")));
  at::Tensor ids = at::tensor({3, 70, 0, 12, 12, 44, 9}, at::kLong);
  c10::NoGradGuard g;
  at::Tensor got = loaded->logits(ids.view({1, -1})).squeeze(0);
  EXPECT_LT(max_abs_diff(got, reference_gpt2(w, c, ids)), 1e-4);
  // Positions past n_positions are refused, not silently wrapped.
  std::string msg = error_of([&] { loaded->logits(at::zeros({1, 33}, at::kLong)); });
  EXPECT_NE(msg.find("learned positions for 32 tokens"), std::string::npos) << msg;
}

TEST(ModelsMath, Gpt2SavedFromTheBaseModelLoadsWithTheTransformerPrefix) {
  // The Hub's `gpt2` stores "wte.weight", "h.0.attn.c_attn.weight", ... (saved from GPT2Model);
  // transformers adds the base-model prefix when loading GPT2LMHeadModel, and so does ferry:
  // resident, and with the blocks read in place from the unprefixed file (disk offload).
  ModelConfig c = parse_config(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50,
    "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16})");
  auto model = create_model(c);
  randomize(*model, 4);
  TempDir full("gpt2-full"), base("gpt2-base");
  save_pretrained(*model, full.str());
  ferry::io::NamedTensors stripped;
  ferry::io::SafetensorsFile saved = ferry::io::SafetensorsFile::open(full.str() + "/model.safetensors");
  for (const auto& entry : saved.tensors())
    stripped.emplace_back(entry.name.substr(std::string("transformer.").size()), saved.view(entry.name));
  ferry::io::save_safetensors(base.str() + "/model.safetensors", stripped, {{"format", "pt"}});
  std::filesystem::copy_file(full.str() + "/config.json", base.str() + "/config.json");
  EXPECT_TRUE(ferry::io::Checkpoint::open(base.str()).contains("h.1.mlp.c_fc.weight"));

  at::Tensor ids = at::tensor({3, 7, 0, 12, 44}, at::kLong).view({1, -1});
  c10::NoGradGuard g;
  at::Tensor expected = load_pretrained(full.str())->logits(ids);
  EXPECT_TRUE(at::equal(load_pretrained(base.str())->logits(ids), expected));
  TempDir maps("gpt2-maps");
  const std::string map = maps.str() + "/map.json";
  ferry::DeviceMap{{"transformer.wte", ferry::Placement::cpu()}, {"transformer.wpe", ferry::Placement::cpu()},
                   {"transformer.h", ferry::Placement::disk()}, {"transformer.ln_f", ferry::Placement::cpu()},
                   {"lm_head", ferry::Placement::cpu()}}
      .write_json_file(map);
  LoadModelOptions offloaded;
  offloaded.device_map = map;
  LoadedModel loaded = load_model(base.str(), offloaded);
  EXPECT_GT(loaded.offloaded_bytes_per_forward, 0);
  EXPECT_TRUE(at::equal(loaded.model->logits(ids), expected));
}

TEST(ModelsMath, CachedDecodingEqualsFullForward) {
  for (bool gpt2 : {false, true}) {
    ModelConfig c = gpt2 ? parse_config(R"({"architectures": ["GPT2LMHeadModel"], "vocab_size": 40, "n_embd": 32,
                                          "n_layer": 2, "n_head": 4, "n_positions": 64})")
                         : small_llama3(false, false);
    auto model = create_model(c);
    randomize(*model, 9);
    at::Tensor ids = at::randint(0, 40, {2, 9}, at::kLong);
    c10::NoGradGuard g;
    at::Tensor full = model->logits(ids);
    auto cache = c10::make_intrusive<KVCache>();
    std::vector<at::Tensor> parts{model->logits(ids.narrow(1, 0, 4), cache)};
    for (int64_t t = 4; t < 9; ++t) parts.push_back(model->logits(ids.narrow(1, t, 1), cache));
    EXPECT_LT(max_abs_diff(at::cat(parts, 1), full), 1e-5) << (gpt2 ? "gpt2" : "llama");
    EXPECT_EQ(cache->seq_length(0), 9);
    EXPECT_EQ(cache->num_layers(), 2);
    EXPECT_EQ(cache->keys(1).device(), at::Device(at::kCPU));
  }
}

// The cache appends in place: what update() returns equals the concatenation of everything given,
// with reserve() no step makes a new buffer, and past the room a layer's buffer doubles.
TEST(ModelsMath, KVCacheAppendsInPlaceAndGrowsWhenFull) {
  // {room reserved, buffers made for 16 positions, the last buffer's room}: room for the whole run
  // makes one; none makes 5 (the prompt), then 10, then 20; too little (12) makes 12, then 24.
  for (auto [reserved, buffers, room] : std::vector<std::array<int64_t, 3>>{{16, 1, 16}, {0, 3, 20}, {12, 2, 24}}) {
    KVCache cache;
    cache.reserve(reserved);
    std::vector<at::Tensor> keys, values;
    const void* buffer = nullptr;
    int64_t new_buffers = 0;
    for (int64_t step = 0; step < 12; ++step) {
      const int64_t n = step == 0 ? 5 : 1;  // a prompt of 5, then a token at a time
      keys.push_back(at::randn({2, 3, n, 4}));
      values.push_back(at::randn({2, 3, n, 4}));
      auto [k, v] = cache.update(0, keys.back(), values.back());
      EXPECT_TRUE(at::equal(k, at::cat(keys, 2))) << "step " << step;
      EXPECT_TRUE(at::equal(v, at::cat(values, 2))) << "step " << step;
      EXPECT_TRUE(at::equal(cache.keys(0), k));
      if (k.data_ptr() != buffer) ++new_buffers, buffer = k.data_ptr();
    }
    EXPECT_EQ(cache.seq_length(0), 16);
    EXPECT_EQ(new_buffers, buffers) << "reserved " << reserved;
    EXPECT_EQ(cache.nbytes(), uint64_t(2 * 2 * 3 * room * 4 * sizeof(float))) << "reserved " << reserved;
    cache.clear();
    EXPECT_EQ(cache.seq_length(0), 0);
    EXPECT_FALSE(cache.keys(0).defined());
  }
}

// Prompts of different lengths in one batch (left padding, an attention mask, positions per row):
// every row's logits, prompt and decode steps, equal running it alone, and so do its tokens. Each
// architecture: the Llama and Qwen2 fixtures, Mixtral (routing sees the padding's tokens too, which
// must not leak into the real rows), Mistral with a sliding window shorter than the prompts, GPT-2.
TEST(ModelsMath, PromptsOfDifferentLengthsMatchRunningAlone) {
  std::vector<std::pair<std::string, std::shared_ptr<CausalLM>>> models;
  // In float32 (tiny_qwen2 is stored in bfloat16, whose rounding differs with the batch's shape).
  for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_mixtral"})
    models.emplace_back(name, load_pretrained(fixture(name), {at::kFloat}));
  ModelConfig mistral = parse_config(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 50,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 1, "sliding_window": 3, "rope_theta": 10000.0})");
  ModelConfig gpt2 = parse_config(R"({"architectures": ["GPT2LMHeadModel"], "vocab_size": 50, "n_embd": 32,
    "n_layer": 2, "n_head": 4, "n_positions": 64})");
  for (const auto& [name, c] : {std::pair{"mistral, window 3", mistral}, std::pair{"gpt2", gpt2}}) {
    auto m = create_model(c);
    randomize(*m, 11);
    models.emplace_back(name, m);
  }
  const std::vector<std::vector<int64_t>> prompts{{5, 9, 2, 7, 11, 3, 8}, {4, 1, 6}, {10, 12, 14, 16, 13}};
  c10::NoGradGuard no_grad;
  for (const auto& [name, model] : models) {
    SCOPED_TRACE(name);
    PaddedBatch batch = left_pad(prompts, /*pad_id=*/0);
    ASSERT_EQ(batch.input_ids.sizes(), at::IntArrayRef({3, 7}));
    EXPECT_EQ(batch.attention_mask[1].sum().item<int64_t>(), 3);
    EXPECT_TRUE(at::equal(positions_from_mask(batch.attention_mask)[1], at::tensor({1, 1, 1, 1, 0, 1, 2}, at::kLong)));
    // Prefill, then three decode steps fed each row's own greedy token.
    at::Tensor mask = batch.attention_mask;
    auto batch_cache = c10::make_intrusive<KVCache>();
    std::vector<at::Tensor> batch_steps{model->logits(batch.input_ids, batch_cache, 0, mask, positions_from_mask(mask))};
    for (int step = 0; step < 3; ++step) {
      at::Tensor next = batch_steps.back().select(1, batch_steps.back().size(1) - 1).argmax(-1).view({3, 1});
      mask = at::cat({mask, at::ones({3, 1}, at::kLong)}, 1);
      batch_steps.push_back(model->logits(next, batch_cache, 0, mask, positions_from_mask(mask).narrow(1, mask.size(1) - 1, 1)));
    }
    for (size_t r = 0; r < prompts.size(); ++r) {
      const auto n = static_cast<int64_t>(prompts[r].size());
      auto cache = c10::make_intrusive<KVCache>();
      at::Tensor alone = model->logits(at::tensor(prompts[r], at::kLong).view({1, -1}), cache);
      EXPECT_LT(max_abs_diff(alone[0], batch_steps[0][static_cast<int64_t>(r)].narrow(0, 7 - n, n)), 1e-5) << "row " << r;
      for (int step = 0; step < 3; ++step) {
        at::Tensor next = alone.select(1, alone.size(1) - 1).argmax(-1).view({1, 1});
        alone = model->logits(next, cache);
        EXPECT_LT(max_abs_diff(alone[0], batch_steps[static_cast<size_t>(step) + 1][static_cast<int64_t>(r)]), 1e-5)
            << "row " << r << ", decode step " << step;
      }
    }
    // generate(): the batch's tokens are each prompt's tokens alone.
    GenerationConfig g;
    g.max_new_tokens = 6;
    at::Tensor together = generate(*model, batch.input_ids, g, batch.attention_mask).sequences;
    for (size_t r = 0; r < prompts.size(); ++r) {
      at::Tensor alone = generate(*model, at::tensor(prompts[r], at::kLong).view({1, -1}), g).sequences;
      EXPECT_TRUE(at::equal(together[static_cast<int64_t>(r)].narrow(0, 7, 6), alone[0].narrow(0, alone.size(1) - 6, 6)))
          << "row " << r;
    }
    // The prompt in chunks of 3 and of 1 positions (each attending to the cache of the ones before,
    // with the mask so far): the same tokens and the same logits at every real (not padding) position.
    GenerationConfig whole = g;
    whole.return_prompt_logits = true;
    const GenerationOutput reference = generate(*model, batch.input_ids, whole, batch.attention_mask);
    const at::Tensor real = batch.attention_mask.unsqueeze(-1).to(at::kFloat);
    for (int64_t chunk : {1, 3}) {
      GenerationConfig chunked = whole;
      chunked.prefill_chunk = chunk;
      const GenerationOutput out = generate(*model, batch.input_ids, chunked, batch.attention_mask);
      EXPECT_TRUE(at::equal(out.sequences, reference.sequences)) << "prefill in chunks of " << chunk;
      ASSERT_EQ(out.prompt_logits.sizes(), reference.prompt_logits.sizes());
      EXPECT_LT(max_abs_diff(out.prompt_logits * real, reference.prompt_logits * real), 1e-5) << "prefill in chunks of " << chunk;
    }
  }
  // A mask that does not fit is refused with both shapes; so is a prompt of padding only.
  auto model = models.front().second;
  PaddedBatch batch = left_pad(prompts, 0);
  GenerationConfig g;
  std::string msg = error_of([&] { generate(*model, batch.input_ids, g, batch.attention_mask.narrow(1, 0, 5)); });
  EXPECT_NE(msg.find("attention_mask is [3, 5] but input_ids is [3, 7]"), std::string::npos) << msg;
  at::Tensor hollow = batch.attention_mask.clone();
  hollow[1].zero_();
  msg = error_of([&] { generate(*model, batch.input_ids, g, hollow); });
  EXPECT_NE(msg.find("prompt 1 is all padding"), std::string::npos) << msg;
}

TEST(ModelsMath, SamplingFollowsTransformersWarpers) {
  at::Tensor logits = at::tensor({1.0, 2.0, 3.0, 4.0, 5.0}).view({1, 5});
  GenerationConfig g;
  g.do_sample = true;
  g.top_k = 2;
  at::Tensor p = sampling_probabilities(logits, g);
  EXPECT_EQ(p.gt(0).sum().item<int64_t>(), 2);
  EXPECT_NEAR(p[0][4].item<double>(), 1 / (1 + std::exp(-1.0)), 1e-6);
  g.top_k = 0;
  g.top_p = 0.5;  // the top token alone holds 0.64
  EXPECT_EQ(sampling_probabilities(logits, g).gt(0).sum().item<int64_t>(), 1);
  g.top_p = 0.7;  // needs the top two (0.64 + 0.23)
  EXPECT_EQ(sampling_probabilities(logits, g).gt(0).sum().item<int64_t>(), 2);
  g.top_p = 1.0;
  g.temperature = 2.0;
  EXPECT_LT(max_abs_diff(sampling_probabilities(logits, g), (logits / 2).softmax(-1)), 1e-7);
}

TEST(ModelsMath, GenerationSeedsTopKOneAndEos) {
  ModelConfig c = small_llama3(false, false);
  auto model = create_model(c);
  randomize(*model, 21);
  at::Tensor ids = at::tensor({5, 6, 7, 9, 10, 11}, at::kLong).view({2, 3});
  GenerationConfig greedy;
  greedy.max_new_tokens = 6;
  at::Tensor want = generate(*model, ids, greedy).sequences;
  EXPECT_EQ(want.sizes(), (at::IntArrayRef{2, 9}));

  GenerationConfig s = greedy;
  s.do_sample = true;
  s.top_k = 1;  // sampling among one token is greedy
  s.temperature = 0.7;
  EXPECT_TRUE(at::equal(generate(*model, ids, s).sequences, want));

  s.top_k = 0;
  s.temperature = 5.0;
  s.seed = 123;
  at::Tensor a = generate(*model, ids, s).sequences, b = generate(*model, ids, s).sequences;
  EXPECT_TRUE(at::equal(a, b));
  s.seed = 124;
  EXPECT_FALSE(at::equal(a, generate(*model, ids, s).sequences));

  // EOS: the first sequence ends at its 2nd new token, is padded after; the batch stops when all end.
  GenerationConfig e = greedy;
  e.eos_token_ids = {want[0][4].item<int64_t>()};
  e.pad_token_id = 0;
  GenerationOutput out = generate(*model, ids, e);
  EXPECT_EQ(out.sequences[0][4].item<int64_t>(), e.eos_token_ids[0]);
  if (out.sequences.size(1) > 5) {
    EXPECT_EQ(out.sequences[0][5].item<int64_t>(), 0);
  }
  e.eos_token_ids = {want[0][3].item<int64_t>(), want[1][3].item<int64_t>()};
  out = generate(*model, ids, e);
  EXPECT_EQ(out.sequences.size(1), 4);  // both ended at the first new token
  EXPECT_EQ(out.new_tokens, 1);

  std::string msg = error_of([&] {
    GenerationConfig bad;
    bad.do_sample = true;
    bad.top_p = 1.5;
    generate(*model, ids, bad);
  });
  EXPECT_NE(msg.find("top_p must be in (0, 1], got 1.5"), std::string::npos) << msg;
  msg = error_of([&] {
    GenerationConfig bad;
    bad.do_sample = true;
    bad.temperature = 0;
    generate(*model, ids, bad);
  });
  EXPECT_NE(msg.find("temperature must be > 0"), std::string::npos) << msg;
}

TEST(ModelsMath, UnsupportedArchitectureIsRefusedByTheFactory) {
  ModelConfig c = small_llama3(false, false);
  c.architecture = "FalconForCausalLM";
  EXPECT_NE(error_of([&] { create_model(c); }).find("architecture 'FalconForCausalLM' is not supported"),
            std::string::npos);
}
