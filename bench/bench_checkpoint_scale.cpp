// How ferry's command line scales with the number of tensors in a checkpoint.
//
// Why: a 100k-tensor mixture-of-experts checkpoint (520 decoder layers x 64 experts x 3 projections
// + norms, 52 shards) took 92 s in `ferry plan`. Targets: `ferry plan DIR --json` and
// `ferry inspect DIR --json` of the ~100k-tensor 52-shard checkpoint, and `ferry plan TREE.json --json`
// of the same model as a model tree, each under 0.5 s as a whole process; 10x the tensors may cost
// at most 12x the time (linear scaling gives ~10x).
//
// What: it writes synthetic Hugging Face style MoE checkpoints (sparse safetensors shards, so the
// ~98 GiB checkpoint takes megabytes of disk) and model tree JSON files of the same models, then
// runs each ferry command as a child process, round-robin within each round (this machine is
// noisy), and reports the median/min/max wall clock of the whole process and the child's peak RSS.
// A `ferry --help` row shows the fixed cost of starting the process, which the 0.5 s includes.
// It uses only the standard library, POSIX and nlohmann/json: no ferry API, so it measures what a
// user of the CLI waits for.
//
// Sizes (L decoder layers; each layer is input_layernorm + 64 experts x {gate,up,down}_proj = 193
// tensors; plus embed_tokens, the final norm and lm_head):
//   small  :   52 layers ->    10,039 tensors, checkpoint (6 shards) + tree
//   medium :  520 layers ->   100,363 tensors, checkpoint (52 shards) + tree
//   large  : 5200 layers -> 1,003,603 tensors, tree only
//
//   cmake --build build --target bench_checkpoint_scale
//   ./build/bench_checkpoint_scale [--ferry build/ferry] [--dir WORK_DIR] [--sizes small,medium,large]
//                                  [--rounds 3] [--timeout 600] [--json] [--check]
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// ---- the model ---------------------------------------------------------------------------------

constexpr int64_t kHidden = 1024, kExpertFfn = 512, kVocab = 32000;
constexpr int kExperts = 64;
constexpr int64_t kBf16Bytes = 2;
constexpr int kTensorsPerLayer = 1 + kExperts * 3;  // input_layernorm + 64 x {gate,up,down}_proj = 193
constexpr int kGlobalTensors = 3;                   // embed_tokens, norm, lm_head
// Sized so that the 520-layer checkpoint has 52 shards, like the (the expert shapes make
// it ~98 GiB, so the shards hold ~1.9 GiB each); the same limit is used for every size.
constexpr int64_t kShardBytes = int64_t{1950} << 20;
constexpr const char* kStartup = "startup(--help)";
constexpr const char* kMaxMemory[] = {"0=20GiB,cpu=40GiB", "cpu=20GiB,disk=1000GiB", "cpu=20GiB"};

struct SizeSpec {
  std::string label;
  int layers;
  bool checkpoint;  // the million-tensor size is only a tree JSON
};

const std::vector<SizeSpec> kSizes = {{"small", 52, true}, {"medium", 520, true}, {"large", 5200, false}};

