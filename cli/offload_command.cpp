// ferry offload CHECKPOINT OUT_DIR: write an Accelerate-compatible offload folder.

#include "commands.h"
#include "interrupt.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/offload.h"

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <iostream>
#include <memory>

namespace ferry::cli {

void add_offload_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("offload", kOffloadDescription);
  auto checkpoint = std::make_shared<std::string>();
  auto out_dir = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>();
  cmd->add_option("CHECKPOINT", *checkpoint, "a .safetensors file, a checkpoint folder or an index .json")->required();
  cmd->add_option("OUT_DIR", *out_dir, "the offload folder (created; an existing index.json is merged)")->required();
  cmd->add_option("--dtype", *dtype, "cast floating tensors to this dtype (e.g. float16)");
  cmd->callback([checkpoint, out_dir, dtype] {
    const io::Checkpoint ckpt = io::Checkpoint::open(*checkpoint);  // every header validated first
    c10::optional<c10::ScalarType> cast;
    if (!dtype->empty()) {
      cast = parse_dtype(*dtype);
      FERRY_CHECK(is_floating_dtype(*cast) && !c10::isComplexType(*cast), "--dtype ", *dtype,
                  ": floating tensors can be cast to float32, bfloat16 or float16, not to ", dtype_name(*cast));
    }
    for (const auto& t : ckpt.tensors()) (void)io::offload_dtype_tag(cast && is_floating_dtype(t.dtype) ? *cast : t.dtype);
    // All or nothing: the new files go to a staging folder that replaces OUT_DIR only once every
    // one is written; a full disk or Ctrl-C leaves OUT_DIR as it was.
    install_interrupt_handlers();
    uint64_t bytes = 0;
    size_t written = 0;
    io::update_offload_folder(*out_dir, [&](const std::string& staging, io::OffloadIndex& index) {
      for (size_t s = 0; s < ckpt.files().size(); ++s) {
        const io::SafetensorsFile& shard = ckpt.shard(s);
        for (const io::TensorEntry& e : shard.tensors()) {
          throw_if_interrupted();
          at::Tensor t = shard.view(e.name);
          if (cast && is_floating_dtype(e.dtype) && *cast != e.dtype) t = t.to(*cast);
          io::offload_weight(t, e.name, staging, &index);
          bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
          shard.mapping()->advise_dontneed(shard.header().data_offset + e.begin, e.nbytes());
        }
      }
      written = index.size();
    });
    std::cout << "wrote " << written << " tensors (" << format_bytes(static_cast<double>(bytes)) << ") to "
              << *out_dir << '\n';
  });
}

}  // namespace ferry::cli
