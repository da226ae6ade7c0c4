// ferry run MODEL_DIR --prompt "text" | --ids "1 2 3;4 5": load (resident or dispatched), generate, report.

#include "commands.h"
#include "interrupt.h"
#include "model_session.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/io_counters.h"
#include "ferry/io/regular_file.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pipeline.h"
#include "ferry/tokenizers/stop_strings.h"
#include "ferry/tokenizers/stream_decoder.h"
#include "ferry/tokenizers/tokenizer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

namespace ferry::cli {
namespace {

struct RunOptions {
  LoadFlags load;
  SamplingFlags sampling;
  std::string ids;
  std::string ids_file;
  bool json = false;
  std::string logits_out;
  std::string prompt;
  bool keep_special = false;
  int micro_batches = 0;  // 0: the number of ranks
};

constexpr int64_t kDefaultMaxNewTokens = 20;

// "1 2 3;4 5" -> the prompts' ids (any lengths; generate() left-pads them). `source` names where the
// text came from in errors: --ids, or --ids-file and its path.
std::vector<std::vector<int64_t>> parse_ids(const std::string& text, const std::string& source = "--ids") {
  std::vector<std::vector<int64_t>> prompts(1);
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FERRY_CHECK(used == token.size(), source, ": prompt ", prompts.size() - 1, ": '", token, "' is not an integer token id");
    prompts.back().push_back(v);
    token.clear();
  };
  for (char c : text) {
    if (c == ';') {
      flush();
      prompts.emplace_back();
    } else if (c == ' ' || c == ',' || c == '\t') {
      flush();
    } else {
      token += c;
    }
  }
  flush();
  for (size_t i = 0; i < prompts.size(); ++i)
    FERRY_CHECK(!prompts[i].empty(), source, ": prompt ", i, " is empty; give ids like \"1 2 3;4 5 6\"");
  return prompts;
}

// --ids-file: the prompts' ids one per line (blank lines skipped; ';' separates prompts too), for
// batches longer than a command line may be (the kernel refuses an argument over 128 KiB).
std::vector<std::vector<int64_t>> read_ids_file(const std::string& path) {
  const std::string text = io::read_regular_file(path, "ferry run --ids-file");
  std::string joined;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(" \t\r,") == std::string::npos) continue;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    joined += (joined.empty() ? "" : ";") + line;
  }
  FERRY_CHECK(!joined.empty(), "--ids-file ", path, " holds no token ids; write one prompt per line, e.g. \"1 2 3\"");
  return parse_ids(joined, "--ids-file " + path);
}

// Each row's tokens after the first `prompt_length` of `sequences` ([batch, positions] int64, CPU).
std::vector<std::vector<int64_t>> tokens_after(const at::Tensor& sequences, int64_t prompt_length) {
  const at::Tensor tail = sequences.narrow(1, prompt_length, sequences.size(1) - prompt_length).contiguous();
  std::vector<std::vector<int64_t>> rows;
  for (int64_t b = 0; b < tail.size(0); ++b) {
    const int64_t* row = tail[b].data_ptr<int64_t>();
    rows.emplace_back(row, row + tail.size(1));
  }
  return rows;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? " " : "") << ids[i];
  return s.str();
}