int64_t tensor_count(int layers) { return int64_t{layers} * kTensorsPerLayer + kGlobalTensors; }

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t nbytes() const {
    int64_t n = kBf16Bytes;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

const char* const kProjections[] = {"gate_proj", "up_proj", "down_proj"};
std::vector<int64_t> projection_shape(int p) {
  return p == 2 ? std::vector<int64_t>{kHidden, kExpertFfn} : std::vector<int64_t>{kExpertFfn, kHidden};
}

// Checkpoint order, as transformers saves it.
std::vector<TensorSpec> checkpoint_tensors(int layers) {
  std::vector<TensorSpec> out;
  out.reserve(static_cast<size_t>(tensor_count(layers)));
  out.push_back({"model.embed_tokens.weight", {kVocab, kHidden}});
  for (int i = 0; i < layers; ++i) {
    const std::string layer = "model.layers." + std::to_string(i) + ".";
    out.push_back({layer + "input_layernorm.weight", {kHidden}});
    for (int e = 0; e < kExperts; ++e)
      for (int p = 0; p < 3; ++p)
        out.push_back({layer + "mlp.experts." + std::to_string(e) + "." + kProjections[p] + ".weight",
                       projection_shape(p)});
  }
  out.push_back({"model.norm.weight", {kHidden}});
  out.push_back({"lm_head.weight", {kVocab, kHidden}});
  return out;
}

// ---- small helpers -----------------------------------------------------------------------------

volatile sig_atomic_t g_interrupted = 0;  // SIGINT/SIGTERM: stop, kill the child, clean up
volatile sig_atomic_t g_alarm = 0;        // the running child is past --timeout

void on_stop_signal(int) { g_interrupted = 1; }
void on_alarm(int) { g_alarm = 1; }

void check_interrupted() {
  if (g_interrupted) throw std::runtime_error("interrupted");
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string shape_json(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw std::runtime_error(path + ": write failed: " + std::strerror(errno));
    data += w;
    n -= static_cast<size_t>(w);
  }
}

// A buffered text file that reports errors (the tree JSON of a million tensors is ~200 MB).
class TextFile {
 public:
  explicit TextFile(std::string path) : path_(std::move(path)), f_(std::fopen(path_.c_str(), "wb")) {
    if (!f_) throw std::runtime_error(path_ + ": cannot create: " + std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~TextFile() {
    if (f_) std::fclose(f_);
  }
  TextFile(const TextFile&) = delete;
  TextFile& operator=(const TextFile&) = delete;
  TextFile& operator<<(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size()) fail();
    return *this;
  }
  void close() {
    FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0) fail();
  }

 private:
  [[noreturn]] void fail() { throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno)); }
  std::string path_;
  FILE* f_;
};

// ---- writing checkpoints and trees -------------------------------------------------------------

struct CheckpointInfo {
  int64_t tensors = 0, shards = 0, data_bytes = 0, disk_bytes = 0;
};

std::string shard_name(int64_t i, int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", static_cast<long long>(i + 1),
                static_cast<long long>(n));
  return buf;
}

// One shard: 8-byte little-endian header length, the JSON header padded with spaces to a multiple
// of 8, then the data, which is left as a hole by ftruncate (planning and inspecting read headers).
int64_t write_shard(const std::string& path, const std::vector<TensorSpec>& tensors, size_t begin, size_t end) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  int64_t offset = 0;
  for (size_t i = begin; i < end; ++i) {
    const int64_t n = tensors[i].nbytes();
    header += ",\"" + tensors[i].name + "\":{\"dtype\":\"BF16\",\"shape\":" + shape_json(tensors[i].shape) +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
    offset += n;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * b));

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create: " + std::strerror(errno));
  try {
    write_all(fd, reinterpret_cast<const char*>(len), 8, path);
    write_all(fd, header.data(), header.size(), path);
    if (::ftruncate(fd, static_cast<off_t>(8 + header.size() + offset)) != 0)
      throw std::runtime_error(path + ": ftruncate failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw std::runtime_error(path + ": close failed: " + std::strerror(errno));
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_blocks) * 512 : 0;
}

CheckpointInfo write_checkpoint(const fs::path& dir, int layers) {
  fs::create_directories(dir);
  const std::vector<TensorSpec> tensors = checkpoint_tensors(layers);
  // Greedy packing in checkpoint order, as save_pretrained does: [begin, end) per shard.
  std::vector<std::pair<size_t, size_t>> shards;
  int64_t in_shard = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].nbytes();
    if (shards.empty() || (in_shard > 0 && in_shard + n > kShardBytes)) {
      shards.push_back({i, i});
      in_shard = 0;
    }
    shards.back().second = i + 1;
    in_shard += n;
  }
  CheckpointInfo info;
  info.tensors = static_cast<int64_t>(tensors.size());
  info.shards = static_cast<int64_t>(shards.size());
  TextFile index((dir / "model.safetensors.index.json").string());
  for (const auto& t : tensors) info.data_bytes += t.nbytes();
  index << "{\"metadata\":{\"total_size\":" + std::to_string(info.data_bytes) + "},\"weight_map\":{";
  for (size_t s = 0; s < shards.size(); ++s) {
    check_interrupted();
    const std::string name = shard_name(static_cast<int64_t>(s), info.shards);
    info.disk_bytes += write_shard((dir / name).string(), tensors, shards[s].first, shards[s].second);
    for (size_t i = shards[s].first; i < shards[s].second; ++i)
      index << std::string(i ? "," : "") + "\"" + tensors[i].name + "\":\"" + name + "\"";
  }
  index << "}}\n";
  index.close();
  return info;
}

