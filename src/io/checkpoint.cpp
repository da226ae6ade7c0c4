#include "ferry/io/checkpoint.h"

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <mutex>
#include <unordered_map>

namespace ferry::io {
namespace fs = std::filesystem;
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_pickle_name(const std::string& name) {
  return ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth");
}

// Pickles that sit in model folders without being weights (transformers' Trainer writes them).
bool is_training_file(const std::string& name) {
  return name == "training_args.bin" || name == "optimizer.pt" || name == "scheduler.pt" || name == "scaler.pt" ||
         name.rfind("rng_state", 0) == 0;
}

// An index of .bin shards, by transformers' naming (pytorch_model.bin.index.json).
bool is_pickle_index_name(const std::string& name) {
  return ends_with(name, ".bin.index.json") || ends_with(name, ".pt.index.json") || ends_with(name, ".pth.index.json");
}

std::mutex lister_mutex;
internal::TorchCheckpointLister torch_lister = nullptr;

}  // namespace

const char* checkpoint_format_name(CheckpointFormat format) {
  return format == CheckpointFormat::torch ? "pytorch" : "safetensors";
}

void internal::set_torch_checkpoint_lister(TorchCheckpointLister lister) {
  std::lock_guard<std::mutex> lock(lister_mutex);
  torch_lister = lister;
}

int64_t CheckpointTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// A shard name from an index, checked: it must name a file inside the index's folder.
std::string shard_path(const fs::path& folder, const std::string& index, const std::string& tensor,
                       const std::string& shard) {
  FERRY_CHECK(!shard.empty(), index, ": tensor '", tensor, "' maps to an empty shard name");
  const fs::path rel(shard);
  bool escapes = rel.is_absolute();
  for (const auto& part : rel) escapes = escapes || part == "..";
  FERRY_CHECK(!escapes, index, ": tensor '", tensor, "' maps to shard '", shard,
              "', which is outside the index's folder; shards must be plain names next to the index");
  return (folder / rel).string();
}

struct ParsedIndex {
  bool torch = false;  // a .bin checkpoint: only `torch_path` is set, the torch lister reads the rest
  std::string torch_path;
  std::string index_file;
  std::vector<std::string> files;                       // sorted, unique
  JsonDocument document;                                     // the index, kept for `claimed`
  std::vector<std::pair<std::string_view, size_t>> claimed;  // tensor (views `document`) -> its shard in `files`
  std::string metadata = "{}";
};

// The one reader of index files: parses once, checks every entry.
ParsedIndex parse_index(const std::string& index) {
  ParsedIndex out;
  out.index_file = index;
  try {
    out.document = read_json_file(index);
  } catch (const Error& e) {
    throw e.in("Checkpoint::open");
  }
  const JsonValue& root = out.document.root();
  FERRY_CHECK(root.is_object(), index, ": an index must be a JSON object {\"metadata\": ..., \"weight_map\": {...}}");
  JsonValue map = root;
  if (auto wm = root.find("weight_map")) {
    map = *wm;
    if (auto md = root.find("metadata")) out.metadata = md->dump(std::string::npos);
  } else {
    FERRY_CHECK(!root.find("metadata"), index,
                ": the index has \"metadata\" but no \"weight_map\"; a sharded checkpoint's index maps tensor "
                "names to shard files under \"weight_map\"");
  }
  FERRY_CHECK(map.is_object(), index, ": \"weight_map\" must map tensor names to shard files, got ", map.type_name());
  FERRY_CHECK(map.size() > 0, index, ": \"weight_map\" lists no tensors");
  const fs::path folder = fs::path(index).parent_path();
  {
    // The first entry decides the format: an index of .bin shards is the torch lister's to read.
    auto [first_tensor, first_value] = *map.items().begin();
    const auto first = first_value.as_string();
    if (first && is_pickle_name(std::string(*first))) {
      ParsedIndex torch;
      torch.torch = true;
      torch.torch_path = index;
      return torch;
    }
  }
  std::unordered_map<std::string_view, size_t> shard_ids;  // shard name -> position in `names`
  std::vector<std::string> full_paths;                      // checked, in order of first mention
  out.claimed.reserve(map.size());
  for (auto [tensor, value] : map.items()) {
    const auto shard = value.as_string();
    FERRY_CHECK(shard.has_value(), index, ": tensor '", tensor, "' must map to a shard file name, got ", value.dump());
    FERRY_CHECK(!is_pickle_name(std::string(*shard)), index, ": tensor '", tensor, "' maps to '", *shard,
                "', a PyTorch .bin shard, but the index's first entry names a safetensors shard; an index must "
                "name shards of one format (re-save the checkpoint, or convert it with ferry convert)");
    auto known = shard_ids.find(*shard);
    if (known == shard_ids.end()) {
      const std::string full = shard_path(folder, index, std::string(tensor), std::string(*shard));
      try {
        check_regular_file(full, "Checkpoint::open");
      } catch (const Error& e) {
        FERRY_FAIL(index, " names shard '", *shard, "' for tensor '", tensor, "', but ", e.message(),
                   e.message().find("does not exist") != std::string::npos ? ". Perhaps an incomplete download?" : "");
      }
      known = shard_ids.emplace(*shard, full_paths.size()).first;
      full_paths.push_back(full);
    }
    out.claimed.emplace_back(tensor, known->second);
  }
  // Shards in sorted order (as Accelerate streams them); claims renumbered to match.
  std::vector<size_t> order(full_paths.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return full_paths[a] < full_paths[b]; });
  std::vector<size_t> position(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    position[order[i]] = i;
    out.files.push_back(full_paths[order[i]]);
  }
  for (auto& claim : out.claimed) claim.second = position[claim.second];
  return out;
}

