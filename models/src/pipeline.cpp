#include "ferry/models/pipeline.h"

#include "ferry/core/error.h"
#include "ferry/plan/model_tree.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

namespace ferry::models {
namespace {

// Positions whose logits the model returns: CausalLM's logits_to_keep (0 or more than the
// sequence: all).
int64_t kept_positions(const Args& args, int64_t seq) {
  const c10::IValue* keep = args.find("logits_to_keep");
  const int64_t n = keep && keep->isInt() ? keep->toInt() : 0;
  return n > 0 && n < seq ? n : seq;
}

}  // namespace

DeviceMap stage_device_map(const CausalLM& model, const PipelineStage& stage) {
  const Placement here = Placement::cpu(), elsewhere = Placement::disk();
  const std::vector<std::string> layers = model.decoder_layer_names(), inputs = model.input_module_names();
  const std::string embeddings = model.input_embeddings_name();
  DeviceMap map;
  // Walk down from the root: a decoder layer or an input module (the embeddings) is one entry; a
  // module holding some of them is opened; any other module is one entry (the final norm, the head,
  // rotary embeddings).
  auto holds = [&](const std::string& name) {
    const std::string prefix = name + ".";
    for (const auto& names : {&inputs, &layers})
      for (const auto& n : *names)
        if (n.rfind(prefix, 0) == 0) return true;
    return false;
  };
  std::function<void(const Module&, const std::string&)> visit = [&](const Module& m, const std::string& path) {
    for (const auto& [name, child] : m.children()) {
      const std::string full = path.empty() ? name : path + "." + name;
      if (const auto it = std::find(layers.begin(), layers.end(), full); it != layers.end()) {
        const auto i = static_cast<int64_t>(it - layers.begin());
        map.set(full, i >= stage.first_layer && i < stage.end_layer ? here : elsewhere);
      } else if (std::find(inputs.begin(), inputs.end(), full) != inputs.end()) {
        const bool tied_head = full == embeddings && model.config().tie_word_embeddings;
        map.set(full, stage.is_first() || (tied_head && stage.is_last()) ? here : elsewhere);
      } else if (holds(full)) {
        visit(*child, full);
      } else {
        const bool weightless = child->named_parameters().empty();
        map.set(full, stage.is_last() || weightless ? here : elsewhere);
      }
    }
  };
  visit(model, "");
  return map;
}

DeviceMap plan_stage_device_map(CausalLM& model, const PipelineStage& stage, Strategy strategy,
                                PlanOptions options) {
  DeviceMap whole = stage_device_map(model, stage);
  // The stage's own tensors, in the model's order, are the tree the planner sees.
  auto in_stage = [&](const std::string& name) {
    const auto p = whole.placement_of(name);
    return p && !p->is_disk();
  };
  std::vector<NamedTreeTensor> tensors;
  for (const auto& [name, t] : model.named_parameters())
    if (in_stage(name)) tensors.push_back({name, TreeTensor{t.sizes().vec(), t.scalar_type()}});
  for (const auto& [name, t] : model.named_buffers())
    if (in_stage(name)) tensors.push_back({name, TreeTensor{t.sizes().vec(), t.scalar_type()}});
  if (tensors.empty()) return whole;
  const ModelTree tree = model_tree_from_named_tensors(std::move(tensors), /*natural_order=*/false);
  for (const std::string& layer : model.decoder_layer_names()) options.no_split.patterns.push_back(layer);
  options.experts_per_token = model.config().num_experts_per_tok;
  const DeviceMap planned = plan_device_map(tree, strategy, options);
  // Each of the stage's entries takes the planned placement covering it, or is replaced by the
  // planned entries inside it (a mixture of experts' layer planned by the expert).
  DeviceMap out;
  for (const auto& [key, placement] : whole) {
    if (placement.is_disk()) {
      out.set(key, placement);
      continue;
    }
    if (const auto covering = planned.owner_of(key)) {
      out.set(key, planned.at(*covering));
      continue;
    }
    const size_t before = out.size();
    for (const auto& [inner, p] : planned)
      if (inner.rfind(key + ".", 0) == 0) out.set(inner, p);
    if (out.size() == before) out.set(key, placement);  // nothing to plan in it (no tensors)
  }
  return out;
}

struct PipelineModel::Shared {
  std::mutex compute;  // one channel computes the stage at a time
  std::mutex counters;
  int64_t bytes_sent = 0, bytes_received = 0;
  double communication_seconds = 0;
  double compute_seconds = 0;
  std::function<int()> stop_requested;
  bool logits_on_every_rank = true;
};

PipelineModel::PipelineModel(std::shared_ptr<CausalLM> stage_model, std::shared_ptr<ProcessGroup> group,
                             PipelineStage stage)
    : CausalLM(stage_model->class_name(), stage_model->config()),
      inner_(std::move(stage_model)),
      group_(std::move(group)),
      stage_(stage),
      shared_(std::make_shared<Shared>()) {
  FERRY_CHECK(group_ && group_->size() == stage_.world_size && group_->rank() == stage_.rank, "the process group (rank ",
              group_ ? group_->rank() : -1, " of ", group_ ? group_->size() : 0, ") does not match the stage (rank ",
              stage_.rank, " of ", stage_.world_size, ")");
  // The same names as the model it wraps (generate() looks up the input embeddings by name).
  for (const auto& [name, child] : inner_->children()) register_module(name, child);
}

int64_t PipelineModel::bytes_sent() const {
  std::lock_guard<std::mutex> lock(shared_->counters);
  return shared_->bytes_sent;
}

int64_t PipelineModel::bytes_received() const {
  std::lock_guard<std::mutex> lock(shared_->counters);
  return shared_->bytes_received;
}

double PipelineModel::communication_seconds() const {
  std::lock_guard<std::mutex> lock(shared_->counters);
  return shared_->communication_seconds;
}

double PipelineModel::compute_seconds() const {
  std::lock_guard<std::mutex> lock(shared_->counters);
  return shared_->compute_seconds;
}

void PipelineModel::set_stop_request(std::function<int()> requested) {
  std::lock_guard<std::mutex> lock(shared_->counters);
  shared_->stop_requested = std::move(requested);
}

std::shared_ptr<PipelineModel> PipelineModel::channel(int channel, int channels) const {
  FERRY_CHECK(channels >= 1 && channel >= 0 && channel < channels, "channel ", channel, " of ", channels);
  auto view = std::make_shared<PipelineModel>(inner_, group_, stage_);
  view->shared_ = shared_;
  view->channel_ = channel;
  view->channels_ = channels;
  return view;
}

void PipelineModel::communicate(int step, const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    f();
  } catch (const Error& e) {  // which step (of which group) a lost rank stopped
    throw e.in(e.function(), "step " + std::to_string(step) +
                                 (channels_ > 1 ? " of group " + std::to_string(channel_ + 1) + " of " +
                                                      std::to_string(channels_)
                                                : std::string()) +
                                 ": ");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(shared_->counters);
  shared_->communication_seconds += seconds;
}

std::optional<PipelineModel::LinkTiming> PipelineModel::measure_link(int64_t rows, int rounds) {
  FERRY_CHECK(rows >= 1 && rounds >= 1, "measure_link: rows ", rows, " and rounds ", rounds, " must be >= 1");
  const ModelConfig& c = config();
  at::Tensor message = at::zeros({rows * c.hidden_size + 1}, at::TensorOptions().dtype(c.dtype));
  constexpr int kFirstTag = 1 << 30;  // above any step's tags (step x channels + channel)
  if (!stage_.is_first())
    for (int i = 0; i < rounds; ++i) {
      group_->recv(message, stage_.rank - 1, kFirstTag + i);
      group_->send(message, stage_.rank - 1, kFirstTag + i);
    }
  if (stage_.is_last()) return std::nullopt;
  std::vector<double> one_way;
  for (int i = 0; i < rounds; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    group_->send(message, stage_.rank + 1, kFirstTag + i);
    group_->recv(message, stage_.rank + 1, kFirstTag + i);
    one_way.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 2);
  }
  std::nth_element(one_way.begin(), one_way.begin() + rounds / 2, one_way.end());
  return LinkTiming{static_cast<int64_t>(message.nbytes()), one_way[static_cast<size_t>(rounds / 2)]};
}