// ferry's planner format (shared/conformance/README.md): a node is
// {"name", "class", "params": [{"name", "shape", "dtype"}], "buffers": [], "children": [...]}.
void write_tree(const fs::path& path, int layers) {
  TextFile out(path.string());
  auto param = [](const std::string& name, const std::vector<int64_t>& shape) {
    return "{\"name\":\"" + name + "\",\"shape\":" + shape_json(shape) + ",\"dtype\":\"bfloat16\"}";
  };
  auto leaf = [&](const std::string& name, const char* cls, const std::vector<int64_t>& shape) {
    return "{\"name\":\"" + name + "\",\"class\":\"" + cls + "\",\"params\":[" + param("weight", shape) +
           "],\"buffers\":[],\"children\":[]}";
  };
  auto open_node = [](const std::string& name, const char* cls) {
    return "{\"name\":\"" + name + "\",\"class\":\"" + cls + "\",\"params\":[],\"buffers\":[],\"children\":[";
  };
  out << "{\"name\":\"\",\"class\":\"MoeForCausalLM\",\"params\":[],\"buffers\":[],\"children\":[";
  out << open_node("model", "MoeModel") + leaf("embed_tokens", "Embedding", {kVocab, kHidden}) + ",";
  out << open_node("layers", "ModuleList");
  // The expert block is the same text in every layer: build it once.
  std::string experts = open_node("experts", "ModuleList");
  for (int e = 0; e < kExperts; ++e) {
    experts += (e ? "," : "") + open_node(std::to_string(e), "MoeMLP");
    for (int p = 0; p < 3; ++p) experts += (p ? "," : "") + leaf(kProjections[p], "Linear", projection_shape(p));
    experts += "]}";
  }
  experts += "]}";
  const std::string norm = leaf("input_layernorm", "RMSNorm", {kHidden});
  for (int i = 0; i < layers; ++i) {
    if (i % 256 == 0) check_interrupted();
    out << std::string(i ? "," : "") + open_node(std::to_string(i), "MoeDecoderLayer") + norm + "," +
               open_node("mlp", "MoeSparseMoeBlock") + experts + "]}]}";
  }
  out << "]}," + leaf("norm", "RMSNorm", {kHidden}) + "]}," + leaf("lm_head", "Linear", {kVocab, kHidden}) + "]}\n";
  out.close();
}

// ---- running ferry -----------------------------------------------------------------------------

struct RunResult {
  bool ok = false;
  double seconds = 0;
  double peak_rss_mb = 0;
  std::string failure;  // why it failed, with the stderr tail
};

std::string file_tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > max_bytes ? "..." + s.substr(s.size() - max_bytes) : s;
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// fork + exec rather than posix_spawn: Linux carries the pre-exec memory's peak RSS into the
// child's ru_maxrss; a forked child starts with only our anonymous pages (the floor printed at the
// start), while a vfork-style spawn would start with all of ours, libtorch's file pages included.
RunResult run_child(const std::vector<std::string>& argv, const std::string& stderr_path, int timeout_s) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  RunResult r;
  g_alarm = 0;
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);  // its own process group, so a timeout kills anything it started too
    int null_fd = ::open("/dev/null", O_RDWR);
    int err_fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (null_fd < 0 || err_fd < 0) ::_exit(126);
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    ::dup2(err_fd, 2);
    ::execv(cargv[0], cargv.data());
    const char msg[] = "exec failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  if (timeout_s > 0) ::alarm(static_cast<unsigned>(timeout_s));
  int status = 0;
  struct rusage usage {};
  bool killed = false;
  for (;;) {
    pid_t w = ::wait4(pid, &status, 0, &usage);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      ::alarm(0);
      throw std::runtime_error(std::string("wait4 failed: ") + std::strerror(errno));
    }
    if ((g_alarm || g_interrupted) && !killed) {
      ::kill(-pid, SIGKILL);
      killed = true;
    }
  }
  ::alarm(0);
  r.seconds = seconds_since(start);
  r.peak_rss_mb = static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux
  check_interrupted();
  if (killed) {
    r.failure = "timed out after " + std::to_string(timeout_s) + " s (killed)";
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    r.ok = true;
    return r;
  } else if (WIFEXITED(status)) {
    r.failure = "exit status " + std::to_string(WEXITSTATUS(status));
  } else {
    r.failure = std::string("killed by signal ") + strsignal(WTERMSIG(status));
  }
  std::string tail = file_tail(stderr_path, 2000);
  r.failure += tail.empty() ? " (no stderr)" : "; stderr tail:\n" + tail;
  return r;
}

