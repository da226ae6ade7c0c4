// The command line under generated hostile input (issue 13): random model trees, device maps,
// config.json values and damaged checkpoints, each run as a user runs it, inside a memory limit
// (ulimit -v) and a time limit. Every run must end with status 0, or 1 and a one-line
// "ferry: error:" message; never a signal, a backtrace or "unexpected error".
//
//   FERRY_CLI_FUZZ_CASES=2000 FERRY_CLI_FUZZ_SEED=7 build/tests/ferry_tests --gtest_filter='CliFuzz*'
//
// CI runs the default number of cases per family (a fixed seed, so a failure reproduces); the
// environment variables give longer searches.

#include "models_test_util.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using ferry::models::testing::fixture;
using ferry_test::TempDir;

int cases_per_family() {
  const char* v = std::getenv("FERRY_CLI_FUZZ_CASES");
  return v ? std::max(1, std::atoi(v)) : 40;
}

uint32_t seed() {
  const char* v = std::getenv("FERRY_CLI_FUZZ_SEED");
  return v ? static_cast<uint32_t>(std::strtoul(v, nullptr, 10)) : 20261202u;
}

struct Outcome {
  int status = -1;     // exit status, or 128 + signal
  std::string output;  // stdout and stderr
};

// Runs `ferry ARGS` under an 8 GiB address-space limit and a 60 s time limit. Sanitizer builds
// reserve terabytes of shadow address space, so there only the time limit applies.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr const char* kMemoryLimit = "";
#else
constexpr const char* kMemoryLimit = "ulimit -v 8388608; ";
#endif

Outcome run_limited(const std::string& args) {
  const std::string command = std::string("sh -c '") + kMemoryLimit + "exec timeout -s KILL 60 \"" +
                              std::string(FERRY_CLI_PATH) + "\" " + args + "' 2>&1";
  Outcome r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = ::pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// The contract: 0, or 1 with exactly one error line; warnings may precede it.
void expect_clean_outcome(const Outcome& r, const std::string& what) {
  ASSERT_TRUE(r.status == 0 || r.status == 1) << what << ": status " << r.status << "\n" << r.output;
  EXPECT_EQ(r.output.find("frame #"), std::string::npos) << what << "\n" << r.output;
  EXPECT_EQ(r.output.find("unexpected error"), std::string::npos) << what << "\n" << r.output;
  if (r.status == 1) {
    size_t errors = 0, pos = 0;
    while ((pos = r.output.find("ferry: error:", pos)) != std::string::npos) ++errors, ++pos;
    EXPECT_EQ(errors, 1u) << what << "\n" << r.output;
  }
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// ---- generators ---------------------------------------------------------------------------------

struct Gen {
  std::mt19937 rng;
  explicit Gen(uint32_t s) : rng(s) {}
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

  // Numbers that break things: zero, negative, huge, fractional, 2^63, 2^64, strings.
  nlohmann::json hostile_number() {
    switch (pick(10)) {
      case 0: return 0;
      case 1: return -1 - pick(100);
      case 2: return 1 + pick(64);
      case 3: return 3.5;
      case 4: return 1e9;
      case 5: return 4294967296LL;
      case 6: return 9223372036854775807LL;
      case 7: return nlohmann::json::parse("18446744073709551615");
      case 8: return "12";
      default: return nullptr;
    }
  }
  nlohmann::json size() { return chance(0.8) ? nlohmann::json(1 + pick(64)) : hostile_number(); }
  std::string dtype() {
    static const char* names[] = {"float32", "bfloat16", "float16", "int8", "bool", "complex64", "float128", ""};
    return names[pick(8)];
  }

  nlohmann::json tree(int depth, std::vector<std::string>& modules, std::vector<std::string>& tensors,
                      const std::string& path) {
    nlohmann::json node = {{"class", chance(0.3) ? "Block" : "Linear"}};
    nlohmann::json params = nlohmann::json::array();
    for (int i = 0, n = pick(3); i < n; ++i) {
      const std::string name = chance(0.05) ? "w.x" : "w" + std::to_string(i);
      nlohmann::json p = {{"name", name}};
      if (chance(0.1) && !tensors.empty()) {
        p["tied_to"] = chance(0.8) ? tensors[static_cast<size_t>(pick(static_cast<int>(tensors.size())))] : "nowhere";
      } else if (chance(0.9)) {
        nlohmann::json shape = nlohmann::json::array();
        for (int d = 0, dims = pick(4); d < dims; ++d) shape.push_back(size());
        p["shape"] = chance(0.95) ? shape : nlohmann::json("oops");
        if (chance(0.95)) p["dtype"] = dtype();
      }
      tensors.push_back(path.empty() ? name : path + "." + name);
      params.push_back(p);
    }
    node["params"] = params;
    nlohmann::json children = nlohmann::json::array();
    for (int i = 0, n = depth > 0 ? pick(4) : 0; i < n; ++i) {
      const std::string name = std::to_string(i);
      const std::string child_path = path.empty() ? name : path + "." + name;
      if (chance(0.15) && !modules.empty()) {
        children.push_back({{"name", name}, {"same_module_as", modules[static_cast<size_t>(pick(static_cast<int>(modules.size())))]}});
        continue;
      }
      modules.push_back(child_path);
      nlohmann::json child = tree(depth - 1, modules, tensors, child_path);
      child["name"] = chance(0.02) ? nlohmann::json(7) : nlohmann::json(name);
      children.push_back(child);
    }
    node["children"] = children;
    return node;
  }

  // Truncates or flips a byte of some text, sometimes.
  std::string damage(std::string text) {
    if (text.empty() || chance(0.5)) return text;
    if (chance(0.5)) return text.substr(0, static_cast<size_t>(pick(static_cast<int>(text.size()))));
    text[static_cast<size_t>(pick(static_cast<int>(text.size())))] = static_cast<char>(pick(256));
    return text;
  }
};

class CliFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(FERRY_CLI_PATH).empty() || !fs::exists(FERRY_CLI_PATH)) GTEST_SKIP() << "ferry CLI not built";
  }
};

}  // namespace

