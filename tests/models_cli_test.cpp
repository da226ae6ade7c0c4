// The `ferry run` and `ferry demo` commands, run as a user runs them: the real binary, its exit
// status, its output.

#include "ferry/core/torch_compat.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/load_model.h"
#include "ferry/models/pretrained.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include "ferry/core/memory_available.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

using ferry::models::create_model;
using ferry::models::parse_config;
using ferry::models::save_pretrained;
using namespace ferry::models::testing;
namespace fs = std::filesystem;

namespace {

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr together
  std::string stdout_only;
};

std::string cli_path() { return FERRY_CLI_PATH; }

// `prefix`: a command that runs ferry (e.g. inside a cgroup, ferry_test::MemoryCgroup::shell_prefix()).
Result run_cli(const std::string& args, bool merge_stderr = true, const std::string& prefix = "") {
  Result r;
  std::string cmd = prefix + "'" + cli_path() + "' " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.stdout_only = r.out;
  return r;
}

#define REQUIRE_CLI()                                                                \
  do {                                                                               \
    if (cli_path().empty() || !fs::exists(cli_path())) GTEST_SKIP() << "ferry CLI not built"; \
  } while (false)

std::string ids_arg(const at::Tensor& ids) {
  std::ostringstream s;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    if (b) s << ";";
    for (int64_t i = 0; i < ids.size(1); ++i) s << (i ? " " : "") << ids[b][i].item<int64_t>();
  }
  return "\"" + s.str() + "\"";
}

// Runs a fixture through the CLI and checks tokens and logits against transformers'; returns the
// run's JSON report.
// `launch`: "launch --nproc N -- " runs it as N ranks (rank 0's output, "[rank 0] "-prefixed, is read).
nlohmann::json check_fixture(const std::string& name, const std::string& extra, const std::string& prefix = "",
                             const std::string& launch = "") {
  auto ref = ferry::io::SafetensorsFile::open(fixture(name) + "/reference.safetensors");
  at::Tensor ids = ref.load("input_ids"), logits = ref.load("logits"), generated = ref.load("generated");
  TempDir tmp("cli_" + name);
  std::string logits_file = (tmp.path() / "logits.safetensors").string();
  Result r = run_cli(launch + "run " + fixture(name) + " --ids " + ids_arg(ids) + " --max-new-tokens 16 --dtype float32 --json" +
                         " --logits-out " + logits_file + " " + extra,
                     /*merge_stderr=*/false, prefix);
  EXPECT_EQ(r.status, 0) << r.out;
  if (r.status != 0) return {};
  if (!launch.empty()) {
    const std::string tag = "[rank 0] ";
    EXPECT_EQ(r.stdout_only.rfind(tag, 0), 0u) << r.stdout_only;
    r.stdout_only.erase(0, tag.size());
  }
  auto j = nlohmann::json::parse(r.stdout_only);
  at::Tensor want = generated.narrow(1, ids.size(1), generated.size(1) - ids.size(1));
  EXPECT_EQ(j["generated"].size(), 2u);
  if (j["generated"].size() != 2u) return j;
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<int64_t> got = j["generated"][b].get<std::vector<int64_t>>();
    EXPECT_TRUE(at::equal(at::tensor(got, at::kLong), want[b])) << name << " " << extra << " prompt " << b;
  }
  for (const char* key : {"load_s", "prefill_s", "decode_ms_per_token", "peak_rss_bytes", "offloaded_bytes_per_token"})
    EXPECT_TRUE(j["timings"].contains(key)) << key;
  // Open once: config, planning, loading and the disk weights read in place share one mapping and
  // one parsed header per shard.
  size_t shards = 0;
  for (const auto& e : fs::directory_iterator(fixture(name)))
    if (e.path().filename().string().rfind("model-", 0) == 0) ++shards;
  EXPECT_EQ(j["io"]["files_mapped"].get<size_t>(), shards) << name << " " << extra;
  EXPECT_EQ(j["io"]["safetensors_headers_parsed"].get<size_t>(), shards) << name << " " << extra;
  at::Tensor got_logits = ferry::io::SafetensorsFile::open(logits_file).load("logits");
  EXPECT_EQ(got_logits.scalar_type(), at::kFloat);
  EXPECT_LT(max_abs_diff(got_logits, logits), 1e-4) << name << " " << extra;
  return j;
}

std::string write_map(const TempDir& dir, const std::string& json) {
  std::string path = (dir.path() / "map.json").string();
  std::ofstream(path) << json;
  return path;
}

// In a forked child: becomes `ferry ARGS...`.
[[noreturn]] void exec_cli(const std::vector<std::string>& args) {
  std::vector<char*> argv{const_cast<char*>("ferry")};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(cli_path().c_str(), argv.data());
  ::_exit(127);
}

// Runs `ferry ARGS...` with stdout and stderr in one pipe, calling `watch(output so far, pid)` after
// each read (it may signal the child or change its files); returns the wait status and the output.
std::pair<int, std::string> run_cli_watching(const std::vector<std::string>& args,
                                             const std::function<void(const std::string&, pid_t)>& watch) {
  int out[2];
  if (::pipe(out) != 0) return {-1, ""};
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(out[1], STDERR_FILENO);
    ::close(out[0]);
    exec_cli(args);
  }
  ::close(out[1]);
  std::string text;
  char buf[256];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) {
    text.append(buf, static_cast<size_t>(n));
    watch(text, child);
  }
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  return {status, text};
}

// Runs the CLI on a pseudo-terminal, as at a shell, and presses Ctrl-C once `press` first says so
// (the terminal sends SIGINT to the whole foreground process group: the launcher and its ranks).
std::pair<int, std::string> run_cli_in_terminal(const std::vector<std::string>& args,
                                                const std::function<bool(const std::string&)>& press) {
  int terminal = -1;
  const pid_t child = ::forkpty(&terminal, nullptr, nullptr, nullptr);
  if (child < 0) return {-1, "forkpty failed"};
  if (child == 0) exec_cli(args);
  std::string text;
  bool pressed = false;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(terminal, buf, sizeof buf)) > 0) {  // (EIO once every process has let go of it)
    text.append(buf, static_cast<size_t>(n));
    if (!pressed && press(text)) pressed = ::write(terminal, "\x03", 1) == 1;
  }
  ::close(terminal);
  int status = 0;
  ::waitpid(child, &status, 0);
  text.erase(std::remove(text.begin(), text.end(), '\r'), text.end());
  return {status, text};
}

// The processes whose parent is `parent` (from /proc/PID/stat), with their environments.
std::vector<std::pair<pid_t, std::string>> children_of(pid_t parent) {
  std::vector<std::pair<pid_t, std::string>> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream stat(e.path() / "stat");
    std::string pid, comm, state;
    pid_t ppid = 0;
    if (!(stat >> pid >> comm >> state >> ppid) || ppid != parent) continue;
    std::ifstream environ(e.path() / "environ");
    out.emplace_back(std::stoi(pid), std::string((std::istreambuf_iterator<char>(environ)), std::istreambuf_iterator<char>()));
  }
  return out;
}

// Whether a process is still running (not gone, not a zombie).
bool running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string p, comm, state;
  return static_cast<bool>(stat >> p >> comm >> state) && state != "Z";
}

// Spaces after "[1 2 3] ->": how many tokens a streamed run has printed so far.
long tokens_streamed(const std::string& text) {
  const size_t arrow = text.find("[1 2 3] ->");
  if (arrow == std::string::npos) return -1;
  const size_t end = text.find('\n', arrow);
  return std::count(text.begin() + static_cast<std::ptrdiff_t>(arrow) + 10,
                    end == std::string::npos ? text.end() : text.begin() + static_cast<std::ptrdiff_t>(end), ' ');
}

}  // namespace

TEST(ModelsCli, RunMatchesTransformersResident) {
  REQUIRE_CLI();
  EXPECT_EQ(check_fixture("tiny_llama", "")["timings"]["prefill_forwards"], 1);
  check_fixture("tiny_qwen2", "");
  // The 12-position prompts in chunks of 4 (--prefill-chunk): three forwards, transformers' tokens and logits.
  EXPECT_EQ(check_fixture("tiny_llama", "--prefill-chunk 4")["timings"]["prefill_forwards"], 3);
}

TEST(ModelsCli, RunMatchesTransformersOffloadedToDisk) {
  REQUIRE_CLI();
  TempDir dir("map");
  // Layers 1-2 and the (tied, for qwen2) head stay on disk, read in place from the checkpoint.
  std::string map = write_map(dir, R"({"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
      "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"})");
  check_fixture("tiny_llama", "--device-map " + map);
  // Qwen2's head is tied to the embeddings and absent from the files: on disk, it is read through
  // its partner's stored name.
  check_fixture("tiny_qwen2", "--device-map " + map);
  TempDir qdir("qmap");
  std::string qmap = write_map(qdir, R"({"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu",
      "model.layers.2": "disk", "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "cpu"})");
  check_fixture("tiny_qwen2", "--device-map " + qmap);
  // Planned under a budget smaller than the model (about 3 MiB in float32).
  check_fixture("tiny_llama", "--device-map auto --max-memory cpu=1MiB");
  check_fixture("tiny_qwen2", "--device-map sequential --max-memory cpu=1MiB");
  check_fixture("tiny_llama", "--device-map balanced --max-memory cpu=2MiB --prefetch-bytes 0");
}