// ---- the benchmark -----------------------------------------------------------------------------

struct Options {
  std::string ferry;
  std::string dir;
  std::vector<std::string> sizes = {"small", "medium", "large"};
  int rounds = 3;
  int timeout_s = 600;
  bool json = false;
  bool check = false;
};

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "error: " << error << "\n"
            << "usage: bench_checkpoint_scale [--ferry PATH] [--dir WORK_DIR] [--sizes small,medium,large]\n"
            << "                              [--rounds N] [--timeout SECONDS] [--json] [--check]\n"
            << "  --json   print only the JSON summary on stdout (the table goes to stderr)\n"
            << "  --check  exit with status 3 when a target (< 0.5 s at ~100k tensors, 10x tensors <= 12x time) "
               "is missed\n";
  std::exit(2);
}

Options parse_args(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) usage(std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ferry") {
      o.ferry = value(i);
    } else if (a == "--dir") {
      o.dir = value(i);
    } else if (a == "--sizes") {
      o.sizes.clear();
      std::stringstream ss(value(i));
      std::string s;
      while (std::getline(ss, s, ',')) {
        bool known = std::any_of(kSizes.begin(), kSizes.end(), [&](const SizeSpec& k) { return k.label == s; });
        if (!known) usage("unknown size '" + s + "' (known: small, medium, large)");
        o.sizes.push_back(s);
      }
      if (o.sizes.empty()) usage("--sizes is empty");
    } else if (a == "--rounds") {
      o.rounds = std::atoi(value(i).c_str());
      if (o.rounds < 1) usage("--rounds must be at least 1");
    } else if (a == "--timeout") {
      o.timeout_s = std::atoi(value(i).c_str());
      if (o.timeout_s < 0) usage("--timeout must be >= 0 (0: none)");
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--check") {
      o.check = true;
    } else if (a == "-h" || a == "--help") {
      std::cout << "bench_checkpoint_scale: how ferry plan/inspect scale with the tensor count of a checkpoint\n"
                << "  [--ferry PATH] [--dir WORK_DIR] [--sizes small,medium,large] [--rounds N] [--timeout S] "
                   "[--json] [--check]\n";
      std::exit(0);
    } else {
      usage("unknown argument '" + a + "'");
    }
  }
  return o;
}

std::string default_ferry_path() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot read /proc/self/exe: " + ec.message() + "; pass --ferry PATH");
  return (self.parent_path() / "ferry").string();
}

/// The work folder; removes it at exit (normal, error or interrupt) when we made it.
class WorkDir {
 public:
  explicit WorkDir(const std::string& requested) {
    if (!requested.empty()) {
      path_ = fs::absolute(requested);
      fs::create_directories(path_);
      return;
    }
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ferry_bench_scale_XXXXXX";
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp(" + templ + ") failed: " + std::strerror(errno));
    path_ = templ;
    owned_ = true;
  }
  ~WorkDir() {
    if (!owned_) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
    if (ec) std::cerr << "warning: could not remove " << path_ << ": " << ec.message() << '\n';
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  const fs::path& path() const { return path_; }
  bool owned() const { return owned_; }

 private:
  fs::path path_;
  bool owned_ = false;
};

struct Measurement {
  std::string command;  // plan_checkpoint | inspect | plan_tree
  std::string size;
  int64_t tensors = 0, shards = 0;
  std::vector<double> seconds;
  double peak_rss_mb = 0;
  std::string failure;