ParsedIndex resolve(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  const auto status = fs::status(p, ec);
  if (ec && ec.value() == ELOOP) FERRY_FAIL("checkpoint ", path, ": symbolic links that loop");
  FERRY_CHECK(fs::exists(status), "checkpoint ", path, " does not exist");
  std::string index;
  if (fs::is_directory(status)) {
    // Which weights the folder holds: safetensors (model.safetensors or an index of them) are read in
    // preference to PyTorch .bin ones (Accelerate prefers the .bin; the tensors are the same).
    std::vector<std::string> indexes;
    std::string pickle;  // a .bin weight file or index, if any (for the log line)
    for (const auto& entry : fs::directory_iterator(p, ec)) {
      const std::string name = entry.path().filename().string();
      if (is_pickle_index_name(name) || (is_pickle_name(name) && !is_training_file(name))) {
        if (pickle.empty() || name == "pytorch_model.bin" || name == "pytorch_model.bin.index.json") pickle = name;
      } else if (ends_with(name, ".index.json")) {
        indexes.push_back(entry.path().string());
      }
    }
    auto say_which = [&](const std::string& used) {
      if (!pickle.empty())
        log_info(::ferry::detail::concat("checkpoint ", path, " holds safetensors and PyTorch .bin weights (", pickle,
                                         "); reading the safetensors ones (", used,
                                         "). Accelerate would read the .bin; pass its file or index to read that"));
    };
    if (fs::is_regular_file(p / "model.safetensors", ec)) {
      say_which("model.safetensors");
      ParsedIndex out;
      out.files.push_back((p / "model.safetensors").string());
      return out;
    }
    std::sort(indexes.begin(), indexes.end());
    if (indexes.empty() && !pickle.empty()) {
      ParsedIndex torch;
      torch.torch = true;
      torch.torch_path = path;
      return torch;
    }
    if (indexes.empty())
      FERRY_FAIL(path, " is a folder without model.safetensors, a *.index.json file or PyTorch weights "
                       "(pytorch_model.bin); pass the checkpoint file itself, or a folder holding exactly one index");
    if (indexes.size() > 1) {
      std::string names;
      for (const auto& i : indexes) names += "\n  " + i;
      FERRY_FAIL(path, " holds ", indexes.size(), " index files; pass the one to use:", names);
    }
    say_which(fs::path(indexes.front()).filename().string());
    index = indexes.front();
  } else if (ends_with(path, ".json")) {
    index = path;
  } else {
    if (is_pickle_name(path)) {
      ParsedIndex torch;
      torch.torch = true;
      torch.torch_path = path;
      return torch;
    }
    ParsedIndex out;
    out.files.push_back(path);
    return out;
  }
  return parse_index(index);
}

}  // namespace