// Text in, text out: --prompt encodes with the model folder's tokenizer.json, generates the same
// tokens as --ids with those ids, and prints only the decoded text on stdout.
TEST(ModelsCli, PromptInTextOut) {
  REQUIRE_CLI();
  TempDir dir("prompt");
  for (const auto& e : fs::directory_iterator(fixture("tiny_llama")))
    fs::create_symlink(e.path(), dir.path() / e.path().filename());
  fs::copy_file(fixture("tokenizers/llama2.tokenizer.json"), dir.path() / "tokenizer.json");
  const std::string model = "'" + dir.str() + "'";
  // Six tokens: the text ends on a whole character (a byte-fallback token would be held back by
  // the streamed output, as the tokenizers library's own stream decoder does, and be U+FFFD in a
  // whole decode).
  const std::string prompt = " --prompt 'The quick brown fox' --max-new-tokens 6";

  Result ids = run_cli("tokenize " + model + " --text 'The quick brown fox' --ids", false);
  ASSERT_EQ(ids.status, 0) << ids.out;
  std::string id_list = ids.stdout_only.substr(0, ids.stdout_only.find('\n'));
  Result j = run_cli("run " + model + prompt + " --json", false);
  ASSERT_EQ(j.status, 0) << j.out;
  auto report = nlohmann::json::parse(j.stdout_only);
  std::ostringstream prompt_ids;
  for (int64_t id : report["prompt"][0].get<std::vector<int64_t>>()) prompt_ids << (prompt_ids.tellp() ? " " : "") << id;
  EXPECT_EQ(prompt_ids.str(), id_list);
  EXPECT_EQ(report["prompt_text"], "The quick brown fox");
  Result by_ids = run_cli("run " + model + " --ids '" + id_list + "' --max-new-tokens 6 --json", false);
  ASSERT_EQ(by_ids.status, 0) << by_ids.out;
  EXPECT_EQ(nlohmann::json::parse(by_ids.stdout_only)["generated"], report["generated"]);
  // The tiny model's vocabulary (1000) is larger than this tokenizer's (693): such ids have no text.
  std::string known;
  for (int64_t id : report["generated"][0].get<std::vector<int64_t>>())
    if (id < 693) known += (known.empty() ? "" : " ") + std::to_string(id);
  Result decoded = run_cli("tokenize " + model + " --decode '" + known + "'", false);
  ASSERT_EQ(decoded.status, 0) << decoded.out;
  const std::string text = report["text"];
  EXPECT_EQ(decoded.stdout_only.substr(0, decoded.stdout_only.find_last_not_of('\n') + 1), text);

  // Text mode: stdout holds the streamed text alone.
  Result t = run_cli("run " + model + prompt, false);
  ASSERT_EQ(t.status, 0) << t.out;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(t.stdout_only, text + "\n");
  EXPECT_EQ(t.stdout_only.find("model:"), std::string::npos) << t.stdout_only;

  Result both = run_cli("run " + model + prompt + " --ids '1 2'");
  EXPECT_NE(both.status, 0);
  EXPECT_NE(both.out.find("give --prompt or --ids, not both"), std::string::npos) << both.out;
  Result neither = run_cli("run " + model);
  EXPECT_NE(neither.status, 0);
  EXPECT_NE(neither.out.find("give --prompt"), std::string::npos) << neither.out;
  Result no_tokenizer = run_cli("run '" + fixture("tiny_llama") + "'" + prompt);
  EXPECT_NE(no_tokenizer.status, 0);
  EXPECT_NE(no_tokenizer.out.find("tokenizer.json"), std::string::npos) << no_tokenizer.out;
}

// A model folder with a tokenizer beside it: the fixture's files linked, tokenizer.json copied.
void link_fixture_with_tokenizer(const std::string& name, const std::string& tokenizer, const TempDir& dir) {
  for (const auto& e : fs::directory_iterator(fixture(name)))
    fs::create_symlink(e.path(), dir.path() / e.path().filename());
  fs::copy_file(fixture("tokenizers/" + tokenizer + ".tokenizer.json"), dir.path() / "tokenizer.json");
}

// --stop: generation ends as soon as the text contains the string, and the text shown ends before it.
TEST(ModelsCli, StopStringsEndTheText) {
  REQUIRE_CLI();
  TempDir dir("stop");
  link_fixture_with_tokenizer("tiny_llama", "llama2", dir);
  // Six tokens: text of whole characters (see PromptInTextOut), so the streamed text is the decode's.
  const std::string run = "run '" + dir.str() + "' --prompt 'The quick brown fox' --max-new-tokens 6";
  Result full = run_cli(run + " --json", false);
  ASSERT_EQ(full.status, 0) << full.out;
  auto all = nlohmann::json::parse(full.stdout_only);
  const std::string text = all["text"];
  ASSERT_GE(text.size(), 4u) << text;
  EXPECT_EQ(all["stop_reason"], "max_new_tokens");
  // A stop string from the middle of the text (two letters or digits): what comes before it, and fewer tokens.
  size_t at = text.size() / 2;
  while (at + 1 < text.size() && !(std::isalnum(static_cast<unsigned char>(text[at])) && std::isalnum(static_cast<unsigned char>(text[at + 1])))) ++at;
  ASSERT_LT(at + 1, text.size()) << text;
  const std::string stop = text.substr(at, 2);
  const std::string before = text.substr(0, text.find(stop));
  Result cut = run_cli(run + " --json --stop '" + stop + "' --stop 'never appears'", false);
  ASSERT_EQ(cut.status, 0) << cut.out;
  auto j = nlohmann::json::parse(cut.stdout_only);
  EXPECT_EQ(j["text"], before);
  EXPECT_EQ(j["stop_reason"], "stop_string");
  EXPECT_EQ(j["stop_string"], stop);
  EXPECT_LT(j["new_tokens"].get<int64_t>(), 6);
  // The tokens up to the stop are the same tokens.
  auto got = j["generated"][0].get<std::vector<int64_t>>(), want = all["generated"][0].get<std::vector<int64_t>>();
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << cut.stdout_only;
  // Streamed: stdout holds the text before the stop string, nothing of it.
  Result streamed = run_cli(run + " --stop '" + stop + "'", false);
  ASSERT_EQ(streamed.status, 0) << streamed.out;
  EXPECT_EQ(streamed.stdout_only, before + "\n");
  Result ids = run_cli("run '" + dir.str() + "' --ids '1 2' --stop x");
  EXPECT_NE(ids.status, 0);
  EXPECT_NE(ids.out.find("--stop needs --prompt"), std::string::npos) << ids.out;
}

// Sampling defaults come from generation_config.json, as in transformers; flags override them.
TEST(ModelsCli, SamplingDefaultsFollowGenerationConfig) {
  REQUIRE_CLI();
  TempDir dir("genconfig");
  for (const auto& e : fs::directory_iterator(fixture("tiny_llama")))
    if (e.path().filename() != "generation_config.json") fs::create_symlink(e.path(), dir.path() / e.path().filename());
  auto write_config = [&](const std::string& text) {
    std::ofstream(dir.path() / "generation_config.json", std::ios::trunc) << text;
  };
  const std::string run = "run '" + dir.str() + "' --ids '1 2 3' --max-new-tokens 8 --json";
  Result greedy = run_cli(run, false);
  ASSERT_EQ(greedy.status, 0) << greedy.out;
  EXPECT_EQ(nlohmann::json::parse(greedy.stdout_only)["sampling"]["do_sample"], false);

  write_config(R"({"do_sample": true, "temperature": 1.7, "top_k": 7, "top_p": 0.95, "eos_token_id": [2, 5], "repetition_penalty": 1.1})");
  Result sampled = run_cli(run + " --seed 3", false), again = run_cli(run + " --seed 3", false);
  ASSERT_EQ(sampled.status, 0) << sampled.out;
  auto s = nlohmann::json::parse(sampled.stdout_only);
  EXPECT_EQ(s["sampling"]["do_sample"], true);
  EXPECT_EQ(s["sampling"]["temperature"], 1.7);
  EXPECT_EQ(s["sampling"]["top_k"], 7);
  EXPECT_EQ(s["sampling"]["top_p"], 0.95);
  EXPECT_EQ(s["generated"], nlohmann::json::parse(again.stdout_only)["generated"]) << "seeded";
  // Same settings given as flags to a folder without the file: the same tokens.
  fs::remove(dir.path() / "generation_config.json");
  Result flags = run_cli(run + " --seed 3 --temperature 1.7 --top-k 7 --top-p 0.95", false);
  ASSERT_EQ(flags.status, 0) << flags.out;
  auto f = nlohmann::json::parse(flags.stdout_only);
  auto until_eos = [](std::vector<int64_t> v) {  // the file also made 5 an EOS id
    auto it = std::find_if(v.begin(), v.end(), [](int64_t id) { return id == 2 || id == 5; });
    return std::vector<int64_t>(v.begin(), it == v.end() ? v.end() : it + 1);
  };
  EXPECT_EQ(until_eos(f["generated"][0].get<std::vector<int64_t>>()), s["generated"][0].get<std::vector<int64_t>>());
  // --greedy wins over the file; a setting ferry does not apply is named.
  write_config(R"({"do_sample": true, "temperature": 1.7, "repetition_penalty": 1.1})");
  Result forced = run_cli(run + " --greedy");
  ASSERT_EQ(forced.status, 0) << forced.out;
  EXPECT_NE(forced.out.find("repetition_penalty 1.1, which ferry does not apply"), std::string::npos) << forced.out;
  Result forced_json = run_cli(run + " --greedy", false);
  EXPECT_EQ(nlohmann::json::parse(forced_json.stdout_only)["generated"], nlohmann::json::parse(greedy.stdout_only)["generated"]);
  write_config("{\"do_sample\": tru");
  Result bad = run_cli(run);
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("generation_config.json is not valid JSON"), std::string::npos) << bad.out;
}