  double median() const {
    std::vector<double> s = seconds;
    std::sort(s.begin(), s.end());
    const size_t n = s.size();
    return n == 0 ? 0 : n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }
  double min() const { return seconds.empty() ? 0 : *std::min_element(seconds.begin(), seconds.end()); }
  double max() const { return seconds.empty() ? 0 : *std::max_element(seconds.begin(), seconds.end()); }
};

int run_benchmark(const Options& opts) {
  std::ostream& out = opts.json ? std::cerr : std::cout;
  const std::string ferry = opts.ferry.empty() ? default_ferry_path() : opts.ferry;
  if (::access(ferry.c_str(), X_OK) != 0)
    throw std::runtime_error("ferry binary not found or not executable at " + ferry +
                             ": build it first with bash scripts/build.sh (or pass --ferry PATH)");

  WorkDir work(opts.dir);
  out << "ferry: " << ferry << "\nwork dir: " << work.path().string()
      << (work.owned() ? " (removed at exit)" : " (kept)") << "\nrounds: " << opts.rounds << "\n";
  const std::string err_path = (work.path() / "stderr.txt").string();

  // Which budget string the CLI accepts (a build without CUDA may refuse GPU 0): probe a 1-layer tree.
  const fs::path probe = work.path() / "probe_tree.json";
  write_tree(probe, 1);
  std::string budget;
  for (const char* candidate : kMaxMemory) {
    RunResult r = run_child({ferry, "plan", probe.string(), "--max-memory", candidate, "--json"}, err_path,
                            opts.timeout_s);
    if (r.ok) {
      budget = candidate;
      break;
    }
    out << "budget '" << candidate << "' refused: " << r.failure << "\n";
  }
  if (budget.empty()) throw std::runtime_error("ferry plan refused every --max-memory budget tried (see above)");
  out << "budget: --max-memory " << budget << "\n";

  // Our libtorch-linked process has anonymous pages a forked child starts with: the RSS floor.
  double rss_floor_mb = -1;
  if (::access("/bin/true", X_OK) == 0) {
    RunResult r = run_child({"/bin/true"}, err_path, opts.timeout_s);
    if (r.ok) rss_floor_mb = r.peak_rss_mb;
  }
  if (rss_floor_mb >= 0)
    out << "peak RSS floor (a forked /bin/true): " << fmt("%.0f", rss_floor_mb) << " MB; readings near it mean less\n";
  out << "\n";

  std::vector<Measurement> results;
  nlohmann::json generation = nlohmann::json::array();
  bool failed = false;
  for (const SizeSpec& size : kSizes) {
    if (std::find(opts.sizes.begin(), opts.sizes.end(), size.label) == opts.sizes.end()) continue;
    const fs::path base = work.path() / ("moe_" + std::to_string(size.layers) + "_layers");
    fs::remove_all(base);
    fs::create_directories(base);
    const int64_t tensors = tensor_count(size.layers);

    // Generation is timed apart: it is not part of the measurement.
    CheckpointInfo ckpt;
    const fs::path ckpt_dir = base / "checkpoint", tree = base / "tree.json";
    if (size.checkpoint) {
      auto t0 = std::chrono::steady_clock::now();
      ckpt = write_checkpoint(ckpt_dir, size.layers);
      const double s = seconds_since(t0);
      out << "generated " << size.label << " checkpoint: " << with_commas(ckpt.tensors) << " tensors, " << ckpt.shards
          << " shards, " << fmt("%.1f", static_cast<double>(ckpt.data_bytes) / (1 << 30)) << " GiB apparent, "
          << fmt("%.1f", static_cast<double>(ckpt.disk_bytes) / (1 << 20)) << " MiB on disk, in " << fmt("%.2f", s)
          << " s\n";
      generation.push_back({{"size", size.label}, {"what", "checkpoint"}, {"tensors", ckpt.tensors},
                            {"shards", ckpt.shards}, {"seconds", s}});
    }
    {
      auto t0 = std::chrono::steady_clock::now();
      write_tree(tree, size.layers);
      const double s = seconds_since(t0);
      out << "generated " << size.label << " tree JSON: " << with_commas(tensors) << " tensors, "
          << fmt("%.1f", static_cast<double>(fs::file_size(tree)) / (1 << 20)) << " MiB, in " << fmt("%.2f", s)
          << " s\n";
      generation.push_back({{"size", size.label}, {"what", "tree"}, {"tensors", tensors}, {"seconds", s}});
    }

    // Give the generator's heap back: a forked child's peak RSS starts at our resident memory.
    ::malloc_trim(0);

    struct Command {
      std::string label;
      std::vector<std::string> argv;
      int64_t shards;
    };
    // `ferry --help`: the fixed cost of starting the process (libtorch's loading) for scale.
    std::vector<Command> commands = {{kStartup, {ferry, "--help"}, 0}};
    if (size.checkpoint) {
      commands.push_back({"plan_checkpoint", {ferry, "plan", ckpt_dir.string(), "--max-memory", budget, "--json"},
                          ckpt.shards});
      commands.push_back({"inspect", {ferry, "inspect", ckpt_dir.string(), "--json"}, ckpt.shards});
    }
    commands.push_back({"plan_tree", {ferry, "plan", tree.string(), "--max-memory", budget, "--json"}, 0});

    const size_t first = results.size();
    for (const auto& c : commands) {
      Measurement m;
      m.command = c.label;
      m.size = size.label;
      m.tensors = c.label == kStartup ? 0 : tensors;  // --help reads no model
      m.shards = c.shards;
      results.push_back(m);
    }
    // Round-robin: one run of each command per round, so drift on a noisy machine hits all alike.
    for (int round = 0; round < opts.rounds; ++round) {
      for (size_t k = 0; k < commands.size(); ++k) {
        Measurement& m = results[first + k];
        if (!m.failure.empty()) continue;
        RunResult r = run_child(commands[k].argv, err_path, opts.timeout_s);
        if (!r.ok) {
          m.failure = r.failure;
          failed = true;
          out << "FAILED: " << command_line(commands[k].argv) << "\n  " << r.failure << "\n";
          continue;
        }
        m.seconds.push_back(r.seconds);
        m.peak_rss_mb = std::max(m.peak_rss_mb, r.peak_rss_mb);
        out << "  round " << round + 1 << "/" << opts.rounds << "  " << size.label << "  " << m.command << "  "
            << fmt("%.3f", r.seconds) << " s  " << fmt("%.0f", r.peak_rss_mb) << " MB\n";
      }
    }
    out.flush();
  }

  // ---- report ----
  out << "\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %-7s %10s %7s %9s %9s %9s %10s\n", "command", "size", "tensors", "shards",
                "median s", "min s", "max s", "peak RSS MB");
  out << line;
  for (const auto& m : results) {
    if (!m.failure.empty()) {
      std::snprintf(line, sizeof line, "%-16s %-7s %10s %7s %9s\n", m.command.c_str(), m.size.c_str(),
                    m.tensors ? with_commas(m.tensors).c_str() : "-",
                    m.shards ? std::to_string(m.shards).c_str() : "-", "FAILED");
    } else {
      std::snprintf(line, sizeof line, "%-16s %-7s %10s %7s %9.3f %9.3f %9.3f %10.0f\n", m.command.c_str(),
                    m.size.c_str(), m.tensors ? with_commas(m.tensors).c_str() : "-",
                    m.shards ? std::to_string(m.shards).c_str() : "-", m.median(), m.min(), m.max(), m.peak_rss_mb);
    }
    out << line;
  }

