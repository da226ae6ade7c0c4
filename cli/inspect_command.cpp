// ferry inspect PATH: what a checkpoint or offload folder holds, validated.

#include "commands.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/offload.h"
#include "ferry/io/sha256.h"

#include "ferry/io/json.h"

#include <cstdio>
#include <deque>
#include <filesystem>
#include <optional>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

namespace ferry::cli {
namespace {
namespace fs = std::filesystem;

// One tensor. Names and files view strings owned by the opened checkpoint or by Listing::storage:
// a listing of 100,000 tensors copies none of them.
struct Row {
  std::string_view name, file;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  int64_t numel = 0;
  std::string sha256;
};

struct Listing {
  std::string format;  // "safetensors", "pytorch" (a torch.save .bin checkpoint) or "offload_folder"
  std::optional<io::Checkpoint> checkpoint;
  std::deque<std::string> storage;  // strings the rows view, for offload folders
  std::vector<Row> rows;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

struct Total {
  uint64_t tensors = 0, bytes = 0;
  int64_t numel = 0;
};

// An offload folder: a folder with index.json (or that file) that is not a checkpoint.
bool is_offload_folder(const std::string& path, std::string& folder) {
  std::error_code ec;
  fs::path p(path);
  if (fs::is_regular_file(p, ec) && p.filename() == "index.json") p = p.parent_path();
  if (!fs::is_directory(p, ec) || !fs::is_regular_file(p / "index.json", ec)) return false;
  if (fs::is_regular_file(p / "model.safetensors", ec)) return false;
  for (const auto& e : fs::directory_iterator(p, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 11 && n.compare(n.size() - 11, 11, ".index.json") == 0) return false;
  }
  folder = p.string();
  return true;
}

Listing inspect(const std::string& path, bool checksum) {
  Listing listing;
  std::vector<Row>& rows = listing.rows;
  std::string folder;
  if (is_offload_folder(path, folder)) {
    listing.format = "offload_folder";
    const io::OffloadIndex index = io::read_offload_index(folder);
    for (const auto& name : index.names()) {
      const io::OffloadEntry& e = index.at(name);
      Row r;
      r.name = listing.storage.emplace_back(name);
      if (e.is_safetensors()) {
        fs::path file(e.safetensors_file);
        if (file.is_relative()) file = fs::path(folder) / file;
        io::SafetensorsFile f = io::SafetensorsFile::open(file.string());
        const std::string key = e.weight_name.empty() ? name : e.weight_name;
        const io::TensorEntry& t = f.entry(key);
        r.file = listing.storage.emplace_back(file.string());
        r.dtype = e.dtype.empty() ? dtype_name(t.dtype) : e.dtype;
        r.shape = t.shape;
        r.bytes = t.nbytes();
        if (checksum) r.sha256 = io::sha256_file_range(file.string(), f.header().data_offset + t.begin, t.nbytes());
      } else {
        r.file = listing.storage.emplace_back(io::offload_file_path(folder, name));
        r.dtype = e.dtype;
        r.shape = e.shape;
        const io::MappedOffloadedWeight dat = io::map_offloaded_bytes(std::string(r.file), e, "inspect");  // checks the size
        r.bytes = dat.map->size();
        if (checksum) r.sha256 = io::sha256_file_range(std::string(r.file), 0, r.bytes);
      }
      r.numel = numel_of(r.shape);
      rows.push_back(std::move(r));
    }
    return listing;
  }
  // A .bin checkpoint is listed from its pickles (in ferry-torch: see main.cpp).
  const io::Checkpoint& ckpt = listing.checkpoint.emplace(io::Checkpoint::open(path));
  listing.format = io::checkpoint_format_name(ckpt.format());
  FERRY_CHECK(!checksum || ckpt.format() == io::CheckpointFormat::safetensors, path,
              " is a PyTorch .bin checkpoint: --checksum hashes each tensor's stored byte range, and a .bin's tensors "
              "are zip records described by a pickle, not byte ranges; convert it (ferry convert) and inspect the result "
              "with --checksum");
  rows.reserve(ckpt.tensors().size());
  for (size_t i = 0; i < ckpt.files().size(); ++i) {
    for (const io::CheckpointTensor& t : ckpt.tensors_in(i)) {
      Row r;
      r.name = t.name;
      r.file = t.file;
      r.dtype = dtype_name(t.dtype);
      r.shape = t.shape;
      r.bytes = t.nbytes;
      r.numel = t.numel();
      if (checksum) r.sha256 = io::sha256_file_range(t.file, t.offset, t.nbytes);  // pread: no SIGBUS
      rows.push_back(std::move(r));
    }
  }
  return listing;
}

// Streams the JSON listing (one tensor per line), in the order of the rows.
void print_json(const std::string& path, const Listing& listing, bool checksum, const std::map<std::string_view, Total>& per_file,
                const std::map<std::string, Total>& per_dtype, const Total& all) {
  std::string out;
  out.reserve(listing.rows.size() * 160 + 4096);
  auto str = [&](std::string_view s) { io::append_json_string(out, s); };
  out += "{\n  \"path\": ";
  str(path);
  out += ",\n  \"format\": ";
  str(listing.format);
  out += ",\n  \"tensors\": [";
  for (size_t i = 0; i < listing.rows.size(); ++i) {
    const Row& r = listing.rows[i];
    out += i ? ",\n    {\"name\": " : "\n    {\"name\": ";
    str(r.name);
    out += ", \"dtype\": ";
    str(r.dtype);
    out += ", \"shape\": [";
    for (size_t d = 0; d < r.shape.size(); ++d) (out += d ? ", " : "") += std::to_string(r.shape[d]);
    out += "], \"bytes\": ";
    out += std::to_string(r.bytes);
    out += ", \"file\": ";
    str(r.file);
    if (checksum) {
      out += ", \"sha256\": ";
      str(r.sha256);
    }
    out += '}';
  }
  out += "\n  ],\n  \"files\": {";
  bool first = true;
  for (const auto& [k, t] : per_file) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    str(k);
    out += ": {\"tensors\": " + std::to_string(t.tensors) + ", \"bytes\": " + std::to_string(t.bytes) + "}";
  }
  out += "\n  },\n  \"dtypes\": {";
  first = true;
  for (const auto& [k, t] : per_dtype) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    str(k);
    out += ": {\"tensors\": " + std::to_string(t.tensors) + ", \"parameters\": " + std::to_string(t.numel) +
           ", \"bytes\": " + std::to_string(t.bytes) + "}";
  }
  out += "\n  },\n  \"total\": {\"tensors\": " + std::to_string(all.tensors) + ", \"parameters\": " +
         std::to_string(all.numel) + ", \"bytes\": " + std::to_string(all.bytes) + "}\n}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "List the tensors of a checkpoint (file, folder, index) or offload folder");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto checksum = std::make_shared<bool>(false);
  cmd->add_option("PATH", *path,
                  "a .safetensors or PyTorch .bin/.pt/.pth file, a checkpoint folder, an index .json, or an offload folder")
      ->required();
  cmd->add_flag("--json", *json, "machine-readable output");
  cmd->add_flag("--checksum", *checksum, "add the SHA-256 of each tensor's stored bytes");
  cmd->callback([path, json, checksum] {
    const Listing listing = inspect(*path, *checksum);
    const std::vector<Row>& rows = listing.rows;
    const std::string& format = listing.format;
    std::map<std::string_view, Total> per_file;
    std::map<std::string, Total> per_dtype;
    Total all;
    for (const Row& r : rows) {
      for (Total* t : {&per_file[r.file], &per_dtype[r.dtype], &all}) {
        t->tensors += 1;
        t->bytes += r.bytes;
        t->numel += r.numel;
      }
    }
    if (*json) {
      print_json(*path, listing, *checksum, per_file, per_dtype, all);
      finish_now();
    }
    size_t width = 4;
    for (const Row& r : rows) width = std::max(width, r.name.size());
    std::cout << *path << " (" << format << "): " << all.tensors << " tensors, " << all.numel << " parameters, "
              << format_bytes(static_cast<double>(all.bytes)) << "\n\n";
    for (const Row& r : rows) {
      std::cout << std::left << std::setw(static_cast<int>(width) + 2) << r.name << std::setw(10) << r.dtype
                << std::setw(18) << shape_text(r.shape) << std::right << std::setw(14) << r.bytes;
      if (*checksum) std::cout << "  " << r.sha256;
      std::cout << '\n';
    }
    std::cout << "\nper file:\n";
    for (const auto& [k, t] : per_file)
      std::cout << "  " << k << ": " << t.tensors << " tensors, " << t.bytes << " bytes\n";
    std::cout << "per dtype:\n";
    for (const auto& [k, t] : per_dtype)
      std::cout << "  " << k << ": " << t.tensors << " tensors, " << t.numel << " parameters, " << t.bytes
                << " bytes\n";
    finish_now();
  });
}

}  // namespace ferry::cli