// Prompts of different lengths in one run: left-padded and masked, each row's tokens are its own.
TEST(ModelsCli, PromptsOfDifferentLengthsInOneRun) {
  REQUIRE_CLI();
  const std::string run = "run '" + fixture("tiny_qwen2") + "' --dtype float32 --max-new-tokens 6 --json --ids ";
  Result together = run_cli(run + "'5 9 2 7 11;4 1;10 12 14'", false);
  ASSERT_EQ(together.status, 0) << together.out;
  auto j = nlohmann::json::parse(together.stdout_only);
  EXPECT_EQ(j["prompt"][1], nlohmann::json::array({4, 1})) << "prompts are reported without their padding";
  int row = 0;
  for (const char* alone : {"'5 9 2 7 11'", "'4 1'", "'10 12 14'"}) {
    Result r = run_cli(run + alone, false);
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(j["generated"][row], nlohmann::json::parse(r.stdout_only)["generated"][0]) << "prompt " << row;
    ++row;
  }
}

// A batch too long for the command line comes from a file, one prompt per line: the same run as --ids.
TEST(ModelsCli, PromptIdsFromAFile) {
  REQUIRE_CLI();
  TempDir dir("ids_file");
  const std::string path = (dir.path() / "prompts.txt").string();
  std::ofstream(path) << "5 9 2 7 11\r\n\n4 1\n  \n10 12 14";  // Windows line ends, blank lines, no final newline
  const std::string run = "run '" + fixture("tiny_qwen2") + "' --dtype float32 --max-new-tokens 6 --json ";
  Result from_file = run_cli(run + "--ids-file '" + path + "'", false);
  Result inline_ids = run_cli(run + "--ids '5 9 2 7 11;4 1;10 12 14'", false);
  ASSERT_EQ(from_file.status, 0) << from_file.out;
  ASSERT_EQ(inline_ids.status, 0) << inline_ids.out;
  const auto a = nlohmann::json::parse(from_file.stdout_only), b = nlohmann::json::parse(inline_ids.stdout_only);
  EXPECT_EQ(a["prompt"], b["prompt"]);
  EXPECT_EQ(a["generated"], b["generated"]);

  std::ofstream(path, std::ios::trunc) << "1 2\n3 x\n";
  Result bad = run_cli(run + "--ids-file '" + path + "'");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("--ids-file " + path + ": prompt 1: 'x' is not an integer token id"), std::string::npos) << bad.out;
  std::ofstream(path, std::ios::trunc) << "\n \n";
  bad = run_cli(run + "--ids-file '" + path + "'");
  EXPECT_NE(bad.out.find("holds no token ids; write one prompt per line"), std::string::npos) << bad.out;
  bad = run_cli(run + "--ids-file '" + (dir.path() / "missing.txt").string() + "'");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("missing.txt: does not exist"), std::string::npos) << bad.out;
  bad = run_cli(run + "--ids-file '" + path + "' --ids '1 2'");
  EXPECT_NE(bad.out.find("give --ids or --ids-file, not both"), std::string::npos) << bad.out;
}

// Loading shows its progress: a line when it starts and one when it ends when stderr is not a
// terminal (with bytes, tensors and shards); nothing with --quiet.
TEST(ModelsCli, LoadingProgressAndQuiet) {
  REQUIRE_CLI();
  const std::string run = "run '" + fixture("tiny_llama") + "' --ids '1 2 3' --max-new-tokens 2";
  Result r = run_cli(run);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("loading "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" in 14 shard(s) from "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tensors, 14 shard(s)) in "), std::string::npos) << r.out;
  Result q = run_cli(run + " --quiet");
  ASSERT_EQ(q.status, 0) << q.out;
  EXPECT_EQ(q.out.find("loading"), std::string::npos) << q.out;
  EXPECT_EQ(q.out.find("model:"), std::string::npos) << q.out;
  EXPECT_EQ(q.out.find("timings:"), std::string::npos) << q.out;
  EXPECT_NE(q.out.find("] -> "), std::string::npos) << q.out;
}

// `ferry chat` against whole conversations played by transformers (scripts/make_chat_fixtures.py):
// each fixture model with its family's tokenizer and published chat template; the user's lines come
// through a pipe. Every turn's prompt ids (the history rendered and encoded), reply ids and reply
// text are transformers' — so the template, the history and the decode all agree.
TEST(ModelsCli, ChatMatchesTransformersTurnByTurn) {
  REQUIRE_CLI();
  int cases = 0;
  for (const auto& entry : fs::directory_iterator(fixture("chat"))) {
    std::ifstream in(entry.path());
    const auto want = nlohmann::json::parse(in);
    SCOPED_TRACE(entry.path().filename().string());
    TempDir dir("chat");
    link_fixture_with_tokenizer(want["model"], want["tokenizer"], dir);
    std::ofstream(dir.path() / "tokenizer_config.json") << want["tokenizer_config"].dump();
    std::ofstream lines(dir.path() / "user.txt");
    for (const auto& turn : want["turns"]) lines << turn["user"].get<std::string>() << "\n";
    lines.close();
    std::string system = want["system"].is_null() ? "" : " --system '" + want["system"].get<std::string>() + "'";
    // Every other case with the conversation's prompt in chunks of 7 positions: the same replies.
    const std::string chunks = cases % 2 ? " --prefill-chunk 7" : "";
    Result r = run_cli("chat '" + dir.str() + "' --json --greedy --max-new-tokens " + want["max_new_tokens"].dump() +
                           system + chunks + " < '" + (dir.path() / "user.txt").string() + "'",
                       false);
    ASSERT_EQ(r.status, 0) << r.out;
    std::istringstream replies(r.stdout_only);
    std::string line;
    size_t turn = 0;
    while (std::getline(replies, line)) {
      ASSERT_LT(turn, want["turns"].size()) << line;
      const auto got = nlohmann::json::parse(line);
      const auto& expected = want["turns"][turn];
      EXPECT_EQ(got["prompt_ids"], expected["prompt_ids"]) << "turn " << turn;
      EXPECT_EQ(got["reply_ids"], expected["reply_ids"]) << "turn " << turn;
      EXPECT_EQ(got["reply"], expected["reply"]) << "turn " << turn;
      ++turn;
    }
    EXPECT_EQ(turn, want["turns"].size());
    ++cases;
  }
  EXPECT_GE(cases, 5);
  // Text mode through a pipe: the replies, one line per turn, on stdout; a model without a template is refused.
  TempDir dir("chat_text");
  link_fixture_with_tokenizer("tiny_llama", "llama3", dir);
  Result no_template = run_cli("chat '" + dir.str() + "' < /dev/null");
  EXPECT_NE(no_template.status, 0);
  EXPECT_NE(no_template.out.find("has no chat template"), std::string::npos) << no_template.out;
  std::ifstream llama(fixture("chat/llama.json"));
  const auto want = nlohmann::json::parse(llama);
  std::ofstream(dir.path() / "tokenizer_config.json") << want["tokenizer_config"].dump();
  Result text = run_cli("chat '" + dir.str() + "' --greedy --max-new-tokens 6 --system 'Answer briefly.'", false,
                        "printf 'Hi! Who are you?\\n/reset\\nHi! Who are you?\\n' | ");
  ASSERT_EQ(text.status, 0) << text.out;
  const std::string& both = text.stdout_only;
  ASSERT_EQ(both.size() % 2, 0u) << both;
  EXPECT_EQ(both.substr(0, both.size() / 2), both.substr(both.size() / 2))
      << "after /reset the same first turn gives the same reply";
}

// Mixtures of experts through `ferry run`, resident and planned under a budget that puts layers on disk.
TEST(ModelsCli, MixturesOfExpertsMatchTransformers) {
  REQUIRE_CLI();
  for (const char* name : {"tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"}) {
    check_fixture(name, "");
    check_fixture(name, "--device-map auto --max-memory cpu=400KB");
  }
}

// --expert-cache: offloaded experts that the router picks again are served from the cache, the
// tokens unchanged, and --json reports the picks, hits and bytes per token.
TEST(ModelsCli, ExpertCacheCountersAndSameTokens) {
  REQUIRE_CLI();
  TempDir dir("expert_cache");
  std::string map = "{\"model.embed_tokens\": \"cpu\", \"model.rotary_emb\": \"cpu\", \"model.norm\": \"cpu\", "
                    "\"lm_head\": \"cpu\"";
  for (int l = 0; l < 2; ++l) {
    const std::string layer = "model.layers." + std::to_string(l);
    for (const char* part : {".self_attn", ".input_layernorm", ".post_attention_layernorm", ".block_sparse_moe.gate"})
      map += ", \"" + layer + part + "\": \"cpu\"";
    for (int e = 0; e < 8; ++e) map += ", \"" + layer + ".block_sparse_moe.experts." + std::to_string(e) + "\": \"disk\"";
  }
  std::ofstream(dir.path() / "map.json") << map << "}";
  const std::string run = "run '" + fixture("tiny_mixtral") + "' --ids '1 5 9 14 3' --max-new-tokens 12 --json --device-map '" +
                          (dir.path() / "map.json").string() + "'";
  Result plain = run_cli(run, false), cached = run_cli(run + " --expert-cache 1MiB", false);
  ASSERT_EQ(plain.status, 0) << plain.out;
  ASSERT_EQ(cached.status, 0) << cached.out;
  auto p = nlohmann::json::parse(plain.stdout_only), c = nlohmann::json::parse(cached.stdout_only);
  EXPECT_EQ(p["generated"], c["generated"]);
  EXPECT_EQ(p["experts"]["cache_hits"], 0);
  EXPECT_GT(p["experts"]["bytes_loaded_per_token"].get<double>(), 0);
  EXPECT_GT(c["experts"]["cache_hits"].get<int64_t>(), 0) << c["experts"];
  EXPECT_GT(c["experts"]["cache_hit_rate"].get<double>(), 0);
  EXPECT_GT(c["experts"]["bytes_from_cache_per_token"].get<double>(), 0);
  EXPECT_LT(c["experts"]["bytes_loaded_per_token"].get<double>(), p["experts"]["bytes_loaded_per_token"].get<double>());
  EXPECT_LE(c["experts"]["cache_bytes"].get<int64_t>(), int64_t{1} << 20);
  // Decoding alone: one token picks top-2 of 8 experts in each of 2 layers, 36 KiB each, so without a
  // cache exactly 4 experts' bytes per decode token; the prompt's forward (5 tokens) picks more.
  EXPECT_DOUBLE_EQ(p["experts"]["decode_bytes_loaded_per_token"].get<double>(), 4.0 * 36864) << p["experts"];
  EXPECT_EQ(p["experts"]["decode_cache_hit_rate"].get<double>(), 0.0);
  EXPECT_GT(c["experts"]["decode_cache_hit_rate"].get<double>(), c["experts"]["cache_hit_rate"].get<double>() - 1e-9)
      << "the prompt's picks are first sights";

  // Read with O_DIRECT, the picked experts come from storage every token, and the kernel's own count
  // of what the process read (timings.decode_storage_bytes_per_token) shows those 4 experts' bytes
  // (rounded out to 4 KiB blocks), well under the 16 experts of the two layers (4x; the margin is for
  // pages of code or libraries the kernel may read in during the steps).
  Result direct = run_cli(run + " --disk-read direct", false);
  ASSERT_EQ(direct.status, 0) << direct.out;
  auto d = nlohmann::json::parse(direct.stdout_only);
  EXPECT_EQ(d["generated"], p["generated"]);
  EXPECT_DOUBLE_EQ(d["experts"]["decode_bytes_loaded_per_token"].get<double>(), 4.0 * 36864) << d["experts"];
  if (d["disk_read"]["direct_reads"].get<int64_t>() == 0 || d["timings"]["storage_bytes_read"].is_null()) {
    std::cerr << "[ note ] the fixture's file system took no O_DIRECT reads or keeps no /proc/self/io; storage count unchecked\n";
  } else {
    const double storage = d["timings"]["decode_storage_bytes_per_token"].get<double>();
    EXPECT_GE(storage, 4.0 * 36864) << d["timings"];
    EXPECT_LT(storage, 3 * 4.0 * 36864) << d["timings"];
  }
}