ResolvedCheckpoint resolve_checkpoint_files(const std::string& path) {
  ParsedIndex parsed;
  try {
    parsed = resolve(path);
    FERRY_CHECK(!parsed.torch, path, " is a PyTorch .bin checkpoint; io::resolve_torch_checkpoint resolves its files");
  } catch (const Error& e) {
    throw e.in("resolve_checkpoint_files");  // the API the user called, not the helper that failed
  }
  return ResolvedCheckpoint{parsed.index_file, std::move(parsed.files)};
}

CheckpointFormat checkpoint_format(const std::string& path) {
  try {
    return resolve(path).torch ? CheckpointFormat::torch : CheckpointFormat::safetensors;
  } catch (const Error& e) {
    throw e.in("checkpoint_format");
  }
}

Checkpoint Checkpoint::with_name_prefix(const std::string& prefix) const {
  Checkpoint out = *this;
  if (prefix.empty()) return out;
  out.name_prefix_ = prefix + name_prefix_;
  auto listing = std::make_shared<Listing>();
  listing->tensors = listing_->tensors;
  listing->shard_begin = listing_->shard_begin;
  for (CheckpointTensor& t : listing->tensors) t.name = prefix + t.name;
  out.listing_ = std::move(listing);
  return out;
}

Checkpoint Checkpoint::matched_to(const std::string& expected_name) const {
  const size_t dot = expected_name.find('.');
  if (dot == std::string::npos || contains(expected_name) || !contains(expected_name.substr(dot + 1))) return *this;
  return with_name_prefix(expected_name.substr(0, dot + 1));
}

Checkpoint Checkpoint::open(const std::string& path) {
  try {
    return open_checked(path);
  } catch (const Error& e) {
    throw e.in("Checkpoint::open");  // the API the user called, not the helper that failed
  }
}

Checkpoint Checkpoint::open_checked(const std::string& path) {
  Checkpoint ckpt;
  ParsedIndex resolved = resolve(path);
  if (resolved.torch) return open_torch(resolved.torch_path);
  ckpt.index_file_ = resolved.index_file;
  ckpt.index_metadata_ = resolved.metadata;
  ckpt.source_ = resolved.index_file.empty() ? resolved.files.front() : resolved.index_file;
  ckpt.files_ = resolved.files;

  auto shards = std::make_shared<std::vector<SafetensorsFile>>();
  shards->reserve(ckpt.files_.size());
  size_t total = 0;
  for (const std::string& file : ckpt.files_) {
    shards->push_back(SafetensorsFile::open(file));
    total += shards->back().tensors().size();
  }
  auto listing = std::make_shared<Listing>();
  std::vector<CheckpointTensor>& tensors = listing->tensors;
  tensors.reserve(total);
  for (size_t i = 0; i < shards->size(); ++i) {
    const SafetensorsFile& shard = (*shards)[i];
    const std::string& file = ckpt.files_[i];
    listing->shard_begin.push_back(tensors.size());
    for (const TensorEntry& e : shard.tensors()) {
      CheckpointTensor& t = tensors.emplace_back();
      t.name = e.name;
      t.stored_name = e.name;
      t.file = file;
      t.shard = i;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.offset = shard.header().data_offset + e.begin;
      t.nbytes = e.nbytes();
    }
  }
  listing->shard_begin.push_back(tensors.size());
  ckpt.shards_ = std::move(shards);
  ckpt.listing_ = std::move(listing);

  // The index's claims, checked against the shards' headers, each shard's own (small, cache-sized)
  // name table: every claim is in the shard it names. Claims are unique (the reader refuses a key
  // given twice), so when the shards hold as many tensors as the index names, none is stored twice;
  // otherwise the names are compared once (a shard may hold tensors its index leaves out, as
  // Accelerate loads them too).
  for (const auto& [name, shard] : resolved.claimed) {
    if ((*ckpt.shards_)[shard].header().find(std::string(name)) != nullptr) continue;
    const std::string& file = ckpt.files_[shard];
    const CheckpointTensor* t = ckpt.find(std::string(name));
    FERRY_CHECK(t != nullptr, resolved.index_file, " names tensor '", name, "' in ", file,
                ", but that shard holds no such tensor. Perhaps the index and shards come from different saves?");
    FERRY_FAIL(resolved.index_file, " names tensor '", name, "' in ", file, ", but it is stored in ", t->file);
  }
  if (ckpt.files_.size() > 1 && tensors.size() != resolved.claimed.size()) {
    std::unordered_map<std::string_view, size_t> seen;
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto [found, inserted] = seen.emplace(tensors[i].name, i);
      FERRY_CHECK(inserted, ckpt.source_, ": tensor '", tensors[i].name, "' is stored twice, in ",
                  tensors[found->second].file, " and in ", tensors[i].file);
    }
  }
  return ckpt;
}

