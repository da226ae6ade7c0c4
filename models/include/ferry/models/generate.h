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
/// Prompts of different lengths go in one batch left-padded, with an attention mask, as transformers
/// does it (each row then gives the tokens and, within float rounding, the logits it gives alone):
///
///     PaddedBatch batch = left_pad({{1, 15, 27}, {1, 99}}, /*pad_id=*/0);   // ids [2, 3], mask [2, 3]
///     GenerationOutput out = generate(*model, batch.input_ids, g, batch.attention_mask);
///
/// Generation runs under NoGradGuard; the cache
/// keeps each layer's keys and values on that layer's execution device, so dispatched and offloaded
/// models work unchanged. Sampling draws on the CPU from a generator seeded with `seed`, so a seed
/// gives the same tokens whatever devices the model runs on.

#include "ferry/models/causal_lm.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
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
  /// Prompt positions per forward of the prefill (0: the whole prompt in one forward). Smaller
  /// chunks bound the prefill's activations (a long prompt's attention scores grow with its square)
  /// and, across pipeline ranks, flow through the stages one behind the other: rank 0 runs chunk
  /// k + 1 while rank 1 runs chunk k, so even one prompt keeps every stage busy. The tokens are the
  /// same; the logits differ by rounding (matrices of other shapes).
  int64_t prefill_chunk = 0;
  /// Called after each step with the step's new tokens [batch] (CPU, int64).
  std::function<void(int64_t step, const at::Tensor& tokens)> on_step;
  /// Called after on_step with the sequences so far ([batch, prompt + new], CPU); true ends the
  /// generation there (transformers' StoppingCriteria: a stop string seen in the text, say).
  std::function<bool(const at::Tensor& sequences)> stopping_criteria;
};

/// Prompts of different lengths as one batch: `input_ids` [batch, longest] left-padded with the pad id,
/// `attention_mask` [batch, longest] int64, 1 over each prompt's tokens and 0 over its padding.
struct PaddedBatch {
  at::Tensor input_ids;
  at::Tensor attention_mask;
};

/// Left-pads `prompts` (each non-empty) to the longest with `pad_id`, as transformers' tokenizers do for
/// generation (padding_side="left"): every row's last token is then at the same place.
PaddedBatch left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);

/// Positions of a left-padded batch, as transformers' generate computes them: each row counts from 0
/// at its first token (cumsum(mask) - 1), and padding gets position 1. [batch, len] int64.
at::Tensor positions_from_mask(const at::Tensor& attention_mask);

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
  /// Forwards the prompt took: 1, or one per chunk (GenerationConfig::prefill_chunk).
  int64_t prefill_forwards = 0;
  /// Every later step, in seconds; decode_steps of them.
  double decode_seconds = 0;
  int64_t decode_steps = 0;
};

/// The generation settings a model folder asks for, as transformers' GenerationConfig reads them:
/// its defaults (greedy; when sampling, temperature 1, top-k 50, top-p 1; 20 new tokens), then
/// `dir`/generation_config.json when there is one (do_sample, temperature, top_k, top_p,
/// max_new_tokens, eos_token_id as a number or a list, pad_token_id). EOS and pad ids otherwise come
/// from config.json. Settings ferry does not apply (num_beams > 1, repetition_penalty != 1, ...) are
/// named in a warning rather than ignored silently. A damaged file is a ferry::Error naming it.
GenerationConfig load_generation_config(const std::string& dir, const ModelConfig& config);

/// Generates from `input_ids` ([batch, len], int64, any device; every id inside the vocabulary).
/// `attention_mask` ([batch, len], 1 token / 0 padding; see left_pad) runs prompts of different
/// lengths together; without it every position is a token. Throws ferry::Error for a bad prompt
/// (empty, not 2-D, an id outside [0, vocab_size), a mask of another shape or a row of padding only)
/// or bad options (temperature <= 0, top_p outside (0, 1], negative top_k or max_new_tokens).
GenerationOutput generate(CausalLM& model, const at::Tensor& input_ids, const GenerationConfig& config,
                          const at::Tensor& attention_mask = {});

/// Checks `input_ids` against the model's vocabulary; the message names the offending id and its
/// position. generate() calls it.
void check_input_ids(const CausalLM& model, const at::Tensor& input_ids);

/// One step of transformers' sampling pipeline on [batch, vocab] float32 logits: temperature, top-k,
/// top-p, then softmax. Returns the probabilities (exposed for tests).
at::Tensor sampling_probabilities(const at::Tensor& logits, const GenerationConfig& config);

}  // namespace ferry::models