// Disk weights read with O_DIRECT into ferry's own buffers (models larger than RAM) give the same
// tokens and logits; asked for, or chosen by ferry inside a memory limit smaller than what the
// weights in files need beside the process.
TEST(ModelsCli, DiskWeightsReadDirectMatchTransformers) {
  REQUIRE_CLI();
  TempDir dir("map");
  std::string map = write_map(dir, R"({"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
      "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"})");
  nlohmann::json j = check_fixture("tiny_llama", "--device-map " + map + " --disk-read direct");
  EXPECT_EQ(j["disk_read"]["mode"], "direct") << j.dump();
  EXPECT_GT(j["disk_read"]["direct_reads"].get<int64_t>(), 0) << j.dump();
  j = check_fixture("tiny_qwen2", "--device-map " + map + " --disk-read direct --prefetch-bytes 0");  // on demand
  EXPECT_EQ(j["disk_read"]["mode"], "direct") << j.dump();
  j = check_fixture("tiny_llama", "--device-map " + map);  // auto: a few MiB fit, read mapped
  EXPECT_EQ(j["disk_read"]["mode"], "mapped") << j.dump();

  ferry_test::MemoryCgroup cgroup(int64_t{384} << 20);  // less than the 512 MiB ferry keeps for work
  if (cgroup.path().empty()) GTEST_SKIP() << "cannot make a cgroup-v1 memory cgroup here (needs root)";
  j = check_fixture("tiny_llama", "--device-map " + map, cgroup.shell_prefix());
  EXPECT_EQ(j["disk_read"]["mode"], "direct") << j.dump();
  const std::string reason = j["disk_read"]["reason"];
  EXPECT_NE(reason.find("do not fit in memory"), std::string::npos) << reason;
  EXPECT_NE(reason.find("cgroup limit 384 MiB"), std::string::npos) << reason;
  EXPECT_EQ(cgroup.oom_kills(), 0);
  Result r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 2 --device-map " + map +
                         " --disk-read sideways",
                     true);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--disk-read"), std::string::npos) << r.out;
}

TEST(ModelsCli, TextReportShowsPlacementTokensAndTimings) {
  REQUIRE_CLI();
  TempDir dir("text");
  std::string map = write_map(dir, R"({"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
      "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"})");
  Result r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 4 --device-map " + map);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("placement:  cpu"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("disk"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[1 2 3] -> "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("peak RSS"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("offloaded bytes moved per token 0 B"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("read from storage per decode token "), std::string::npos) << r.out;
}

TEST(ModelsCli, SamplingIsSeededAndBounded) {
  REQUIRE_CLI();
  std::string base = "run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 8 --json --temperature 1.5 --top-k 50 --top-p 0.9 --seed ";
  Result a = run_cli(base + "7", false), b = run_cli(base + "7", false);
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_EQ(nlohmann::json::parse(a.out)["generated"], nlohmann::json::parse(b.out)["generated"]);
}

TEST(ModelsCli, BadInputExitsNonZeroWithAClearMessage) {
  REQUIRE_CLI();
  TempDir empty("empty");
  Result r = run_cli("run " + empty.str() + " --ids \"1 2\"");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("has no config.json"), std::string::npos) << r.out;

  TempDir noweights("noweights");
  fs::copy(fixture("tiny_llama") + "/config.json", noweights.path() / "config.json");
  r = run_cli("run " + noweights.str() + " --ids \"1 2\"");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("holds no weights"), std::string::npos) << r.out;

  TempDir mismatch("mismatch");
  for (const auto& e : fs::directory_iterator(fixture("tiny_llama"))) fs::copy(e.path(), mismatch.path() / e.path().filename());
  std::ifstream in(mismatch.path() / "config.json");
  std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  config.replace(config.find("\"hidden_size\": 128"), 18, "\"hidden_size\": 256");
  std::ofstream(mismatch.path() / "config.json", std::ios::trunc) << config;
  r = run_cli("run " + mismatch.str() + " --ids \"1 2\"");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("does not match its config.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.embed_tokens.weight' has shape [1000, 128] in the checkpoint but [1000, 256]"),
            std::string::npos)
      << r.out;

  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 1000\"");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("token id 1000 (prompt 0, position 2) is outside the vocabulary [0, 1000)"), std::string::npos)
      << r.out;
  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2;;3\"");  // prompts of different lengths are fine; empty ones not
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--ids: prompt 1 is empty"), std::string::npos) << r.out;
  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 x\"");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("'x' is not an integer token id"), std::string::npos) << r.out;

  TempDir maps("badmap");
  std::string offload = (maps.path() / "offload").string();
  std::string map = write_map(maps, R"({"model.embed_tokens": "cpu", "": "disk"})");
  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2\" --device-map " + map);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("device map entry 'model.embed_tokens' (cpu) is inside '', which is placed on disk"), std::string::npos)
      << r.out;
  map = write_map(maps, R"({"model.embed_tokens": "cpu", "model.layers.7": "disk", "model.layers": "disk",
                            "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"})");
  // Issue 18: a key that names no module is ignored with a warning, as Accelerate does (the "" entry
  // places the rest), and the warning says what exists nearby.
  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2\" --device-map " + map + " --offload-folder " + offload);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("warning: the device map names 'model.layers.7', which is not a module or tensor of this LlamaForCausalLM"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("'model.layers' holds model.layers.0, model.layers.1, model.layers.2; the entry is ignored"),
            std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(fs::path(offload) / "index.json"));  // the disk-placed layers went there

  map = write_map(maps, R"({"model.embed_tokens": "cpu", "model.layers": "cpu"})");
  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2\" --device-map " + map);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("the device map gives no placement for 'model.norm.weight'"), std::string::npos) << r.out;

  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2\" --device-map nonsense");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("is not a strategy"), std::string::npos) << r.out;

  r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2\" --top-p 2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--top-p must be in (0, 1], got 2"), std::string::npos) << r.out;
}

TEST(ModelsCli, DemoRunsResidentAndOffloadedWithTheSameTokens) {
  REQUIRE_CLI();
  Result r = run_cli("demo");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("OK: resident and offloaded runs give the same tokens"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("disk"), std::string::npos) << r.out;
}

TEST(ModelsCli, Float16RunsOrSaysWhatItNeeds) {
  REQUIRE_CLI();
  // LibTorch 1.13 has no float16 matmul on the CPU; 2.x does. On 1.13 the user gets one line that says
  // what to do before anything loads, never an unexplained LibTorch failure.
  Result r = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 3 --dtype float16");
#if defined(FERRY_HAS_CPU_FLOAT16)
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("float16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[1 2 3] -> "), std::string::npos) << r.out;
#else
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("in float16 (bfloat16 and float32 work with this build) needs LibTorch 2.1 or later"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("FERRY_TORCH=pypi"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("loading"), std::string::npos) << "refused before loading: " << r.out;
#endif
  // The attention kernel is chosen the same way: sdpa needs 2.x, eager works everywhere.
  Result eager = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 2 --attention eager --json");
  EXPECT_EQ(eager.status, 0) << eager.out;
  EXPECT_NE(eager.out.find("\"attention\":\"eager\""), std::string::npos) << eager.out;
  Result sdpa = run_cli("run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 2 --attention sdpa --json");
#if defined(FERRY_HAS_SDPA)
  EXPECT_EQ(sdpa.status, 0) << sdpa.out;
  EXPECT_NE(sdpa.out.find("\"attention\":\"sdpa\""), std::string::npos) << sdpa.out;
#else
  EXPECT_EQ(sdpa.status, 1) << sdpa.out;
  EXPECT_NE(sdpa.out.find("attn_implementation 'sdpa' needs LibTorch 2.1 or later"), std::string::npos) << sdpa.out;
#endif
}