TEST_F(CliFuzz, RandomModelTreesArePlannedOrRefused) {
  Gen gen(seed());
  TempDir dir("fuzz_tree");
  for (int c = 0; c < cases_per_family() * 2; ++c) {
    std::vector<std::string> modules, tensors;
    nlohmann::json root = gen.tree(1 + gen.pick(5), modules, tensors, "");
    const std::string path = dir.file("tree" + std::to_string(c) + ".json");
    write_text(path, gen.damage(root.dump()));
    const char* budgets[] = {"cpu=1MiB", "0=1KiB,cpu=10KiB", "cpu=0", "cpu=1GiB,disk=1GiB"};
    const Outcome r = run_limited("plan '" + path + "' --max-memory " + budgets[gen.pick(4)] + (gen.chance(0.5) ? " --json" : ""));
    expect_clean_outcome(r, "tree case " + std::to_string(c) + ": " + path);
    if (HasFatalFailure()) return;
  }
}

TEST_F(CliFuzz, RandomDeviceMapsRunOrAreRefused) {
  Gen gen(seed() + 1);
  TempDir dir("fuzz_map");
  const char* keys[] = {"", "model", "model.embed_tokens", "model.layers", "model.layers.0", "model.layers.2.mlp",
                        "model.layers.7", "lm_head", "lm_head.weight", "model.norm.weight", "model..x"};
  const nlohmann::json values[] = {"cpu", "disk", "meta", 0, 7, "0", "cuda:1", "mps", -1, nullptr, 3.5, "gpu"};
  for (int c = 0; c < cases_per_family(); ++c) {
    nlohmann::json map = nlohmann::json::object();
    for (int i = 0, n = 1 + gen.pick(4); i < n; ++i) map[keys[gen.pick(11)]] = values[gen.pick(12)];
    if (gen.chance(0.5)) map[""] = "cpu";
    const std::string path = dir.file("map" + std::to_string(c) + ".json");
    write_text(path, gen.damage(map.dump()));
    const Outcome r = run_limited("run '" + fixture("tiny_llama") + "' --ids '1 2' --max-new-tokens 1 --device-map '" + path + "'");
    expect_clean_outcome(r, "device map case " + std::to_string(c) + ": " + map.dump());
    if (HasFatalFailure()) return;
  }
}

TEST_F(CliFuzz, RandomConfigValuesRunOrAreRefused) {
  Gen gen(seed() + 2);
  const std::string source = fixture("tiny_llama");
  std::ifstream in(source + "/config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  const char* fields[] = {"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                          "dtype", "architectures", "model_type", "tie_word_embeddings", "rope_parameters"};
  for (int c = 0; c < cases_per_family(); ++c) {
    TempDir dir("fuzz_config");
    for (const auto& e : fs::directory_iterator(source))
      if (e.path().filename() != "config.json") fs::create_symlink(e.path(), fs::path(dir.str()) / e.path().filename());
    nlohmann::json mutated = config;
    for (int i = 0, n = 1 + gen.pick(2); i < n; ++i) {
      const char* field = fields[gen.pick(14)];
      mutated[field] = gen.chance(0.15) ? nlohmann::json(gen.dtype()) : gen.hostile_number();
    }
    write_text(dir.file("config.json"), gen.damage(mutated.dump()));
    const Outcome r = run_limited("run '" + dir.str() + "' --ids '1 2' --max-new-tokens 1");
    expect_clean_outcome(r, "config case " + std::to_string(c) + ": " + mutated.dump());
    if (HasFatalFailure()) return;
  }
}

TEST_F(CliFuzz, DamagedCheckpointsAreReadOrRefused) {
  Gen gen(seed() + 3);
  const std::string source = fixture("tiny_qwen2");
  for (int c = 0; c < cases_per_family(); ++c) {
    TempDir dir("fuzz_ckpt");
    std::vector<fs::path> shards;
    for (const auto& e : fs::directory_iterator(source)) {
      fs::copy_file(e.path(), fs::path(dir.str()) / e.path().filename());
      if (e.path().extension() == ".safetensors" && e.path().filename() != "reference.safetensors")
        shards.push_back(fs::path(dir.str()) / e.path().filename());
    }
    // Damage one shard's first bytes (header length or JSON), the index, or truncate a shard.
    std::string target = gen.chance(0.3) ? dir.file("model.safetensors.index.json")
                                         : shards[static_cast<size_t>(gen.pick(static_cast<int>(shards.size())))].string();
    std::ifstream f(target, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    f.close();
    const size_t span = std::min<size_t>(bytes.size(), 600);
    switch (gen.pick(3)) {
      case 0: bytes[static_cast<size_t>(gen.pick(static_cast<int>(span)))] = static_cast<char>(gen.pick(256)); break;
      case 1: bytes.resize(static_cast<size_t>(gen.pick(static_cast<int>(bytes.size())))); break;
      default: bytes.insert(static_cast<size_t>(gen.pick(static_cast<int>(span))), std::string(1 + gen.pick(4), '"'));
    }
    write_text(target, bytes);
    const std::string command = gen.chance(0.5) ? "inspect --checksum '" + dir.str() + "'"
                                                : "run '" + dir.str() + "' --ids '1 2' --max-new-tokens 1";
    const Outcome r = run_limited(command);
    expect_clean_outcome(r, "checkpoint case " + std::to_string(c) + ": " + target);
    if (HasFatalFailure()) return;
  }
}