void PipelineModel::receive_message(at::Tensor& message, int from, int step, int tag) {
  communicate(step, [&] { group_->recv(message, from, tag); });
  std::lock_guard<std::mutex> lock(shared_->counters);
  shared_->bytes_received += static_cast<int64_t>(message.nbytes());
}

void PipelineModel::set_logits_on_every_rank(bool every_rank) {
  std::lock_guard<std::mutex> lock(shared_->counters);
  shared_->logits_on_every_rank = every_rank;
}

bool PipelineModel::logits_on_every_rank() const {
  std::lock_guard<std::mutex> lock(shared_->counters);
  return shared_->logits_on_every_rank;
}

c10::IValue PipelineModel::forward(Args& args) {
  using Clock = std::chrono::steady_clock;
  const at::Tensor ids = args.tensor(0);
  const int64_t batch = ids.size(0), seq = ids.size(1);
  const ModelConfig& c = config();
  const auto options = at::TensorOptions().dtype(c.dtype);
  const int step = step_++;
  const int tag = step * channels_ + channel_;  // each channel its own tags
  const bool every_rank = logits_on_every_rank();
  Args stage_args = args;
  stage_args.set("first_layer", stage_.first_layer);
  stage_args.set("end_layer", stage_.end_layer);
  auto compute = [&] {
    std::lock_guard<std::mutex> lock(shared_->compute);
    const auto t0 = Clock::now();
    at::Tensor out = (*inner_)(std::move(stage_args)).toTensor().to(at::kCPU).contiguous();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::lock_guard<std::mutex> count(shared_->counters);
    shared_->compute_seconds += seconds;
    return out;
  };
  // Every message carries one more element after the tensor's: the largest stop code of the ranks
  // it has passed (set_stop_request), so the last stage's answer to this step is every rank's.
  std::function<int()> requested;
  {
    std::lock_guard<std::mutex> lock(shared_->counters);
    requested = shared_->stop_requested;
  }
  int stop = requested ? requested() : 0;
  auto receive = [&](std::vector<int64_t> sizes, int from) {
    int64_t n = 1;
    for (int64_t s : sizes) n *= s;
    at::Tensor message = at::empty({n + 1}, options);
    receive_message(message, from, step, tag);
    stop = std::max(stop, static_cast<int>(message[n].item<double>()));
    return message.narrow(0, 0, n).view(sizes);
  };
  auto message = [&](const at::Tensor& t) {
    return at::cat({t.reshape(-1), at::full({1}, static_cast<double>(stop), t.options())});
  };
  if (!stage_.is_first()) stage_args.set("hidden_states", receive({batch, seq, c.hidden_size}, stage_.rank - 1));
  const int64_t keep = kept_positions(args, seq);
  at::Tensor logits;
  if (!stage_.is_last()) {
    stage_args.set("return_hidden_states", true);
    const at::Tensor hidden = message(compute());
    communicate(step, [&] { group_->send(hidden, stage_.rank + 1, tag); });
    {
      std::lock_guard<std::mutex> lock(shared_->counters);
      shared_->bytes_sent += static_cast<int64_t>(hidden.nbytes());
    }
    if (!every_rank) return at::empty({batch, keep, 0}, options);  // the tokens come in choose_next_tokens
    logits = receive({batch, keep, c.vocab_size}, stage_.world_size - 1);
  } else {
    logits = compute();
    if (every_rank) {
      const at::Tensor answer = message(logits);
      communicate(step, [&] {
        for (int r = 0; r < stage_.world_size - 1; ++r) group_->send(answer, r, tag);
      });
    }
  }
  agreed_stop_ = stop;
  return logits;
}