// Issue 13: bad arguments end in one line that names the argument, exit status 1, never a LibTorch
// backtrace or "unexpected error"; nothing runs on a device that does not exist here.
TEST(ModelsCli, ArgumentsThatCannotWorkGetOneLineEach) {
  REQUIRE_CLI();
  TempDir maps("devices");
  int count = 0;
  auto map_file = [&](const std::string& json) {
    const std::string path = (maps.path() / ("map" + std::to_string(count++) + ".json")).string();
    std::ofstream(path) << json;
    return path;
  };
  const std::string model = fixture("tiny_llama");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--device-map auto --max-memory 0=1GB", "a max_memory budget's device is cuda:0"},
      {"--device-map auto --max-memory mps=1GB", "a max_memory budget's device is mps"},
      {"--device-map " + map_file(R"({"": "cuda:7"})"), "device map entry '' is cuda:7"},
      {"--device-map " + map_file(R"({"": "meta"})"), "is 'meta', which holds no data"},
      {"--device-map " + map_file(R"({"": "cpu", "lm_head.weight": "disk"})"),
       "puts one tensor on disk, but weights are offloaded module by module"},
      {"--dtype int8", "computes in floating point, not int8"},
      {"--dtype complex64", "computes in floating point, not complex64"},
      {"--seed 99999999999999999999999", "--seed must be an integer from 0 to 18446744073709551615"},
      {"--seed -1", "--seed must be an integer"},
      {"--max-new-tokens 100000000", "is more than 16 times the 256 positions"},
      {"--prefill-chunk -2", "--prefill-chunk must be >= 0 (0: the whole prompt at once), got -2"},
      {"--device-map auto --max-memory cpu=1MiB --offload-folder /proc/ferry_cannot_be_here", "cannot be created"},
      {"--device-map auto --max-memory cpu=1MiB --offload-folder " + model + "/config.json", "exists and is not a folder"},
  };
  for (const auto& [args, expected] : cases) {
    Result r = run_cli("run " + model + " --ids \"1 2 3\" " + args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(expected), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("frame #"), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("unexpected error"), std::string::npos) << args << "\n" << r.out;
  }
  // Planning for another machine may name any device.
  Result plan = run_cli("plan " + model + " --max-memory 0=1MB,cpu=1GB --json");
  EXPECT_EQ(plan.status, 0) << plan.out;
}

// Issue 13 (signals): Ctrl-C during `ferry run` keeps the tokens generated so far (they are written
// as they are produced) and ends with the shell's status for SIGINT, not a lost run.
TEST(ModelsCli, InterruptKeepsTheTokensGeneratedSoFar) {
  REQUIRE_CLI();
  bool sent = false;
  const auto [status, text] = run_cli_watching(
      {"run", fixture("tiny_llama"), "--ids", "1 2 3", "--max-new-tokens", "4000"}, [&](const std::string& out, pid_t child) {
        if (!sent && tokens_streamed(out) >= 8) sent = ::kill(child, SIGINT) == 0;  // after a few tokens
      });
  ASSERT_TRUE(sent) << text;
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_EQ(WEXITSTATUS(status), 130) << text;
  EXPECT_NE(text.find("interrupted by SIGINT"), std::string::npos) << text;
  EXPECT_GE(tokens_streamed(text), 8) << text;
  EXPECT_EQ(text.find("timings:"), std::string::npos) << "the run should have stopped early:\n" << text;
}

// --offload-folder is used, not accepted and ignored: disk-placed weights are written there (as
// Accelerate does) and the tokens are the same as reading them in place.
TEST(ModelsCli, OffloadFolderReceivesTheDiskWeights) {
  REQUIRE_CLI();
  TempDir tmp("offload_folder");
  const std::string folder = (tmp.path() / "off").string();
  const std::string base = "run " + fixture("tiny_llama") + " --ids \"1 2 3\" --max-new-tokens 4 --json --device-map auto --max-memory cpu=1MiB";
  Result in_place = run_cli(base, false);
  Result copied = run_cli(base + " --offload-folder " + folder, false);
  ASSERT_EQ(in_place.status, 0) << in_place.out;
  ASSERT_EQ(copied.status, 0) << copied.out;
  EXPECT_EQ(nlohmann::json::parse(in_place.stdout_only)["generated"], nlohmann::json::parse(copied.stdout_only)["generated"]);
  EXPECT_TRUE(fs::exists(fs::path(folder) / "index.json"));
  EXPECT_GT(std::distance(fs::directory_iterator(folder), fs::directory_iterator{}), 10);
}

// Issue 13 (files that change under a run): a shard truncated while `ferry run` reads its weights in
// place ends the run with a message naming the file, status 1, and the tokens printed so far; not
// "Bus error" (SIGBUS, status 135).
TEST(ModelsCli, AShardTruncatedDuringARunIsNamedNotABusError) {
  REQUIRE_CLI();
  TempDir tmp("truncated");
  const fs::path model = tmp.path() / "model";
  fs::copy(fixture("tiny_llama"), model);
  bool truncated = false;
  const auto [status, text] = run_cli_watching(
      {"run", model.string(), "--ids", "1 2 3", "--max-new-tokens", "4000", "--device-map", "auto", "--max-memory", "cpu=1MiB"},
      [&](const std::string& out, pid_t) {
        if (truncated || tokens_streamed(out) < 6) return;
        // Every decoder layer is read in place from these shards on every token.
        for (const auto& e : fs::directory_iterator(model))
          if (e.path().filename().string().rfind("model-", 0) == 0) fs::resize_file(e.path(), 64);
        truncated = true;
      });
  ASSERT_TRUE(truncated) << text;
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << "\n" << text;
  EXPECT_EQ(WEXITSTATUS(status), 1) << text;
  EXPECT_NE(text.find("changed while it was being read (truncated or replaced)"), std::string::npos) << text;
  EXPECT_NE(text.find((model / "model-").string()), std::string::npos) << text;
}

// Pipeline parallelism (models/pipeline.h) through `ferry launch` on loopback: 2 and 3 ranks, each
// holding its stage's layers, give transformers' tokens and logits, as one process does; Mixtral's
// experts too. The fixtures' two prompts go as two groups in flight by default (a group per rank,
// at most one per prompt), and as one batch stepping together with --micro-batches 1.
TEST(ModelsCli, PipelineAcrossRanksMatchesTransformers) {
  REQUIRE_CLI();
  for (int n : {2, 3}) {
    nlohmann::json j = check_fixture("tiny_llama", "", "", "launch --nproc " + std::to_string(n) + " --timeout 60 -- ");
    EXPECT_EQ(j["pipeline"]["world_size"], n) << j.dump();
    EXPECT_EQ(j["pipeline"]["layers"], nlohmann::json::array({0, n == 2 ? 2 : 1})) << j.dump();
    EXPECT_EQ(j["pipeline"]["micro_batches"], 2) << j.dump();
    // Each decode step sends one position's hidden states per prompt: 2 x 64 float32.
    EXPECT_GT(j["pipeline"]["bytes_sent_per_token"].get<double>(), 0) << j.dump();
    // and receives the last stage's logits: 2 x 1,000 float32 per step, more than it sends
    EXPECT_GT(j["pipeline"]["bytes_received_per_token"].get<double>(), j["pipeline"]["bytes_sent_per_token"].get<double>())
        << j.dump();
    // The link to rank 1 alone, measured before generating: a group's (one prompt's) decode
    // message, 128 hidden float32 and the stop code, one way on loopback.
    EXPECT_EQ(j["pipeline"]["link"]["message_bytes"], (128 + 1) * 4) << j.dump();
    const double one_way = j["pipeline"]["link"].value("one_way_s", -1.0);
    EXPECT_GT(one_way, 0) << j.dump();
    EXPECT_LT(one_way, 1.0) << j.dump();
  }
  nlohmann::json lockstep = check_fixture("tiny_llama", "--micro-batches 1", "", "launch --nproc 2 --timeout 60 -- ");
  EXPECT_EQ(lockstep["pipeline"]["micro_batches"], 1) << lockstep.dump();
  EXPECT_EQ(lockstep["pipeline"]["link"]["message_bytes"], (2 * 128 + 1) * 4) << "both prompts step together";
  nlohmann::json j = check_fixture("tiny_mixtral", "", "", "launch --nproc 2 --timeout 60 -- ");
  EXPECT_EQ(j["pipeline"]["layers"], nlohmann::json::array({0, 1})) << j.dump();
  EXPECT_EQ(j["pipeline"]["micro_batches"], 2) << j.dump();
}

// On a GPU host, the ranks of `ferry launch` share its GPU (local_rank_budget: with one GPU, each
// rank plans its stage onto cuda:0 within half of it): tokens and logits are still transformers'.
TEST(ModelsCliCuda, PipelineRanksShareTheHostsGpu) {
  REQUIRE_CLI();
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  nlohmann::json j = check_fixture("tiny_llama", "--device-map auto", "", "launch --nproc 2 --timeout 120 -- ");
  EXPECT_EQ(j["pipeline"]["world_size"], 2) << j.dump();
  EXPECT_TRUE(j["bytes_per_placement"].contains("cuda:0")) << j.dump();
}