void run(const RunOptions& o) {
  using namespace ferry::models;
  // Text in, text out: the prompt is encoded with the model's tokenizer.json and the tokens are
  // decoded as they come (UTF-8 safe across tokens); with --ids, ids in and ids out.
  FERRY_CHECK(o.ids.empty() || o.ids_file.empty(), "give --ids or --ids-file, not both");
  const bool have_ids = !o.ids.empty() || !o.ids_file.empty();
  FERRY_CHECK(o.prompt.empty() == have_ids, have_ids ? "give --prompt or --ids, not both"
                                                     : "give --prompt \"text\" or --ids \"1 2 3\" (or --ids-file FILE)");
  FERRY_CHECK(o.sampling.stop.empty() || !o.prompt.empty(), "--stop needs --prompt: stop strings are matched in the text");
  std::optional<tokenizers::Tokenizer> tokenizer;
  std::vector<std::vector<int64_t>> prompts;
  double tokenizer_seconds = 0;  // loading the tokenizer and encoding the prompt: set-up, not the model
  if (!o.prompt.empty()) {
    const auto start = std::chrono::steady_clock::now();
    tokenizer = tokenizers::Tokenizer::from_model_dir(o.load.model_dir);
    std::vector<int64_t> encoded = tokenizer->encode(o.prompt);
    tokenizer_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    FERRY_CHECK(!encoded.empty(), "--prompt encodes to no tokens with ", tokenizer->source());
    prompts.push_back(std::move(encoded));
  } else {
    prompts = o.ids_file.empty() ? parse_ids(o.ids) : read_ids_file(o.ids_file);
  }
  const bool text_mode = tokenizer && !o.json;
  // With text, stdout carries the text alone; what ferry says about the run goes to stderr.
  std::ostream& info = text_mode ? std::cerr : std::cout;
  const bool say = !o.json && !o.load.quiet;
  // Everything the user can get wrong is checked before any weight is read.
  PreparedModel prepared = prepare_model(o.load);
  const ModelConfig config = prepared.config;
  GenerationConfig g = generation_settings(o.sampling, o.load.model_dir, config, kDefaultMaxNewTokens);
  // Prompts of different lengths are left-padded (with the pad id, else EOS, else 0) and masked.
  const int64_t pad_id = g.pad_token_id.value_or(g.eos_token_ids.empty() ? 0 : g.eos_token_ids.front());
  PaddedBatch batch_ids = left_pad(prompts, pad_id);
  check_input_ids(*prepared.empty, batch_ids.input_ids);
  const at::Tensor& ids = batch_ids.input_ids;
  g.return_prompt_logits = !o.logits_out.empty();
  FERRY_CHECK(!(g.return_prompt_logits && prompts.size() > 1 && !batch_ids.attention_mask.eq(1).all().item<bool>()),
              "--logits-out needs prompts of one length (the padding's positions have no meaningful logits)");
  // Past the model's positions a run is slow and meaningless; far past them it is a typo.
  const int64_t positions = config.max_position_embeddings;
  FERRY_CHECK(g.max_new_tokens <= 16 * positions, "--max-new-tokens ", g.max_new_tokens, " is more than 16 times the ",
              positions, " positions this model was trained for; ask for fewer");
  if (ids.size(1) + g.max_new_tokens > positions)
    log_warning(detail::concat("a prompt of ", ids.size(1), " tokens plus ", g.max_new_tokens,
                               " new ones goes past the model's max_position_embeddings (", positions,
                               "): text beyond it is usually degraded"));

  const RunShape shape{ids.size(0), ids.size(1), g.prefill_chunk, g.max_new_tokens, g.return_prompt_logits};
  Session session =
      load_session(std::move(prepared), o.load, o.json ? ProgressStyle::none : ProgressStyle::automatic, shape);
  LoadedModel& loaded = session.loaded;
  const ModelConfig& c = loaded.model->config();
  const std::string dtype = dtype_name(c.dtype);
  if (!session.prints_results()) std::cout.setstate(std::ios::badbit);  // rank 0 of a pipeline prints
  if (say) {
    print_model_info(info, session, o.load.model_dir);
    info << describe_sampling(g) << "\n";
    if (!text_mode) info << "generated:\n";
    info << std::flush;
  }
  // Tokens are written as they are produced (one prompt: on its line; several: each line at the
  // end); Ctrl-C stops after the current token and keeps what was generated.
  const int64_t batch = ids.size(0);
  const bool stream = !o.json && batch == 1 && !text_mode;
  std::vector<std::vector<int64_t>> produced(static_cast<size_t>(batch));
  if (stream) std::cout << "  [" << join_ids(prompts[0]) << "] ->" << std::flush;
  std::optional<tokenizers::StreamDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, /*skip_special_tokens=*/!o.keep_special);
  tokenizers::StopStrings stops(o.sampling.stop);
  // A model's vocabulary may be larger than its tokenizer's (padded for speed): ids the tokenizer
  // does not know have no text; they are left out of it, as transformers' decode does, and counted.
  int64_t unknown_ids = 0;
  auto known = [&](int64_t id) {
    const bool ok = tokenizer->id_to_token(id).has_value();
    if (!ok) ++unknown_ids;
    return ok;
  };
  // The streamer's counters when the prompt's forward is done: what decoding alone cost.
  std::optional<StreamerStats> after_prefill;
  int64_t storage_after_prefill = -1;  // storage_bytes_read() then (-1: unknown)
  bool prefill_done = false;            // the first step's callback ran: the snapshots above are taken
  // Across ranks, a stop is one every rank agreed on at this step (a rank stopping alone would leave
  // the others waiting for it): Ctrl-C on any of them stops all after the same token.
  auto* pipeline = dynamic_cast<PipelineModel*>(loaded.model.get());
  // Only the prompt's logits (--logits-out) are needed beyond the last stage; else it sends the tokens.
  if (pipeline) pipeline->set_logits_on_every_rank(!o.logits_out.empty());
  auto stop_if_interrupted = [&] {
    if (!pipeline) return throw_if_interrupted();
    if (const int sig = pipeline->agreed_stop()) throw Interrupted(sig);
  };
  g.on_step = [&](int64_t, const at::Tensor& next) {
    if (!prefill_done) {
      prefill_done = true;
      storage_after_prefill = storage_bytes_read();
      if (session.streamer) after_prefill = session.streamer->stats();
    }
    for (int64_t b = 0; b < batch; ++b) produced[static_cast<size_t>(b)].push_back(next[b].item<int64_t>());
    if (stream) std::cout << ' ' << produced[0].back() << std::flush;
    if (decoder && known(produced[0].back())) {
      const std::string shown = stops.push(decoder->push(produced[0].back()));
      if (text_mode) std::cout << shown << std::flush;
    }
    stop_if_interrupted();
  };
  g.stopping_criteria = [&](const at::Tensor&) { return stops.stopped(); };
  auto finish_text = [&] { return decoder ? stops.push(decoder->finish()) + stops.finish() : std::string(); };
  const StreamerStats stats_before = session.streamer ? session.streamer->stats() : StreamerStats{};
  const int64_t streamed_before = stats_before.bytes_loaded;
  // Across ranks, several prompts (no streaming, no stop strings): groups of them in flight.
  const int micro_batches = pipeline ? (o.micro_batches > 0 ? o.micro_batches : pipeline->stage().world_size) : 1;
  const bool in_flight = pipeline && micro_batches > 1 && batch > 1 && !stream && !text_mode && o.sampling.stop.empty();
  // The groups in flight (one: the whole batch) and, for --json, the stage boundary's own cost for
  // the largest group's decode message.
  const std::vector<int64_t> group_starts = in_flight_group_starts(batch, in_flight ? micro_batches : 1);
  int64_t largest_group = 0;
  for (size_t i = 1; i < group_starts.size(); ++i) largest_group = std::max(largest_group, group_starts[i] - group_starts[i - 1]);
  const auto link = pipeline && o.json ? pipeline->measure_link(largest_group) : std::nullopt;
  GenerationOutput out;
  try {
    if (in_flight) {
      g.on_step = nullptr;  // per-step callbacks would see one group's rows
      g.stopping_criteria = nullptr;
      out = generate_in_flight(*pipeline, ids, g, batch_ids.attention_mask, micro_batches);
      if (const int sig = pipeline->agreed_stop()) {  // every group stopped after a step agreed on
        produced = tokens_after(out.sequences, ids.size(1));
        throw Interrupted(sig);
      }
    } else {
      out = generate(*loaded.model, ids, g, batch_ids.attention_mask);
    }
  } catch (const Interrupted&) {
    if (o.json) {
      nlohmann::json j;
      j["model"] = o.load.model_dir;
      j["interrupted"] = true;
      j["generated"] = produced;
      std::cout << j.dump() << std::endl;
    } else if (stream || text_mode) {
      if (text_mode) std::cout << finish_text();
      std::cout << '\n';
    } else {
      for (int64_t b = 0; b < batch; ++b) {
        std::cout << "  [" << join_ids(prompts[static_cast<size_t>(b)]) << "] ->";
        for (int64_t t : produced[static_cast<size_t>(b)]) std::cout << ' ' << t;
        std::cout << '\n';
      }
    }
    throw;
  } catch (const c10::Error& e) {
    // E.g. float16 matmuls, which LibTorch 1.13 lacks on the CPU.
    FERRY_FAIL("LibTorch could not run this ", c.architecture, " in ", dtype, ": ", e.what_without_backtrace(),
               ". Try --dtype float32 or bfloat16");
  }
  const std::string text_tail = finish_text();
  const int64_t streamed = session.streamer ? session.streamer->stats().bytes_loaded - streamed_before : 0;
  const int64_t forwards = out.new_tokens > 0 ? out.new_tokens : (g.return_prompt_logits ? 1 : 0);
  double moved_per_token = forwards > 0 ? static_cast<double>(streamed) / static_cast<double>(forwards) : 0.0;
  // (Across ranks the disk-placed weights are other stages', never moved here.)
  if (moved_per_token == 0 && loaded.offloaded_bytes_per_forward > 0 && !session.stage)
    moved_per_token = static_cast<double>(loaded.offloaded_bytes_per_forward);
  // Unknown (-1) without /proc/self/io, or where no step callback ran (several prompts in flight across ranks).
  const int64_t storage_at_end = storage_bytes_read();
  const bool storage_known = storage_after_prefill >= 0 && storage_at_end >= 0;
  const double decode_storage_per_token =
      !storage_known ? -1.0
      : out.decode_steps > 0
          ? static_cast<double>(storage_at_end - storage_after_prefill) / static_cast<double>(out.decode_steps)
          : 0.0;
  const double decode_ms = out.decode_steps > 0 ? 1000.0 * out.decode_seconds / static_cast<double>(out.decode_steps) : 0.0;
  // Why generation ended (the single prompt of --prompt): a stop string, EOS, or the token budget.
  std::string stop_reason = "max_new_tokens";
  if (stops.stopped()) {
    stop_reason = "stop_string";
  } else if (!produced[0].empty() &&
             std::find(g.eos_token_ids.begin(), g.eos_token_ids.end(), produced[0].back()) != g.eos_token_ids.end()) {
    stop_reason = "eos";
  }
  const std::vector<std::vector<int64_t>> generated = tokens_after(out.sequences, ids.size(1));

  if (!o.logits_out.empty() && session.prints_results())  // one writer across ranks
    io::save_safetensors(o.logits_out, {{"logits", out.prompt_logits.contiguous()}}, {{"format", "pt"}});

  if (o.json) {
    nlohmann::json j;
    j["model"] = o.load.model_dir;
    j["architecture"] = c.architecture;
    j["dtype"] = dtype;
    j["attention"] = c.attn_implementation;
    j["libtorch"] = torch_version();
    j["device_map"] = nlohmann::json::parse(loaded.device_map.to_json());
    nlohmann::json per = nlohmann::json::object();
    for (const auto& [p, b] : loaded.bytes_per_placement) per[p.str()] = b;
    j["bytes_per_placement"] = per;
    j["prompt"] = prompts;
    j["generated"] = generated;
    j["new_tokens"] = out.new_tokens;
    j["sampling"] = {{"do_sample", g.do_sample}, {"temperature", g.temperature}, {"top_k", g.top_k},
                     {"top_p", g.top_p}, {"seed", g.seed}, {"max_new_tokens", g.max_new_tokens}};
    if (tokenizer) {
      // The whole decode, as transformers' tokenizer.decode gives it (the stream holds back bytes
      // that do not form a character yet; a whole decode shows them as U+FFFD), cut at the stop.
      std::vector<int64_t> with_text;
      for (int64_t id : generated[0])
        if (tokenizer->id_to_token(id).has_value()) with_text.push_back(id);
      j["prompt_text"] = o.prompt;
      j["text"] = stops.cut(tokenizer->decode(with_text, !o.keep_special));
      j["ids_without_text"] = unknown_ids;
      j["stop_reason"] = stop_reason;
      if (stops.stopped()) j["stop_string"] = stops.matched();
    }
    const int64_t gpu_peak = peak_gpu_bytes();
    j["timings"] = {{"load_s", loaded.load_seconds},
                    {"tokenizer_s", tokenizer_seconds},
                    {"prefill_s", out.prefill_seconds},
                    {"prefill_forwards", out.prefill_forwards},
                    {"decode_ms_per_token", decode_ms},
                    {"decode_steps", out.decode_steps},
                    {"peak_rss_bytes", peak_rss_bytes()},
                    {"peak_gpu_bytes", gpu_peak >= 0 ? nlohmann::json(gpu_peak) : nlohmann::json()},
                    {"rss_anon_bytes", rss_anon_bytes()},
                    {"offloaded_bytes_per_token", moved_per_token},
                    // What the kernel read from storage for this process (page faults on mapped
                    // weights and direct reads alike; page-cache hits are free): the cost of a
                    // model larger than memory, where the cache cannot hold the weights.
                    {"storage_bytes_read", storage_at_end >= 0 ? nlohmann::json(storage_at_end) : nlohmann::json()},
                    {"decode_storage_bytes_per_token",
                     storage_known ? nlohmann::json(decode_storage_per_token) : nlohmann::json()}};
    if (session.disk_reads) {
      const DiskReadPlan& plan = *session.disk_reads;
      const StreamerStats st = session.streamer->stats();
      j["disk_read"] = {{"mode", disk_read_name(plan.mode)},
                        {"reason", plan.reason},
                        {"file_bytes", plan.file_bytes},
                        {"available_bytes", plan.available_bytes},
                        {"window_bytes", plan.window_bytes},
                        {"buffer_bytes", plan.buffer_bytes},
                        {"buffer_peak_bytes", session.streamer->read_buffer_peak_bytes()},
                        {"direct_reads", st.direct_reads},
                        {"direct_bytes_read", st.direct_bytes_read},
                        {"read_buffers_made", st.read_buffers_made}};
    }
    if (session.streamer && (session.streamer->stats().routed_loads > 0 || session.streamer->stats().expert_runs_in_place > 0)) {
      // Mixtures of experts: what the routed experts cost per forward (token), and the cache's share.
      const StreamerStats st = session.streamer->stats();
      const double per = forwards > 0 ? 1.0 / static_cast<double>(forwards) : 0.0;
      const int64_t hits = st.expert_cache_hits - stats_before.expert_cache_hits;
      const int64_t misses = st.expert_cache_misses - stats_before.expert_cache_misses;
      j["experts"] = {{"picks", hits + misses},
                      {"cache_hits", hits},
                      {"cache_hit_rate", hits + misses > 0 ? static_cast<double>(hits) / static_cast<double>(hits + misses) : 0.0},
                      {"cache_budget_bytes", session.streamer->options().expert_cache_bytes},
                      {"cache_bytes", session.streamer->expert_cache_bytes()},
                      {"cache_evictions", st.expert_cache_evictions - stats_before.expert_cache_evictions},
                      {"bytes_loaded_per_token", per * static_cast<double>(st.expert_bytes_loaded - stats_before.expert_bytes_loaded)},
                      {"bytes_from_cache_per_token", per * static_cast<double>(st.expert_bytes_cached - stats_before.expert_bytes_cached)},
                      // picks run on the CPU beside their weights in RAM (--cpu-experts): nothing copied
                      {"runs_on_cpu", st.expert_runs_in_place - stats_before.expert_runs_in_place},
                      {"bytes_run_in_place_per_token", per * static_cast<double>(st.expert_bytes_in_place - stats_before.expert_bytes_in_place)}};
      const models::CpuExpertsPlan& cpu = loaded.cpu_experts;
      if (cpu.experts > 0)
        j["experts"]["cpu_experts"] = {{"mode", to_string(cpu.mode)},
                                       {"experts", cpu.experts},
                                       {"max_tokens_on_cpu", cpu.max_tokens_on_cpu},
                                       {"link_bytes_per_second", cpu.cost_model.link_bytes_per_second},
                                       {"cpu_bytes_per_second", cpu.cost_model.cpu_bytes_per_second},
                                       {"cpu_flops", cpu.cost_model.cpu_flops},
                                       {"explanation", cpu.explanation}};
      if (after_prefill && out.decode_steps > 0) {  // the prompt picks many experts at once; decoding, top-k per layer
        const double per_step = 1.0 / static_cast<double>(out.decode_steps);
        const int64_t decode_hits = st.expert_cache_hits - after_prefill->expert_cache_hits;
        const int64_t decode_picks = decode_hits + st.expert_cache_misses - after_prefill->expert_cache_misses;
        j["experts"]["decode_bytes_loaded_per_token"] =
            per_step * static_cast<double>(st.expert_bytes_loaded - after_prefill->expert_bytes_loaded);
        j["experts"]["decode_bytes_from_cache_per_token"] =
            per_step * static_cast<double>(st.expert_bytes_cached - after_prefill->expert_bytes_cached);
        j["experts"]["decode_cache_hit_rate"] =
            decode_picks > 0 ? static_cast<double>(decode_hits) / static_cast<double>(decode_picks) : 0.0;
        j["experts"]["decode_runs_on_cpu_per_token"] =
            per_step * static_cast<double>(st.expert_runs_in_place - after_prefill->expert_runs_in_place);
      }
    }
    if (pipeline) {
      const PipelineStage& st = pipeline->stage();
      j["pipeline"] = {{"rank", st.rank},
                       {"micro_batches", group_starts.size() - 1},
                       {"world_size", st.world_size},
                       {"layers", {st.first_layer, st.end_layer}},
                       {"bytes_sent_per_token", forwards > 0 ? static_cast<double>(pipeline->bytes_sent()) / forwards : 0.0},
                       {"bytes_received_per_token", forwards > 0 ? static_cast<double>(pipeline->bytes_received()) / forwards : 0.0},
                       {"communication_s", pipeline->communication_seconds()},
                       {"compute_s", pipeline->compute_seconds()}};
      // The link to the next stage alone (null on the last): one decode step's message, one way.
      j["pipeline"]["link"] = link ? nlohmann::json{{"message_bytes", link->message_bytes}, {"one_way_s", link->one_way_seconds}}
                                   : nlohmann::json();
    }
    j["io"] = {{"files_mapped", io::io_counters().files_mapped.load()},
               {"safetensors_headers_parsed", io::io_counters().safetensors_headers_parsed.load()}};
    if (!o.logits_out.empty()) j["logits_out"] = o.logits_out;
    std::cout << j.dump() << std::endl;
    return;
  }
  if (text_mode) {
    std::cout << text_tail << '\n' << std::flush;
    if (unknown_ids > 0 && !o.load.quiet)
      std::cerr << "note: " << unknown_ids << " generated id(s) are not in " << tokenizer->source() << " ("
                << tokenizer->vocab_size() << " tokens; the model's vocab_size is " << c.vocab_size
                << "): they have no text and were left out of it\n";
  } else if (stream) {
    std::cout << '\n';
  } else {
    for (int64_t b = 0; b < batch; ++b)
      std::cout << "  [" << join_ids(prompts[static_cast<size_t>(b)]) << "] -> " << join_ids(generated[static_cast<size_t>(b)]) << "\n";
  }
  if (o.load.quiet) return;
  if (text_mode && stop_reason != "max_new_tokens") std::cerr << "stopped: " << (stops.stopped() ? "stop string" : "EOS") << "\n";
  if (tokenizer) std::fprintf(stderr, "tokenizer: loaded and prompt encoded in %.1f ms\n", 1000 * tokenizer_seconds);
  std::fprintf(text_mode ? stderr : stdout,
               "timings: load %.3f s, prefill %.3f s, decode %.2f ms/token (%lld steps), peak RSS %s (anonymous now %s), "
               "offloaded bytes moved per token %s, read from storage per decode token %s\n",
               loaded.load_seconds, out.prefill_seconds, decode_ms, static_cast<long long>(out.decode_steps),
               format_bytes(static_cast<double>(peak_rss_bytes())).c_str(),
               format_bytes(static_cast<double>(rss_anon_bytes())).c_str(), format_bytes(moved_per_token).c_str(),
               storage_known ? format_bytes(decode_storage_per_token).c_str() : "unknown");
  if (!o.logits_out.empty()) info << "prompt logits written to " << o.logits_out << "\n";
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", kRunDescription);
  add_load_flags(cmd, o->load);
  cmd->add_option("--prompt", o->prompt,
                  "Prompt text, encoded with the model's tokenizer.json; the answer is decoded to text as it comes "
                  "(timings and the rest on stderr)");
  cmd->add_option("--ids", o->ids,
                  "Prompt token ids instead of text: \"1 2 3\", or several prompts \"1 2 3;4 5\" (left-padded and masked)");
  cmd->add_option("--ids-file", o->ids_file,
                  "Prompt token ids from a file, one prompt per line: for batches too long for the command line");
  cmd->add_flag("--keep-special", o->keep_special, "With --prompt: keep special tokens (EOS, ...) in the text");
  add_sampling_flags(cmd, o->sampling, kDefaultMaxNewTokens);
  cmd->add_flag("--json", o->json, "Print one JSON object instead of text");
  cmd->add_option("--micro-batches", o->micro_batches,
                  "Across ranks (ferry launch): split several prompts into this many groups kept in flight, so that "
                  "every stage works at once (default: the number of ranks; 1: the whole batch steps together)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--logits-out", o->logits_out, "Write the prompt's float32 logits (key \"logits\") to this .safetensors file");
  cmd->callback([o] { run(*o); });
}

}  // namespace ferry::cli