Checkpoint Checkpoint::open_torch(const std::string& path) {
  internal::TorchCheckpointLister lister;
  {
    std::lock_guard<std::mutex> lock(lister_mutex);
    lister = torch_lister;
  }
  FERRY_CHECK(lister != nullptr, path,
              " is a PyTorch .bin checkpoint. Reading one needs LibTorch's zip reader (io/torch_checkpoint.cpp, in "
              "ferry::ferry), which this program does not contain: link ferry::ferry (with static libraries a program "
              "that calls none of its readers may leave it out; one call of io::list_torch_checkpoint brings it in), "
              "or convert the checkpoint once with\n  ferry convert '", path, "' OUT_FOLDER");
  internal::TorchCheckpointContents contents = lister(path);
  FERRY_CHECK(!contents.files.empty(), path, ": the PyTorch checkpoint has no weight files");
  Checkpoint ckpt;
  ckpt.format_ = CheckpointFormat::torch;
  ckpt.index_file_ = contents.index_file;
  ckpt.source_ = contents.index_file.empty() ? contents.files.front() : contents.index_file;
  ckpt.files_ = std::move(contents.files);
  ckpt.shards_ = std::make_shared<const std::vector<SafetensorsFile>>();
  auto listing = std::make_shared<Listing>();
  listing->tensors = std::move(contents.tensors);
  size_t shard = 0;
  for (size_t i = 0; i < listing->tensors.size(); ++i) {
    const size_t s = listing->tensors[i].shard;
    FERRY_ASSERT(s < ckpt.files_.size() && s >= shard, "tensor ", i, " of ", path, " in shard ", s);
    while (listing->shard_begin.size() <= s) listing->shard_begin.push_back(i);
    shard = s;
  }
  while (listing->shard_begin.size() <= ckpt.files_.size()) listing->shard_begin.push_back(listing->tensors.size());
  ckpt.listing_ = std::move(listing);
  return ckpt;
}

void Checkpoint::refuse_mapping(size_t shard) const {
  FERRY_FAIL(source_, ": shard ", shard, " (", shard < files_.size() ? files_[shard] : std::string("?"),
             ") is a PyTorch .bin file, which cannot be mapped and read in place; load its tensors with "
             "io::read_torch_state_dict (load_checkpoint_in_model does), or convert the checkpoint once with "
             "ferry convert");
}

const std::unordered_map<std::string_view, size_t>& Checkpoint::Listing::by_name() const {
  std::call_once(built_, [this] {
    by_name_.reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) by_name_.emplace(tensors[i].name, i);
  });
  return by_name_;
}

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  const auto& by_name = listing_->by_name();
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : &listing_->tensors[it->second];
}

const CheckpointTensor& Checkpoint::at(const std::string& name) const {
  const CheckpointTensor* t = find(name);
  FERRY_CHECK(t != nullptr, source_, ": no tensor named '", name, "' in the checkpoint (", listing_->tensors.size(),
              " tensors)");
  return *t;
}

Checkpoint::TensorRange Checkpoint::tensors_in(size_t shard) const {
  const Listing& l = *listing_;
  FERRY_ASSERT(shard + 1 < l.shard_begin.size(), "shard ", shard, " of ", files_.size());
  return TensorRange{l.tensors.data() + l.shard_begin[shard], l.tensors.data() + l.shard_begin[shard + 1]};
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& t : listing_->tensors) total += t.nbytes;
  return total;
}

const SafetensorsFile& Checkpoint::open_file(const std::string& file) const {
  for (size_t i = 0; i < files_.size(); ++i)
    if (files_[i] == file) return shard(i);
  FERRY_FAIL(source_, ": '", file, "' is not one of its ", files_.size(), " shard files");
}

}  // namespace ferry::io