// Without --logits-out no rank but the last needs logits: it sends the tokens it chose (8 bytes a
// row, and the stop code) instead of the vocabulary's logits; greedy tokens are still transformers',
// and sampled ones (chosen on the last stage only) are one process's, in lockstep and in flight.
TEST(ModelsCli, PipelineSendsTheChosenTokensNotTheLogits) {
  REQUIRE_CLI();
  auto ref = ferry::io::SafetensorsFile::open(fixture("tiny_llama") + "/reference.safetensors");
  const at::Tensor ids = ref.load("input_ids"), generated = ref.load("generated");
  const at::Tensor want = generated.narrow(1, ids.size(1), generated.size(1) - ids.size(1));
  auto run = [&](const std::string& launch, const std::string& extra) {
    Result r = run_cli(launch + "run " + fixture("tiny_llama") + " --ids " + ids_arg(ids) +
                           " --max-new-tokens 16 --dtype float32 --json " + extra, /*merge_stderr=*/false);
    EXPECT_EQ(r.status, 0) << launch << extra << "\n" << r.out;
    std::string out = r.stdout_only;
    if (out.rfind("[rank 0] ", 0) == 0) out.erase(0, 9);
    return r.status == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
  };
  for (const auto& [micro_batches, groups] : {std::pair<std::string, int>{"1", 1}, {"2", 2}}) {
    SCOPED_TRACE("--micro-batches " + micro_batches);
    const nlohmann::json j = run("launch --nproc 2 --timeout 60 -- ", "--micro-batches " + micro_batches);
    EXPECT_EQ(j["timings"]["prefill_forwards"], 1) << "the whole prompt at once";
    for (int64_t b = 0; b < 2; ++b)
      EXPECT_TRUE(at::equal(at::tensor(j["generated"][b].get<std::vector<int64_t>>(), at::kLong), want[b])) << j.dump();
    // per step and group: its rows' tokens and the stop code, int64 each (the logits: 2 x 1,000 float32)
    EXPECT_EQ(j["pipeline"]["bytes_received_per_token"].get<double>(), 8.0 * (2 + groups)) << j["pipeline"];
    // Sampled: in lockstep as one process samples; in flight (group i samples with seed + i) as
    // when every rank gets the logits and chooses (--logits-out) on 2 ranks.
    const std::string sampled = "--temperature 1.5 --seed 7 --micro-batches " + micro_batches;
    const nlohmann::json tokens_sent = run("launch --nproc 3 --timeout 60 -- ", sampled);
    TempDir tmp("sampled");
    const nlohmann::json baseline =
        groups == 1 ? run("", sampled)
                    : run("launch --nproc 2 --timeout 60 -- ", sampled + " --logits-out " + (tmp.path() / "l.safetensors").string());
    EXPECT_EQ(tokens_sent["generated"], baseline["generated"]);
    EXPECT_NE(tokens_sent["generated"], j["generated"]) << "sampled, not greedy";
    // The prompt in chunks of 5 positions, flowing through 2 and 3 stages: the same tokens.
    for (const std::string n : {"2", "3"}) {
      const nlohmann::json chunked = run("launch --nproc " + n + " --timeout 60 -- ",
                                         "--prefill-chunk 5 --micro-batches " + micro_batches);
      for (int64_t b = 0; b < 2; ++b)
        EXPECT_TRUE(at::equal(at::tensor(chunked["generated"][b].get<std::vector<int64_t>>(), at::kLong), want[b]))
            << n << " ranks, chunks of 5: " << chunked.dump();
      EXPECT_EQ(chunked["timings"]["prefill_forwards"], 3) << "12 positions: 5, 5 and 2";
    }
  }
}

// GPT-2 across ranks (its learned positions on the first stage, its tied head on the last): the
// same greedy tokens and prompt logits as one process, for 2 and 3 ranks, resident, with its
// blocks offloaded inside each stage, and with the prompt in chunks of 2 positions.
TEST(ModelsCli, PipelineRunsGpt2AsOneProcessDoes) {
  REQUIRE_CLI();
  TempDir tmp("gpt2_pipeline");
  const std::string dir = (tmp.path() / "gpt2").string();
  {
    auto model = create_model(parse_config(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
      "vocab_size": 71, "n_embd": 48, "n_layer": 3, "n_head": 3, "n_positions": 64, "eos_token_id": 70})"));
    randomize(*model, 5);
    save_pretrained(*model, dir);
  }
  auto run = [&](const std::string& launch, const std::string& extra) {
    const std::string logits = (tmp.path() / "logits.safetensors").string();
    Result r = run_cli(launch + "run " + dir + " --ids '3 14 15 9 2;65 35 8 9 7' --max-new-tokens 12 --json --logits-out " +
                           logits + " " + extra, /*merge_stderr=*/false);
    EXPECT_EQ(r.status, 0) << launch << extra << "\n" << r.out;
    std::string out = r.stdout_only;
    if (!launch.empty() && out.rfind("[rank 0] ", 0) == 0) out.erase(0, 9);
    nlohmann::json j = r.status == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
    return std::make_pair(j, r.status == 0 ? ferry::io::SafetensorsFile::open(logits).load("logits") : at::Tensor());
  };
  const auto [one, one_logits] = run("", "");
  ASSERT_TRUE(one_logits.defined());
  ASSERT_EQ(one["generated"].size(), 2u) << one.dump();
  for (const std::string n : {"2", "3"})
    for (const std::string extra : {"", "--device-map auto --max-memory cpu=60000", "--prefill-chunk 2"}) {
      SCOPED_TRACE(n + " ranks " + extra);
      const auto [j, logits] = run("launch --nproc " + n + " --timeout 60 -- ", extra);
      ASSERT_TRUE(logits.defined());
      EXPECT_EQ(j["pipeline"]["world_size"], std::stoi(n)) << j.dump();
      EXPECT_EQ(j["generated"], one["generated"]) << j.dump();
      EXPECT_LT(max_abs_diff(logits, one_logits), 1e-5);
      if (extra.find("--device-map") != std::string::npos) {  // each rank's blocks stream from disk within its budget
        int on_disk = 0;
        for (int i = 0; i < 3; ++i) on_disk += j["device_map"]["transformer.h." + std::to_string(i)] == "disk";
        EXPECT_GT(on_disk, 0) << j["device_map"];
      }
    }
}

// The stages follow the run's work: the head (a vocabulary of 1,000 over 32 wide layers, about 3
// layers' worth in a decoding step) runs one position per prompt in a prefill, so a short prompt
// with tokens to decode splits 8 layers 6 + 2 (the head's rank holds fewer), and a prompt of 400
// positions with one new token splits them 4 + 4. Either way the token is one process's.
TEST(ModelsCli, PipelineStagesFollowTheRunsWork) {
  REQUIRE_CLI();
  TempDir tmp("stage_work");
  const std::string dir = (tmp.path() / "llama").string();
  {
    auto model = create_model(parse_config(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024})"));
    randomize(*model, 3);
    save_pretrained(*model, dir);
  }
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += (i ? " " : "") + std::to_string(1 + (i * 37) % 997);
  for (const auto& [ids, tokens, first_stage] : {std::tuple<std::string, int, std::string>{"1 2 3", 4, "0-5"},
                                                 {long_prompt, 1, "0-3"}}) {
    const std::string run = "run " + dir + " --ids '" + ids + "' --max-new-tokens " + std::to_string(tokens) + " --json";
    Result two = run_cli("launch --nproc 2 --timeout 60 -- " + run);
    ASSERT_EQ(two.status, 0) << two.out;
    EXPECT_NE(two.out.find("rank 0 of 2: decoder layers " + first_stage + " of 8"), std::string::npos) << two.out;
    Result one = run_cli(run, /*merge_stderr=*/false);
    ASSERT_EQ(one.status, 0) << one.out;
    const auto generated = [](const std::string& out) {
      const size_t at = out.find("{\"");
      return at == std::string::npos ? nlohmann::json() : nlohmann::json::parse(out.substr(at))["generated"];
    };
    const size_t json_line = two.out.find("[rank 0] {");
    ASSERT_NE(json_line, std::string::npos) << two.out;
    EXPECT_EQ(generated(two.out.substr(json_line, two.out.find('\n', json_line) - json_line)), generated(one.stdout_only));
  }
}

// Offload inside a stage: with --device-map auto each rank plans its own stage over its own
// --max-memory. 1,800,000 bytes each: rank 0 (layers 0-1) keeps room for one layer (726,016 bytes)
// to stream through, so only the embeddings (512,000) stay in RAM and both its layers go to disk,
// read in place per token (rank 1's layer 2 is never read there); the tokens and logits are still
// transformers'. A map file is refused across ranks.
TEST(ModelsCli, PipelineOffloadsInsideAStageOverEachRanksBudget) {
  REQUIRE_CLI();
  // One batch stepping together (with two groups in flight each group reads the layers: twice the bytes).
  nlohmann::json j = check_fixture("tiny_llama", "--device-map auto --max-memory cpu=1800000 --micro-batches 1", "",
                                   "launch --nproc 2 --timeout 60 -- ");
  EXPECT_EQ(j["pipeline"]["layers"], nlohmann::json::array({0, 2})) << j.dump();
  EXPECT_EQ(j["device_map"]["model.embed_tokens"], "cpu") << j["device_map"];
  for (const char* layer : {"model.layers.0", "model.layers.1", "model.layers.2"})
    EXPECT_EQ(j["device_map"][layer], "disk") << j["device_map"];
  EXPECT_EQ(j["timings"]["offloaded_bytes_per_token"].get<double>(), 2 * 726016.0)
      << j.dump() << ": rank 0 reads its own two layers per token, not rank 1's";
  Result file = run_cli("launch --nproc 2 --timeout 30 -- run " + fixture("tiny_llama") + " --ids '1 2' --device-map map.json");
  EXPECT_NE(file.status, 0);
  EXPECT_NE(file.out.find("--device-map across 2 ranks takes a strategy"), std::string::npos) << file.out;
  Result groups = run_cli("run " + fixture("tiny_llama") + " --ids '1 2' --micro-batches -1");
  EXPECT_NE(groups.status, 0);
  EXPECT_NE(groups.out.find("--micro-batches"), std::string::npos) << groups.out;
  EXPECT_NE(groups.out.find("not in range"), std::string::npos) << groups.out;
}

