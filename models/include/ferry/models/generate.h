#pragma once
/// \file
/// Text generation for a CausalLM: greedy or sampled decoding with a KV cache, as transformers'
/// `generate` does it (temperature, then top-k, then top-p, then a multinomial draw).
///
///     GenerationConfig g;
///     g.max_new_tokens = 32;
///     g.eos_token_ids = model->config().eos_token_ids;     // stop when every sequence has ended
///     g.do_sample = true; g.temperature = 0.8; g.top_p = 0.9; g.seed = 7;
///     GenerationOutput out = generate(*model, prompt_ids, g);   // prompt_ids [batch, len], int64
///     out.sequences;        // [batch, len + new tokens], the prompts followed by the new tokens
///
/// A batch holds prompts of equal length (no padding). Generation runs under NoGradGuard; the cache
/// keeps each layer's keys and values on that layer's execution device, so dispatched and offloaded
/// models work unchanged. Sampling draws on the CPU from a generator seeded with `seed`, so a seed
/// gives the same tokens whatever devices the model runs on.

#include "ferry/models/causal_lm.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace ferry::models {

/// What and how to generate.
struct GenerationConfig {
  /// Tokens to add to each prompt (at most; fewer when every sequence ends early).
  int64_t max_new_tokens = 20;
  /// false: greedy (argmax). true: sample from the processed distribution.
  bool do_sample = false;
  /// Sampling only: logits are divided by this (> 0).
  double temperature = 1.0;
  /// Sampling only: keep the k most likely tokens (0: all).
  int64_t top_k = 0;
  /// Sampling only: keep the smallest set of most likely tokens whose probability reaches top_p (1: all).
  double top_p = 1.0;
  /// Sampling only: seed of the CPU generator that draws the tokens.
  uint64_t seed = 0;
  /// A sequence ends after producing one of these; generation stops when all have ended. Empty:
  /// never stop early.
  std::vector<int64_t> eos_token_ids;
  /// Written after a sequence has ended (default: the first eos id), as transformers pads.
  c10::optional<int64_t> pad_token_id;
  /// Also return the float32 logits of every prompt position (costs a full-vocabulary projection
  /// of the whole prompt).
  bool return_prompt_logits = false;
  /// Called after each step with the step's new tokens [batch] (CPU, int64).
  std::function<void(int64_t step, const at::Tensor& tokens)> on_step;
};

/// What generate() produced, with its timings.
struct GenerationOutput {
  /// [batch, prompt + new] int64 on the CPU.
  at::Tensor sequences;
  /// [batch, prompt, vocab] float32 on the CPU when return_prompt_logits, else undefined.
  at::Tensor prompt_logits;
  /// Tokens added per sequence.
  int64_t new_tokens = 0;
  /// The prompt's forward (and the first token), in seconds.
  double prefill_seconds = 0;
  /// Every later step, in seconds; decode_steps of them.
  double decode_seconds = 0;
  int64_t decode_steps = 0;
};

/// Generates from `input_ids` ([batch, len], int64, any device; every id inside the vocabulary).
/// Throws ferry::Error for a bad prompt (empty, not 2-D, an id outside [0, vocab_size)) or bad
/// options (temperature <= 0, top_p outside (0, 1], negative top_k or max_new_tokens).
GenerationOutput generate(CausalLM& model, const at::Tensor& input_ids, const GenerationConfig& config);

/// Checks `input_ids` against the model's vocabulary; the message names the offending id and its
/// position. generate() calls it.
void check_input_ids(const CausalLM& model, const at::Tensor& input_ids);

/// One step of transformers' sampling pipeline on [batch, vocab] float32 logits: temperature, top-k,
/// top-p, then softmax. Returns the probabilities (exposed for tests).
at::Tensor sampling_probabilities(const at::Tensor& logits, const GenerationConfig& config);

}  // namespace ferry::models
