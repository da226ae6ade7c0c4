#include "ferry/models/generate.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <limits>

namespace ferry::models {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void check_config(const GenerationConfig& g) {
  FERRY_CHECK(g.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", g.max_new_tokens);
  FERRY_CHECK(g.prefill_chunk >= 0, "prefill_chunk must be >= 0 (0: the whole prompt in one forward), got ",
              g.prefill_chunk);
  if (!g.do_sample) return;
  FERRY_CHECK(g.temperature > 0, "temperature must be > 0 when sampling, got ", g.temperature,
              " (use greedy decoding for temperature 0)");
  FERRY_CHECK(g.top_k >= 0, "top_k must be >= 0 (0 keeps every token), got ", g.top_k);
  FERRY_CHECK(g.top_p > 0 && g.top_p <= 1, "top_p must be in (0, 1], got ", g.top_p);
}

// The device the token ids should start on: the input embeddings' when they hold real memory (a
// resident model on a GPU), else the CPU (a dispatched model's hooks move them).
c10::Device input_device(CausalLM& model) {
  Module& embeddings = model.submodule(model.input_embeddings_name());
  at::Tensor w = embeddings.parameter("weight");
  if (w.defined() && !w.is_meta()) return w.device();
  return c10::Device(c10::kCPU);
}

}  // namespace

void check_input_ids(const CausalLM& model, const at::Tensor& input_ids) {
  FERRY_CHECK(input_ids.defined() && input_ids.dim() == 2, "input_ids must be a [batch, length] tensor, got ",
              input_ids.defined() ? std::to_string(input_ids.dim()) + " dimensions" : "nothing");
  FERRY_CHECK(input_ids.size(0) > 0 && input_ids.size(1) > 0, "input_ids is empty: [", input_ids.size(0), ", ",
              input_ids.size(1), "]; give at least one token per prompt");
  FERRY_CHECK(!at::isFloatingType(input_ids.scalar_type()) && input_ids.scalar_type() != at::kBool,
              "input_ids must hold integers, got ", input_ids.scalar_type());
  at::Tensor ids = input_ids.to(at::kCPU).to(at::kLong).contiguous();
  int64_t vocab = model.config().vocab_size;
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    FERRY_CHECK(p[i] >= 0 && p[i] < vocab, "token id ", p[i], " (prompt ", i / ids.size(1), ", position ",
                i % ids.size(1), ") is outside the vocabulary [0, ", vocab, ") of this ", model.config().architecture);
  }
}

at::Tensor sampling_probabilities(const at::Tensor& logits, const GenerationConfig& g) {
  at::Tensor scores = logits.to(at::kFloat);
  const double filter = -std::numeric_limits<double>::infinity();
  if (g.temperature != 1.0) scores = scores / g.temperature;
  if (g.top_k > 0 && g.top_k < scores.size(-1)) {
    at::Tensor kth = std::get<0>(at::topk(scores, g.top_k, -1)).narrow(-1, g.top_k - 1, 1);
    scores = scores.masked_fill(scores < kth, filter);
  }
  if (g.top_p < 1.0) {
    // transformers' TopPLogitsWarper: drop the least likely tokens whose cumulative probability
    // stays within 1 - top_p, always keeping the most likely one.
    auto [sorted, indices] = at::sort(scores, -1, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(-1).cumsum(-1);
    at::Tensor remove = cumulative <= (1 - g.top_p);
    remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);
    at::Tensor to_remove = remove.scatter(-1, indices, remove);
    scores = scores.masked_fill(to_remove, filter);
  }
  return scores.softmax(-1);
}

PaddedBatch left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id) {
  FERRY_CHECK(!prompts.empty(), "left_pad: no prompts");
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    FERRY_CHECK(!prompts[i].empty(), "left_pad: prompt ", i, " is empty; give at least one token per prompt");
    longest = std::max(longest, prompts[i].size());
  }
  const auto rows = static_cast<int64_t>(prompts.size()), cols = static_cast<int64_t>(longest);
  PaddedBatch batch{at::full({rows, cols}, pad_id, at::kLong), at::zeros({rows, cols}, at::kLong)};
  for (int64_t r = 0; r < rows; ++r) {
    const auto& p = prompts[static_cast<size_t>(r)];
    const auto n = static_cast<int64_t>(p.size());
    batch.input_ids[r].narrow(0, cols - n, n).copy_(at::tensor(p, at::kLong));
    batch.attention_mask[r].narrow(0, cols - n, n).fill_(1);
  }
  return batch;
}

at::Tensor positions_from_mask(const at::Tensor& attention_mask) {
  at::Tensor mask = attention_mask.to(at::kLong);
  return (mask.cumsum(-1) - 1).masked_fill_(mask.eq(0), 1);
}