// Each rank's --max-memory is its share of the layers (ranks started by hand, as on two hosts):
// 1 GiB and 2 GiB split tiny_llama's 3 layers 1 + 2; without it, ranks of one host share its
// memory; a rank running another model is refused.
TEST(ModelsCli, PipelineStagesFollowEachRanksBudget) {
  REQUIRE_CLI();
  const std::string port = std::to_string(29400 + (::getpid() % 500));
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port + " FERRY_DIST_TIMEOUT=30 ";
  const std::string run = "run " + fixture("tiny_llama") + " --ids '1 2 3' --max-new-tokens 4 --json ";
  TempDir tmp("budgets");
  const std::string other = (tmp.path() / "rank1.txt").string();
  Result r0 = run_cli(run + "--max-memory cpu=1GiB", true,
                      "( RANK=1 " + env + "'" + cli_path() + "' " + run + "--max-memory cpu=2GiB > '" + other +
                          "' 2>&1 & ) ; RANK=0 " + env);
  ASSERT_EQ(r0.status, 0) << r0.out;
  EXPECT_NE(r0.out.find("rank 0 of 2: decoder layers 0-0 of 3 (budget 1.00 GiB; the head worth "), std::string::npos) << r0.out;
  EXPECT_NE(r0.out.find(" layers of work for this run)"), std::string::npos) << r0.out;
  for (int i = 0; i < 100 && !fs::exists(other); ++i) ::usleep(100000);
  ::usleep(300000);
  std::ifstream in(other);
  const std::string rank1((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(rank1.find("rank 1 of 2: decoder layers 1-2 of 3 (budget 2.00 GiB; "), std::string::npos) << rank1;

  // Without --max-memory, the ranks of one host (LOCAL_WORLD_SIZE, as `ferry launch` sets it)
  // each take half of its free RAM: not all of it twice.
  Result measured = run_cli("launch --nproc 2 --timeout 30 -- run " + fixture("tiny_llama") + " --ids '1 2 3' --max-new-tokens 2");
  ASSERT_EQ(measured.status, 0) << measured.out;
  const double available_gib = static_cast<double>(ferry::host_memory().available) / (1 << 30);
  for (const std::string rank : {"rank 0 of 2", "rank 1 of 2"}) {
    const size_t at = measured.out.find(rank + ": decoder layers");
    ASSERT_NE(at, std::string::npos) << measured.out;
    const size_t budget = measured.out.find("(budget ", at);
    ASSERT_NE(budget, std::string::npos) << measured.out;
    const double gib = std::stod(measured.out.substr(budget + 8));
    EXPECT_NE(measured.out.find(" GiB; ", budget), std::string::npos) << measured.out;
    EXPECT_LT(gib, 0.75 * available_gib) << rank << ": " << measured.out;
    EXPECT_GT(gib, 0.2 * available_gib) << rank << ": " << measured.out;
  }
  const std::string alone = "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=9 ";
  Result half = run_cli(run, true, alone + "LOCAL_RANK=1 ");
  EXPECT_EQ(half.status, 1) << half.out;
  EXPECT_NE(half.out.find("LOCAL_RANK is set but LOCAL_WORLD_SIZE is not: give both"), std::string::npos) << half.out;
  Result outside = run_cli(run, true, alone + "LOCAL_RANK=2 LOCAL_WORLD_SIZE=2 ");
  EXPECT_EQ(outside.status, 1) << outside.out;
  EXPECT_NE(outside.out.find("LOCAL_RANK='2' is not an integer in [0, 1]"), std::string::npos) << outside.out;

  Result mixed = run_cli(run, true, "( RANK=1 " + env + "'" + cli_path() + "' run " + fixture("tiny_qwen2") +
                                         " --ids '1 2 3' > /dev/null 2>&1 & ) ; RANK=0 " + env);
  EXPECT_EQ(mixed.status, 1) << mixed.out;
  EXPECT_NE(mixed.out.find("rank 1 runs Qwen2ForCausalLM"), std::string::npos) << mixed.out;
  EXPECT_NE(mixed.out.find("every rank must run the same model"), std::string::npos) << mixed.out;
}

// A program of one's own started by `ferry launch`, as torchrun starts a script:
// examples/pipeline_example.cpp splits a Sequential of 8 blocks over the ranks (SequentialPipeline),
// each rank holding only its blocks' weights; 2 and 3 ranks give the output of one process.
TEST(ModelsCli, LaunchRunsAProgramOfOnesOwnAsAPipeline) {
  REQUIRE_CLI();
  for (int n : {2, 3}) {
    Result r = run_cli("launch --nproc " + std::to_string(n) + " --timeout 60 -- '" + FERRY_PIPELINE_EXAMPLE_PATH + "'");
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("[rank 0] output Float [4, 16, 64], max difference from one process"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("the same"), std::string::npos) << r.out;
    const std::string last = "rank " + std::to_string(n - 1) + " of " + std::to_string(n) + ": blocks " +
                             (n == 2 ? "4-7" : "5-7");
    EXPECT_NE(r.out.find(last), std::string::npos) << r.out;
  }
  Result missing = run_cli("launch --nproc 2 --timeout 10 -- ./no/such/program");
  EXPECT_NE(missing.status, 0) << missing.out;
  EXPECT_NE(missing.out.find("cannot run ./no/such/program: No such file or directory"), std::string::npos) << missing.out;
}

// A rank that cannot reach the master says which address it tried, within the timeout.
TEST(ModelsCli, PipelineRankWithoutMasterNamesTheAddress) {
  REQUIRE_CLI();
  const auto t0 = std::chrono::steady_clock::now();
  Result r = run_cli("run " + fixture("tiny_llama") + " --ids '1 2 3' --max-new-tokens 2", true,
                     "RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=9 FERRY_DIST_TIMEOUT=2 ");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("rank 1 of 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("127.0.0.1:9"), std::string::npos) << r.out;
  EXPECT_LT(seconds, 30) << r.out;
  Result chat = run_cli("chat " + fixture("tiny_llama") + " < /dev/null", true,
                        "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=9 ");
  EXPECT_EQ(chat.status, 1) << chat.out;
  EXPECT_NE(chat.out.find("ferry chat runs in one process (WORLD_SIZE is 2)"), std::string::npos) << chat.out;
  Result bad = run_cli("run " + fixture("tiny_llama") + " --ids '1 2 3'", true, "RANK=2 WORLD_SIZE=2 ");
  EXPECT_EQ(bad.status, 1) << bad.out;
  EXPECT_NE(bad.out.find("RANK='2' is not an integer in [0, 1]"), std::string::npos) << bad.out;
}

// Killing one rank mid-run: the other stops within the timeout, naming the lost rank; `ferry
// launch` exits non-zero and says which rank failed.
TEST(ModelsCli, PipelineRankKilledStopsTheOthersCleanly) {
  REQUIRE_CLI();
  bool killed = false;
  const auto t0 = std::chrono::steady_clock::now();
  auto [status, text] = run_cli_watching(
      {"launch", "--nproc", "2", "--timeout", "10", "--", "run", fixture("tiny_llama"), "--ids", "1 2 3",
       "--max-new-tokens", "250"},
      [&](const std::string& out, pid_t launcher) {
        if (killed || out.find("[rank 1] loaded") == std::string::npos) return;  // (rank 1 prints only to stderr)
        // rank 1: the launcher's child whose environment says RANK=1
        for (const auto& [pid, env] : children_of(launcher))
          if (env.find(std::string("RANK=1\0", 7)) == 0 || env.find(std::string("\0RANK=1\0", 8)) != std::string::npos) {
            ::kill(pid, SIGKILL);
            killed = true;
          }
      });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(killed) << text;
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_NE(WEXITSTATUS(status), 0) << text;
  EXPECT_NE(text.find("[rank 0] ferry: error: "), std::string::npos) << text;
  EXPECT_NE(text.find("(rank 1 stopped"), std::string::npos) << text;
  EXPECT_NE(text.find("] step "), std::string::npos) << text << ": the step it stopped at";
  EXPECT_NE(text.find("ferry launch: rank"), std::string::npos) << text;
  EXPECT_LT(seconds, 40) << text;
}

// The rows a plain (non-JSON) run printed: "[rank 0]   [1 2 3] -> 5 6 7" gives {5, 6, 7}.
std::vector<std::vector<int64_t>> printed_rows(const std::string& text) {
  std::vector<std::vector<int64_t>> rows;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    const size_t row = line.find("[rank 0]   ["), arrow = line.find("] -> ");  // (after a terminal's "^C", say)
    if (row == std::string::npos || arrow == std::string::npos) continue;
    std::istringstream ids(line.substr(arrow + 5));
    rows.emplace_back(std::istream_iterator<int64_t>(ids), std::istream_iterator<int64_t>());
  }
  return rows;
}

// Ctrl-C across ranks (issue 17): every rank stops after the same token, whether the batch steps
// together or groups are in flight, whether the terminal interrupts every process or a signal
// reaches the launcher alone (it passes it on); rank 0 prints what was generated, each row as long
// as the other and the first tokens of an uninterrupted run; everything exits with 130, nothing is
// left running; with a launcher per "host" (--nnodes 2), a signal on one stops the other host's rank
// too. A launcher killed outright takes its ranks with it (they are sent SIGTERM).
TEST(ModelsCli, PipelineCtrlCStopsEveryRankAfterTheSameToken) {
  REQUIRE_CLI();
  const std::vector<std::string> run = {"run", fixture("tiny_llama"), "--ids", "1 2 3;4 5 6", "--max-new-tokens", "4000"};
  auto launch = [&](const std::string& micro_batches) {
    std::vector<std::string> args = {"launch", "--nproc", "2", "--timeout", "20", "--"};
    args.insert(args.end(), run.begin(), run.end());
    args.insert(args.end(), {"--micro-batches", micro_batches});
    return args;
  };
  auto generating = [](const std::string& out) {  // a moment into generating 4,000 tokens (about 30 s)
    if (out.find("[rank 0] generated:") == std::string::npos) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    return true;
  };
  auto check = [&](int status, const std::string& text, const char* how) {
    SCOPED_TRACE(how);
    ASSERT_TRUE(WIFEXITED(status)) << text;
    EXPECT_EQ(WEXITSTATUS(status), 130) << text;
    EXPECT_NE(text.find("[rank 0] ferry: interrupted by SIGINT; stopped cleanly"), std::string::npos) << text;
    EXPECT_NE(text.find("[rank 1] ferry: interrupted by SIGINT; stopped cleanly"), std::string::npos) << text;
    EXPECT_NE(text.find("ferry launch: stopped by SIGINT: rank 0 exited with 130, rank 1 exited with 130"),
              std::string::npos) << text;
    const auto rows = printed_rows(text);
    ASSERT_EQ(rows.size(), 2u) << text;
    EXPECT_EQ(rows[0].size(), rows[1].size()) << text;
    ASSERT_GT(rows[0].size(), 0u) << text;
    ASSERT_LT(rows[0].size(), 4000u) << text;
    Result whole = run_cli("run " + fixture("tiny_llama") + " --ids '1 2 3;4 5 6' --max-new-tokens " +
                           std::to_string(rows[0].size()) + " --json --quiet", /*merge_stderr=*/false);
    ASSERT_EQ(whole.status, 0) << whole.out;
    EXPECT_EQ(nlohmann::json::parse(whole.out)["generated"], nlohmann::json(rows)) << text;
  };
  {
    auto [status, text] = run_cli_in_terminal(launch("2"), generating);
    check(status, text, "Ctrl-C at a terminal, two groups in flight");
  }
  {
    bool sent = false;
    auto [status, text] = run_cli_watching(launch("1"), [&](const std::string& out, pid_t launcher) {
      if (!sent && generating(out)) sent = ::kill(launcher, SIGINT) == 0;
    });
    ASSERT_TRUE(sent) << text;
    check(status, text, "SIGINT to the launcher alone, one batch stepping together");
  }
  {
    // Two "hosts" (--nnodes 2, a launcher each): a signal on one host stops the other host's rank too,
    // after the same token (the stop travels with the data, not between launchers).
    const std::string port = std::to_string(20000 + ::getpid() % 20000);
    auto node = [&](const std::string& rank) {
      std::vector<std::string> args = {"launch", "--nnodes", "2", "--node-rank", rank, "--nproc", "1",
                                       "--master-port", port, "--timeout", "20", "--"};
      args.insert(args.end(), run.begin(), run.end());
      return args;
    };
    std::pair<int, std::string> other;
    std::thread host1([&] { other = run_cli_watching(node("1"), [](const std::string&, pid_t) {}); });
    bool sent = false;
    auto [status, text] = run_cli_watching(node("0"), [&](const std::string& out, pid_t launcher) {
      if (!sent && generating(out)) sent = ::kill(launcher, SIGINT) == 0;
    });
    host1.join();
    ASSERT_TRUE(sent) << text;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << text;
    EXPECT_NE(text.find("ferry launch: stopped by SIGINT: rank 0 exited with 130"), std::string::npos) << text;
    EXPECT_TRUE(WIFEXITED(other.first) && WEXITSTATUS(other.first) == 130) << other.second;
    EXPECT_NE(other.second.find("[rank 1] ferry: interrupted by SIGINT; stopped cleanly"), std::string::npos) << other.second;
    EXPECT_NE(other.second.find("ferry launch: rank 1 was interrupted (exit code 130)"), std::string::npos) << other.second;
    const auto rows = printed_rows(text);
    ASSERT_EQ(rows.size(), 2u) << text;
    EXPECT_EQ(rows[0].size(), rows[1].size()) << text;
  }
  std::vector<pid_t> ranks;
  auto t0 = std::chrono::steady_clock::now();
  auto [status, text] = run_cli_watching(launch("2"), [&](const std::string& out, pid_t launcher) {
    if (!ranks.empty() || !generating(out)) return;
    for (const auto& [pid, env] : children_of(launcher)) ranks.push_back(pid);
    ::kill(launcher, SIGKILL);
    t0 = std::chrono::steady_clock::now();
  });
  ASSERT_EQ(ranks.size(), 2u) << text;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << text;
  // (the output pipe stays open until both ranks have let go of it)
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15) << text;
  for (pid_t pid : ranks) {  // (it may still be exiting when its output closes)
    for (int i = 0; i < 100 && running(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(running(pid)) << "rank process " << pid << " outlived its launcher";
  }
}

// Two "hosts": network namespaces joined by a veth pair (iproute2, as root), one rank in each, the
// master's address on the first; the tokens and logits are transformers', as on one host. Skipped,
// saying why, where namespaces cannot be made.
TEST(ModelsCli, PipelineAcrossTwoNetworkNamespaces) {
  REQUIRE_CLI();
  const std::string id = std::to_string(::getpid() % 10000);
  const std::string a = "ferry_a" + id, b = "ferry_b" + id, va = "fva" + id, vb = "fvb" + id;
  const std::string net = "10.77." + std::to_string(::getpid() % 250) + ".";
  const std::string setup = "ip netns add " + a + " && ip netns add " + b + " && ip link add " + va +
                            " type veth peer name " + vb + " && ip link set " + va + " netns " + a + " && ip link set " +
                            vb + " netns " + b + " && ip -n " + a + " addr add " + net + "1/24 dev " + va + " && ip -n " +
                            b + " addr add " + net + "2/24 dev " + vb + " && ip -n " + a + " link set " + va +
                            " up && ip -n " + b + " link set " + vb + " up && ip -n " + a + " link set lo up && ip -n " + b +
                            " link set lo up";
  struct Cleanup {
    std::string a, b;
    ~Cleanup() { (void)std::system(("ip netns del " + a + " 2>/dev/null; ip netns del " + b + " 2>/dev/null").c_str()); }
  } cleanup{a, b};
  if (std::system((setup + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot make network namespaces here (needs root and iproute2's ip netns)";
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=" + net + "1 MASTER_PORT=29512 FERRY_DIST_TIMEOUT=60 ";
  // Rank 1 in the second namespace, in the background; rank 0 (the master) is checked as usual.
  TempDir tmp("netns");
  const std::string rank1_out = (tmp.path() / "rank1.txt").string();
  auto ref = ferry::io::SafetensorsFile::open(fixture("tiny_llama") + "/reference.safetensors");
  const std::string rank1 = "ip netns exec " + b + " env RANK=1 GLOO_SOCKET_IFNAME=" + vb + " " + env + "'" +
                            cli_path() + "' run " + fixture("tiny_llama") + " --ids " + ids_arg(ref.load("input_ids")) +
                            " --max-new-tokens 16 --dtype float32 --json --logits-out /dev/null";
  nlohmann::json j = check_fixture("tiny_llama", "", "( " + rank1 + " > '" + rank1_out + "' 2>&1 & ) ; ip netns exec " +
                                                         a + " env RANK=0 GLOO_SOCKET_IFNAME=" + va + " " + env);
  EXPECT_EQ(j["pipeline"]["world_size"], 2) << j.dump();
  for (int i = 0; i < 100 && !fs::exists(rank1_out); ++i) ::usleep(100000);
  ::usleep(500000);
  std::ifstream in(rank1_out);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("rank 1 of 2: decoder layers"), std::string::npos) << text;
  EXPECT_EQ(text.find("error"), std::string::npos) << text;
}

// `ferry run --device-map auto` on a mixture of experts plans by the expert (4 experts in RAM, the
// rest on disk: tests/models_moe_test.cpp's budget), prints a summary of the many keys instead of
// the map, and gives the resident tokens; --whole-layers plans Accelerate's way.
TEST(ModelsCli, MixtureOfExpertsPlannedByTheExpertFromTheCommandLine) {
  REQUIRE_CLI();
  const std::string run = "run " + fixture("tiny_mixtral") + " --ids '1 2 3' --max-new-tokens 6 --json";
  const std::string budget = " --device-map auto --max-memory cpu=1053904";
  Result resident = run_cli(run, false), by_expert = run_cli(run + budget, false);
  ASSERT_EQ(resident.status, 0) << resident.out;
  ASSERT_EQ(by_expert.status, 0) << by_expert.out;
  auto r = nlohmann::json::parse(resident.stdout_only), e = nlohmann::json::parse(by_expert.stdout_only);
  EXPECT_EQ(r["generated"], e["generated"]);
  EXPECT_EQ(e["device_map"]["model.layers.0.block_sparse_moe.experts.3"], "cpu") << e["device_map"];
  EXPECT_EQ(e["device_map"]["model.layers.0.block_sparse_moe.experts.4"], "disk") << e["device_map"];
  Result said = run_cli("run " + fixture("tiny_mixtral") + " --ids '1 2 3' --max-new-tokens 2" + budget);
  EXPECT_NE(said.out.find("device map: 21 keys: 16 on cpu, 5 on disk, listed by `ferry plan`"), std::string::npos)
      << said.out;
  Result whole = run_cli(run + budget + " --whole-layers", false);
  ASSERT_EQ(whole.status, 0) << whole.out;
  auto w = nlohmann::json::parse(whole.stdout_only);
  EXPECT_EQ(w["device_map"]["model.layers.1"], "disk") << w["device_map"];
  EXPECT_EQ(w["generated"], r["generated"]);
  // Where experts held in RAM run beside a GPU: every choice is accepted on a CPU machine (where
  // there is no choice to make: nothing is reported), a wrong one is refused naming the choices.
  for (const char* mode : {"auto", "compute", "copy"}) {
    Result chosen = run_cli(run + budget + " --cpu-experts " + mode, false);
    ASSERT_EQ(chosen.status, 0) << mode << chosen.out;
    auto c = nlohmann::json::parse(chosen.stdout_only);
    EXPECT_EQ(c["generated"], r["generated"]) << mode;
    EXPECT_FALSE(c["experts"].contains("cpu_experts")) << mode << ": the model executes on the CPU";
  }
  Result wrong = run_cli(run + " --cpu-experts gpu");
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.out.find("--cpu-experts: gpu not in {auto,compute,copy}"), std::string::npos) << wrong.out;
}
