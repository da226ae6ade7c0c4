// ferry convert SRC DST: a checkpoint (torch.save'd .bin/.pt/.pth, or safetensors) -> a safetensors
// checkpoint, sharded like transformers' save_pretrained, written all or nothing.

#include "commands.h"
#include "interrupt.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/io/atomic_folder.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/io/sharded_safetensors.h"
#include "ferry/io/torch_checkpoint.h"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <unordered_map>

namespace ferry::cli {
namespace {
namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Weight files and their indexes, which a conversion never copies along (it writes its own).
bool is_weight_file(const std::string& name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".safetensors", ".ckpt", ".h5", ".msgpack", ".gguf"})
    if (ends_with(name, ext)) return true;
  return ends_with(name, ".index.json");
}

// One tensor to write: its name and stored size, and where to read it.
struct Entry {
  std::string name;
  uint64_t nbytes = 0;
  size_t file = 0;  // torch: the file in the listing; safetensors: the shard
  std::string stored_name;
};

// The source checkpoint, listed once (no tensor bytes); tensors are read file after file.
class Source {
 public:
  explicit Source(const std::string& path) : torch_(io::is_torch_checkpoint(path)) {
    if (torch_) {
      io::TorchCheckpointListing listing = io::list_torch_checkpoint(path);
      files_ = listing.files.files;
      for (size_t i = 0; i < listing.tensors.size(); ++i)
        entries_.push_back({listing.tensors[i].name, listing.tensors[i].nbytes(), listing.file_of[i], listing.tensors[i].name});
    } else {
      checkpoint_ = std::make_unique<io::Checkpoint>(io::Checkpoint::open(path));
      files_ = checkpoint_->files();
      for (const io::CheckpointTensor& t : checkpoint_->tensors()) entries_.push_back({t.name, t.nbytes, t.shard, t.stored_name});
    }
  }
  bool torch() const { return torch_; }
  const char* format() const { return torch_ ? "PyTorch pickle (torch.save zip)" : "safetensors"; }
  const std::vector<std::string>& files() const { return files_; }
  const std::vector<Entry>& entries() const { return entries_; }

  // The tensor of `e`, read from its file (a .bin file is loaded whole, once, when first needed).
  at::Tensor tensor(const Entry& e) {
    if (!torch_) return checkpoint_->shard(e.file).view(e.stored_name);
    if (loaded_file_ != e.file) {
      loaded_.clear();
      for (auto& [name, t] : io::read_torch_state_dict(files_[e.file])) loaded_.emplace(name, std::move(t));
      loaded_file_ = e.file;
    }
    return loaded_.at(e.name);
  }

 private:
  bool torch_;
  std::vector<std::string> files_;
  std::vector<Entry> entries_;
  std::unique_ptr<io::Checkpoint> checkpoint_;
  size_t loaded_file_ = static_cast<size_t>(-1);
  std::unordered_map<std::string, at::Tensor> loaded_;
};

// The model folder whose other files (config.json, tokenizer) go along: SRC itself, or the folder of
// a file or index when it holds a config.json.
std::string model_folder(const std::string& src) {
  std::error_code ec;
  if (fs::is_directory(src, ec)) return src;
  const fs::path parent = fs::absolute(src, ec).parent_path();
  return fs::is_regular_file(parent / "config.json", ec) ? parent.string() : "";
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", kConvertDescription);
  auto src = std::make_shared<std::string>();
  auto dst = std::make_shared<std::string>();
  auto max_shard = std::make_shared<std::string>("5GB");
  cmd->add_option("SRC", *src,
                  "a .bin/.pt/.pth file, a pytorch_model.bin.index.json, a model folder, or any safetensors checkpoint")
      ->required();
  cmd->add_option("DST", *dst, "the output folder (replaced all or nothing; other files in it are kept)")->required();
  cmd->add_option("--max-shard-size", *max_shard, "largest shard, as transformers' save_pretrained (default 5GB)");
  cmd->callback([src, dst, max_shard] {
    const int64_t limit = parse_byte_size(*max_shard);
    FERRY_CHECK(limit > 0, "--max-shard-size must be positive, got ", *max_shard);
    Source source(*src);  // every header or pickle read and checked before anything is written
    const auto& entries = source.entries();
    FERRY_CHECK(!entries.empty(), *src, ": the checkpoint holds no tensors");

    std::vector<uint64_t> bytes;
    for (const auto& e : entries) bytes.push_back(e.nbytes);
    const io::ShardPlan plan = io::plan_shards(bytes, static_cast<uint64_t>(limit));  // as save_pretrained cuts them

    const std::string folder = model_folder(*src);
    std::vector<std::string> copied;
    install_interrupt_handlers();
    io::replace_folder(
        *dst,
        [&](const std::string& staging) {
          io::save_sharded_safetensors(staging, plan, [&](size_t i) {
            throw_if_interrupted();
            return std::make_pair(entries[i].name, source.tensor(entries[i]));
          });
          if (folder.empty()) return;
          std::error_code ec;
          for (const auto& entry : fs::directory_iterator(folder)) {
            const std::string name = entry.path().filename().string();
            if (!entry.is_regular_file(ec) || name.empty() || name[0] == '.' || is_weight_file(name)) continue;
            fs::copy_file(entry.path(), fs::path(staging) / name, fs::copy_options::overwrite_existing);
            copied.push_back(name);
          }
        },
        // Old files of DST stay unless they are safetensors weights this conversion replaces.
        [](const std::string& name) {
          return !(ends_with(name, ".safetensors") || name == "model.safetensors.index.json");
        });
    std::sort(copied.begin(), copied.end());
    std::cout << "read " << source.format() << " checkpoint " << *src << ": " << entries.size() << " tensors in "
              << source.files().size() << (source.files().size() == 1 ? " file" : " files") << " ("
              << format_bytes(static_cast<double>(plan.total_bytes)) << ")\n"
              << "wrote " << plan.shards.size() << " safetensors " << (plan.shards.size() == 1 ? "file" : "shards")
              << (plan.shards.size() > 1 ? " and model.safetensors.index.json" : "") << " to " << *dst << '\n';
    if (!copied.empty()) {
      std::cout << "copied along:";
      for (const std::string& name : copied) std::cout << ' ' << name;
      std::cout << '\n';
    }
  });
}

}  // namespace ferry::cli