  // Targets: < 0.5 s at ~100k tensors; time(10x tensors) / time(1x) <= 12.
  bool targets_met = !failed;
  nlohmann::json ratios = nlohmann::json::array();
  auto find = [&](const std::string& command, const std::string& size) -> const Measurement* {
    for (const auto& m : results)
      if (m.command == command && m.size == size && m.failure.empty() && !m.seconds.empty()) return &m;
    return nullptr;
  };
  out << "\nscaling (median time ratio; linear ~10, target <= 12; 'net' subtracts each size's --help time):\n";
  bool any_ratio = false;
  for (const char* command : {"plan_checkpoint", "inspect", "plan_tree"}) {
    for (size_t s = 0; s + 1 < kSizes.size(); ++s) {
      const Measurement* a = find(command, kSizes[s].label);
      const Measurement* b = find(command, kSizes[s + 1].label);
      if (!a || !b) continue;
      any_ratio = true;
      const double ratio = b->median() / a->median();
      const double tensor_ratio = static_cast<double>(b->tensors) / static_cast<double>(a->tensors);
      const bool ok = ratio <= 12.0;
      targets_met = targets_met && ok;
      // Process start-up is a constant that hides how the work itself grows.
      const Measurement* sa = find(kStartup, a->size);
      const Measurement* sb = find(kStartup, b->size);
      std::optional<double> net;
      if (sa && sb && a->median() > sa->median() && b->median() > sb->median())
        net = (b->median() - sb->median()) / (a->median() - sa->median());
      std::snprintf(line, sizeof line, "  %-16s %-7s -> %-7s  tensors x%.2f  time x%.2f  net x%s  %s\n", command,
                    a->size.c_str(), b->size.c_str(), tensor_ratio, ratio, net ? fmt("%.2f", *net).c_str() : "?",
                    ok ? "ok" : "OVER TARGET");
      out << line;
      nlohmann::json r = {{"command", command}, {"from", a->size}, {"to", b->size}, {"tensor_ratio", tensor_ratio},
                          {"time_ratio", ratio}, {"ok", ok}};
      if (net) r["net_time_ratio"] = *net;
      ratios.push_back(r);
    }
  }
  if (!any_ratio) out << "  (needs two neighbouring sizes, e.g. --sizes small,medium)\n";
  out << "\ntargets at ~100k tensors (median < 0.5 s):\n";
  nlohmann::json targets = nlohmann::json::array();
  bool any_target = false;
  for (const char* command : {"plan_checkpoint", "inspect", "plan_tree"}) {
    const Measurement* m = find(command, "medium");
    if (!m) continue;
    any_target = true;
    const bool ok = m->median() < 0.5;
    targets_met = targets_met && ok;
    std::snprintf(line, sizeof line, "  %-16s %9.3f s  %s\n", command, m->median(), ok ? "ok" : "OVER TARGET");
    out << line;
    targets.push_back({{"command", command}, {"median_s", m->median()}, {"limit_s", 0.5}, {"ok", ok}});
  }
  if (!any_target) out << "  (needs --sizes medium)\n";


