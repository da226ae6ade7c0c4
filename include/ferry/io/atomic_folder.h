#pragma once
/// \file
/// The folder counterpart of io/atomic_file.h: a folder of several files (an offload folder, a
/// saved model) replaced all-or-nothing. The new files are written into a staging folder beside the
/// target; files of the old folder that the new state keeps are carried over by hard link (no copy);
/// then the two folders swap by rename. A full disk, an I/O error or an interrupt part-way leaves the
/// old folder exactly as it was and no staging folder behind.
///
///     ferry::io::replace_folder("out/model",
///         [&](const std::string& staging) { write_shards(staging); },          // the new files
///         [](const std::string& name) { return name == "tokenizer.json"; });   // old files to keep

#include <functional>
#include <string>

namespace ferry::io {

/// Replaces (or creates) `folder`: `write(staging)` fills an empty staging folder beside it; every
/// file of the old folder for which `carry(name)` is true and that `write` did not create is then
/// linked in; the staging folder takes the place of `folder` (old -> backup, staging -> folder, the
/// backup removed last, so a crash between the renames leaves the old folder whole under the backup
/// name). If `write` or anything after it throws, the staging folder is removed and `folder` is
/// untouched. The parent folder is created when missing.
void replace_folder(const std::string& folder, const std::function<void(const std::string& staging)>& write,
                    const std::function<bool(const std::string& name)>& carry);

}  // namespace ferry::io