at::Tensor PipelineModel::choose_next_tokens(const at::Tensor& logits,
                                             const std::function<at::Tensor(const at::Tensor&)>& choose) {
  if (logits_on_every_rank()) return choose(logits);  // every rank chooses the same from the same logits
  // The last stage chooses and sends the tokens, with the stop code every rank agreed on, under the
  // tag of the step whose forward made `logits`.
  const int step = step_ - 1, tag = step * channels_ + channel_;
  const int64_t batch = logits.size(0);
  if (stage_.is_last()) {
    const at::Tensor tokens = choose(logits).to(at::kCPU).to(at::kLong).contiguous();
    const at::Tensor message = at::cat({tokens.reshape(-1), at::full({1}, static_cast<int64_t>(agreed_stop_), at::kLong)});
    communicate(step, [&] {
      for (int r = 0; r < stage_.world_size - 1; ++r) group_->send(message, r, tag);
    });
    return tokens;
  }
  at::Tensor message = at::empty({batch + 1}, at::kLong);
  receive_message(message, stage_.world_size - 1, step, tag);
  agreed_stop_ = static_cast<int>(message[batch].item<int64_t>());
  return message.narrow(0, 0, batch);
}

std::vector<int64_t> in_flight_group_starts(int64_t rows, int64_t micro_batches) {
  const int64_t groups = std::clamp<int64_t>(micro_batches, 1, std::max<int64_t>(rows, 1));
  std::vector<int64_t> starts;
  for (int64_t i = 0; i <= groups; ++i) starts.push_back(rows * i / groups);
  return starts;
}