  nlohmann::json summary;
  summary["bench"] = "checkpoint_scale";
  summary["ferry"] = ferry;
  summary["max_memory"] = budget;
  summary["rounds"] = opts.rounds;
  summary["rss_floor_mb"] = rss_floor_mb;
  summary["generation"] = generation;
  summary["results"] = nlohmann::json::array();
  for (const auto& m : results) {
    nlohmann::json r = {{"command", m.command}, {"size", m.size}, {"tensors", m.tensors}, {"shards", m.shards}};
    if (m.failure.empty()) {
      r["median_s"] = m.median();
      r["min_s"] = m.min();
      r["max_s"] = m.max();
      r["peak_rss_mb"] = m.peak_rss_mb;
      r["seconds"] = m.seconds;
    } else {
      r["failure"] = m.failure;
    }
    summary["results"].push_back(r);
  }
  summary["ratios"] = ratios;
  summary["targets"] = targets;
  summary["failed"] = failed;
  summary["targets_met"] = targets_met;
  out.flush();
  std::cout << summary.dump() << std::endl;

  if (failed) return 1;
  return opts.check && !targets_met ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opts = parse_args(argc, argv);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: wait4 must return EINTR so the child can be killed
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, nullptr);
  try {
    return run_benchmark(opts);  // WorkDir's destructor has removed the work folder by now
  } catch (const std::exception& e) {
    std::cerr << "bench_checkpoint_scale: error: " << e.what() << '\n';
    return 1;
  }
}