GenerationOutput generate(CausalLM& model, const at::Tensor& input_ids, const GenerationConfig& g,
                          const at::Tensor& attention_mask) {
  check_config(g);
  check_input_ids(model, input_ids);
  at::Tensor mask;  // [batch, positions so far] on the CPU; undefined when nothing is padding
  if (attention_mask.defined()) {
    FERRY_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask is ", attention_mask.sizes(),
                " but input_ids is ", input_ids.sizes(), "; give one 0/1 per prompt position");
    mask = attention_mask.to(at::kCPU).to(at::kLong).contiguous();
    FERRY_CHECK(mask.eq(0).logical_or(mask.eq(1)).all().item<bool>(), "attention_mask must hold only 0 and 1");
    at::Tensor empty_rows = mask.sum(-1).eq(0).nonzero();
    FERRY_CHECK(empty_rows.numel() == 0, "attention_mask: prompt ", empty_rows.numel() ? empty_rows[0][0].item<int64_t>() : 0,
                " is all padding; give at least one token per prompt");
    if (mask.eq(1).all().item<bool>()) mask = at::Tensor();  // no padding: the plain path, bit for bit
  }
  c10::NoGradGuard no_grad;
  GenerationOutput out;
  c10::Device device = input_device(model);
  int64_t batch = input_ids.size(0);
  at::Tensor sequences = input_ids.to(at::kCPU).to(at::kLong).contiguous();
  auto cache = c10::make_intrusive<KVCache>();
  cache->reserve(sequences.size(1) + g.max_new_tokens);  // every position of the run: no step copies the cache
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(g.seed);
  at::Tensor eos = at::tensor(g.eos_token_ids, at::kLong);
  int64_t pad = g.pad_token_id.value_or(g.eos_token_ids.empty() ? 0 : g.eos_token_ids[0]);
  at::Tensor unfinished = at::ones({batch}, at::kBool);

  auto choose = [&](const at::Tensor& step_logits) {
    at::Tensor last = step_logits.select(1, step_logits.size(1) - 1).to(at::kCPU).to(at::kFloat);
    if (!g.do_sample) return last.argmax(-1);
    return at::multinomial(sampling_probabilities(last, g), 1, false, generator).squeeze(1);
  };

  auto start = Clock::now();
  if (g.max_new_tokens == 0 && !g.return_prompt_logits) {
    out.sequences = sequences;
    return out;
  }
  // With padding, every forward gets the mask of all positions so far and each row's own positions:
  // the prompt's from the mask, then each step's one past the row's last (no cumsum per step).
  at::Tensor positions = mask.defined() ? positions_from_mask(mask) : at::Tensor();
  // `ids` after the cache; with padding, the mask of every position up to theirs and their positions.
  auto forward = [&](const at::Tensor& ids, int64_t keep, const at::Tensor& mask_so_far, const at::Tensor& ids_positions) {
    if (!mask.defined()) return model.logits(ids.to(device), cache, keep);
    return model.logits(ids.to(device), cache, keep, mask_so_far.to(device), ids_positions.to(device));
  };
  // The prompt, whole or in chunks of g.prefill_chunk positions, each attending to the cache of the
  // ones before.
  const int64_t prompt = sequences.size(1);
  const int64_t chunk = g.prefill_chunk > 0 ? std::min(g.prefill_chunk, prompt) : prompt;
  const int64_t keep = g.return_prompt_logits ? 0 : 1;
  at::Tensor logits;
  std::vector<at::Tensor> prompt_logits;
  for (int64_t begin = 0; begin < prompt; begin += chunk) {
    const int64_t n = std::min(chunk, prompt - begin);
    logits = mask.defined() ? forward(sequences.narrow(1, begin, n), keep, mask.narrow(1, 0, begin + n),
                                      positions.narrow(1, begin, n))
                            : forward(sequences.narrow(1, begin, n), keep, {}, {});
    if (g.return_prompt_logits) prompt_logits.push_back(logits.to(at::kCPU).to(at::kFloat));
    ++out.prefill_forwards;
  }
  if (g.return_prompt_logits) out.prompt_logits = at::cat(prompt_logits, 1);
  for (int64_t step = 0; step < g.max_new_tokens; ++step) {
    auto step_start = Clock::now();
    if (step > 0) {
      if (mask.defined()) {
        mask = at::cat({mask, at::ones({batch, 1}, at::kLong)}, 1);
        positions = positions.narrow(1, positions.size(1) - 1, 1) + 1;
      }
      logits = forward(sequences.narrow(1, sequences.size(1) - 1, 1), 1, mask, positions);
    }
    at::Tensor next = model.choose_next_tokens(logits, choose);
    if (eos.numel() > 0) {
      next = at::where(unfinished, next, at::full_like(next, pad));
      unfinished = unfinished.logical_and(at::isin(next, eos).logical_not());
    }
    sequences = at::cat({sequences, next.view({batch, 1})}, 1);
    ++out.new_tokens;
    if (step == 0) {
      out.prefill_seconds = seconds_since(start);
    } else {
      out.decode_seconds += seconds_since(step_start);
      ++out.decode_steps;
    }
    if (g.on_step) g.on_step(step, next);
    if (g.stopping_criteria && g.stopping_criteria(sequences)) break;
    if (eos.numel() > 0 && !unfinished.any().item<bool>()) break;
  }
  if (g.max_new_tokens == 0) out.prefill_seconds = seconds_since(start);
  out.sequences = sequences;
  return out;
}

}  // namespace ferry::models
