// ferry inspect PATH: what a checkpoint or offload folder holds, validated.

#include "commands.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/offload.h"
#include "ferry/io/sha256.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

namespace ferry::cli {
namespace {
namespace fs = std::filesystem;

struct Row {
  std::string name, file, dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  int64_t numel = 0;
  std::string sha256;
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

std::string inspect(const std::string& path, bool checksum, std::vector<Row>& rows) {
  std::string folder;
  if (is_offload_folder(path, folder)) {
    const io::OffloadIndex index = io::read_offload_index(folder);
    for (const auto& name : index.names()) {
      const io::OffloadEntry& e = index.at(name);
      Row r;
      r.name = name;
      if (e.is_safetensors()) {
        fs::path file(e.safetensors_file);
        if (file.is_relative()) file = fs::path(folder) / file;
        io::SafetensorsFile f = io::SafetensorsFile::open(file.string());
        const std::string key = e.weight_name.empty() ? name : e.weight_name;
        const io::TensorEntry& t = f.entry(key);
        r.file = file.string();
        r.dtype = e.dtype.empty() ? dtype_name(t.dtype) : e.dtype;
        r.shape = t.shape;
        auto [ptr, n] = f.bytes(key);
        r.bytes = n;
        if (checksum) r.sha256 = io::sha256_hex(ptr, n);
      } else {
        r.file = io::offload_file_path(folder, name);
        r.dtype = e.dtype;
        r.shape = e.shape;
        at::Tensor view = io::map_offloaded_weight(r.file, e);  // validates the .dat size
        r.bytes = static_cast<uint64_t>(view.numel()) * view.element_size();
        if (checksum) r.sha256 = io::sha256_hex(view.data_ptr(), r.bytes);
      }
      r.numel = numel_of(r.shape);
      rows.push_back(std::move(r));
    }
    return "offload_folder";
  }
  const io::Checkpoint ckpt = io::Checkpoint::open(path);
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
      if (checksum) {
        auto [ptr, n] = ckpt.shard(i).bytes(t.stored_name);
        r.sha256 = io::sha256_hex(ptr, n);
      }
      rows.push_back(std::move(r));
    }
  }
  return "safetensors";
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "List the tensors of a checkpoint (file, folder, index) or offload folder");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto checksum = std::make_shared<bool>(false);
  cmd->add_option("PATH", *path, "a .safetensors file, a checkpoint folder, an index .json, or an offload folder")
      ->required();
  cmd->add_flag("--json", *json, "machine-readable output");
  cmd->add_flag("--checksum", *checksum, "add the SHA-256 of each tensor's stored bytes");
  cmd->callback([path, json, checksum] {
    std::vector<Row> rows;
    const std::string format = inspect(*path, *checksum, rows);
    struct Total {
      uint64_t tensors = 0, bytes = 0;
      int64_t numel = 0;
    };
    std::map<std::string, Total> per_file, per_dtype;
    Total all;
    for (const Row& r : rows) {
      for (Total* t : {&per_file[r.file], &per_dtype[r.dtype], &all}) {
        t->tensors += 1;
        t->bytes += r.bytes;
        t->numel += r.numel;
      }
    }
    if (*json) {
      nlohmann::ordered_json out;
      out["path"] = *path;
      out["format"] = format;
      out["tensors"] = nlohmann::ordered_json::array();
      for (const Row& r : rows) {
        nlohmann::ordered_json t = {{"name", r.name}, {"dtype", r.dtype}, {"shape", r.shape},
                                    {"bytes", r.bytes}, {"file", r.file}};
        if (*checksum) t["sha256"] = r.sha256;
        out["tensors"].push_back(t);
      }
      for (const auto& [k, t] : per_file) out["files"][k] = {{"tensors", t.tensors}, {"bytes", t.bytes}};
      for (const auto& [k, t] : per_dtype)
        out["dtypes"][k] = {{"tensors", t.tensors}, {"parameters", t.numel}, {"bytes", t.bytes}};
      out["total"] = {{"tensors", all.tensors}, {"parameters", all.numel}, {"bytes", all.bytes}};
      std::cout << out.dump(2) << '\n';
      return;
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
  });
}

}  // namespace ferry::cli