GenerationOutput generate_in_flight(PipelineModel& model, const at::Tensor& input_ids, const GenerationConfig& g,
                                    const at::Tensor& attention_mask, int micro_batches) {
  const int64_t rows = input_ids.size(0);
  const std::vector<int64_t> first_row = in_flight_group_starts(rows, micro_batches);
  const int groups = static_cast<int>(first_row.size()) - 1;
  if (groups == 1) return generate(model, input_ids, g, attention_mask);
  FERRY_CHECK(!g.on_step && !g.stopping_criteria, "generate_in_flight: on_step and stopping_criteria would see one "
              "group's rows of ", groups, "; give none (or generate() one batch)");
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  std::vector<GenerationOutput> outs(static_cast<size_t>(groups));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(groups));
  std::vector<std::shared_ptr<PipelineModel>> channels(static_cast<size_t>(groups));
  std::vector<std::thread> threads;
  for (int i = 0; i < groups; ++i) {
    threads.emplace_back([&, i] {
      try {
        const int64_t begin = first_row[static_cast<size_t>(i)], n = first_row[static_cast<size_t>(i) + 1] - begin;
        GenerationConfig own = g;
        own.seed = g.seed + static_cast<uint64_t>(i);
        const std::shared_ptr<PipelineModel> channel = model.channel(i, groups);
        channels[static_cast<size_t>(i)] = channel;
        own.stopping_criteria = [&channel = *channel](const at::Tensor&) { return channel.agreed_stop() != 0; };
        outs[static_cast<size_t>(i)] = generate(*channel, input_ids.narrow(0, begin, n), own,
                                                attention_mask.defined() ? attention_mask.narrow(0, begin, n) : at::Tensor());
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (const auto& channel : channels) model.agreed_stop_ = std::max(model.agreed_stop_, channel->agreed_stop());

  // One batch again: groups that stopped early (every row at EOS) are padded as generate() pads;
  // after an agreed stop, every group keeps the tokens all of them made (they stop a step apart).
  GenerationOutput out;
  int64_t longest = 0, shortest = std::numeric_limits<int64_t>::max();
  for (const auto& o : outs) longest = std::max(longest, o.sequences.size(1)), shortest = std::min(shortest, o.sequences.size(1));
  if (model.agreed_stop_ != 0) {
    for (auto& o : outs) o.sequences = o.sequences.narrow(1, 0, shortest);
    longest = shortest;
  }
  const int64_t pad = g.pad_token_id.value_or(g.eos_token_ids.empty() ? 0 : g.eos_token_ids[0]);
  std::vector<at::Tensor> sequences, prompt_logits;
  for (const auto& o : outs) {
    at::Tensor s = o.sequences;
    if (s.size(1) < longest) s = at::cat({s, at::full({s.size(0), longest - s.size(1)}, pad, s.options())}, 1);
    sequences.push_back(s);
    if (o.prompt_logits.defined()) prompt_logits.push_back(o.prompt_logits);
    out.new_tokens = std::max(out.new_tokens, o.new_tokens);
    out.prefill_seconds = std::max(out.prefill_seconds, o.prefill_seconds);
    out.prefill_forwards = std::max(out.prefill_forwards, o.prefill_forwards);
    out.decode_steps = std::max(out.decode_steps, o.decode_steps);
  }
  if (model.agreed_stop_ != 0) out.new_tokens = std::min(out.new_tokens, shortest - input_ids.size(1));
  out.sequences = at::cat(sequences, 0);
  if (prompt_logits.size() == outs.size()) out.prompt_logits = at::cat(prompt_logits, 0);
  out.decode_seconds = std::max(0.0, std::chrono::duration<double>(Clock::now() - start).count() - out.prefill_seconds);
  return out;
}

}  // namespace ferry::models
