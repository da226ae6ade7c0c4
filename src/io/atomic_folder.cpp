#include "ferry/io/atomic_folder.h"

#include "ferry/core/error.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <system_error>

namespace ferry::io {
namespace fs = std::filesystem;
namespace {

// Removed on every exit path unless it became the folder.
struct StagingFolder {
  fs::path path;
  bool keep = false;
  ~StagingFolder() {
    if (keep || path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string unique_sibling(const fs::path& folder, const char* what) {
  static std::atomic<unsigned> counter{0};
  return folder.string() + "." + what + "." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

}  // namespace

void replace_folder(const std::string& folder, const std::function<void(const std::string& staging)>& write,
                    const std::function<bool(const std::string& name)>& carry) {
  const fs::path target = fs::path(folder).lexically_normal();
  FERRY_CHECK(!target.empty() && target.filename() != "" && target.filename() != "." && target.filename() != "..",
              "folder '", folder, "' has no name");
  std::error_code ec;
  const bool exists = fs::exists(target, ec);
  FERRY_CHECK(!exists || fs::is_directory(target, ec), folder, " exists and is not a folder");
  if (!target.parent_path().empty()) {
    fs::create_directories(target.parent_path(), ec);
    FERRY_CHECK(!ec, "cannot create ", target.parent_path().string(), ": ", ec.message());
  }
  StagingFolder staging{unique_sibling(target, "tmp")};
  fs::create_directory(staging.path, ec);
  FERRY_CHECK(!ec, "cannot create the staging folder ", staging.path.string(), ": ", ec.message());

  write(staging.path.string());

  if (exists) {
    for (const auto& entry : fs::directory_iterator(target, ec)) {
      const std::string name = entry.path().filename().string();
      if (!carry(name) || fs::exists(staging.path / name)) continue;
      fs::create_hard_link(entry.path(), staging.path / name, ec);
      if (ec) fs::copy(entry.path(), staging.path / name, fs::copy_options::recursive, ec);
      FERRY_CHECK(!ec, "cannot carry ", entry.path().string(), " into the updated folder: ", ec.message());
    }
    FERRY_CHECK(!ec, "cannot list ", folder, ": ", ec.message());
    const fs::path backup = unique_sibling(target, "old");
    fs::rename(target, backup, ec);
    FERRY_CHECK(!ec, "cannot move ", folder, " aside to update it: ", ec.message());
    fs::rename(staging.path, target, ec);
    if (ec) {
      std::error_code restore;
      fs::rename(backup, target, restore);
      FERRY_FAIL("cannot move the updated folder into place (", ec.message(), "); ", folder,
                 restore ? " is left whole at " + backup.string() : " is unchanged");
    }
    staging.keep = true;
    fs::remove_all(backup, ec);  // best effort: the update itself is complete
  } else {
    fs::rename(staging.path, target, ec);
    FERRY_CHECK(!ec, "cannot move the new folder ", folder, " into place: ", ec.message());
    staging.keep = true;
  }
}

}  // namespace ferry::io
