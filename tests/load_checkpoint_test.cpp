// load_checkpoint_in_model on real files: Accelerate's tests (section P of the spec's test list) and
// the fixtures streamed into a model built from their headers.

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/checkpoint.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module_tensors.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

using namespace ferry;
using ferry::test::data_dir;
using ferry::test::same_bits;
using ferry::test::TempDir;
using ferry::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// Accelerate's ModelForTest: linear1 (3->4), batchnorm (4), linear2 (4->5).
std::shared_ptr<Module> make_batchnorm(int64_t n) {
  auto bn = std::make_shared<Module>("BatchNorm1d");
  bn->register_parameter("weight", at::ones({n}), true);
  bn->register_parameter("bias", at::zeros({n}), true);
  bn->register_buffer("running_mean", at::zeros({n}));
  bn->register_buffer("running_var", at::ones({n}));
  bn->register_buffer("num_batches_tracked", at::scalar_tensor(0, at::kLong));
  return bn;
}

std::shared_ptr<Module> make_model_for_test() {
  auto m = std::make_shared<Module>("ModelForTest");
  m->register_module("linear1", std::make_shared<Linear>(3, 4));
  m->register_child("batchnorm", make_batchnorm(4));
  m->register_module("linear2", std::make_shared<Linear>(4, 5));
  return m;
}

// A state dict with recognisable values (not the model's initial ones).
io::NamedTensors reference_state_dict() {
  return {{"linear1.weight", at::randn({4, 3})},       {"linear1.bias", at::randn({4})},
          {"batchnorm.weight", at::randn({4})},        {"batchnorm.bias", at::randn({4})},
          {"batchnorm.running_mean", at::randn({4})},  {"batchnorm.running_var", at::rand({4}) + 1},
          {"batchnorm.num_batches_tracked", at::scalar_tensor(7, at::kLong)},
          {"linear2.weight", at::randn({5, 4})},       {"linear2.bias", at::randn({5})}};
}

at::Tensor get(Module& m, const std::string& name) {
  auto [owner, leaf] = resolve_tensor_owner(m, name);
  return owner->has_buffer(leaf) ? owner->buffer(leaf) : owner->parameter(leaf);
}

// Writes `sd` as one file, as three shards + "weight_map.index.json", in `dir`; returns the three
// checkpoint paths Accelerate's test uses: file, index, folder.
std::vector<std::string> write_layouts(const io::NamedTensors& sd, const TempDir& dir) {
  fs::create_directories(dir.file("single"));
  fs::create_directories(dir.file("sharded"));
  io::save_safetensors(dir.file("single/model.safetensors"), sd);
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  for (const char* module : {"linear1", "batchnorm", "linear2"}) {
    io::NamedTensors part;
    for (const auto& [k, v] : sd)
      if (k.rfind(std::string(module) + ".", 0) == 0) {
        part.push_back({k, v});
        index += std::string(index.back() == '{' ? "" : ", ") + "\"" + k + "\": \"" + module + ".safetensors\"";
      }
    io::save_safetensors(dir.file("sharded/" + std::string(module) + ".safetensors"), part);
  }
  write_bytes(dir.file("sharded/weight_map.index.json"), index + "}}");
  return {dir.file("single/model.safetensors"), dir.file("sharded/weight_map.index.json"), dir.file("sharded")};
}

}  // namespace

// accelerate test_load_checkpoint_in_model: the three layouts, no device map.
TEST(CheckpointLoadTest, LoadsFileIndexAndFolder) {
  TempDir dir;
  const auto sd = reference_state_dict();
  for (const auto& path : write_layouts(sd, dir)) {
    auto model = make_model_for_test();
    LoadCheckpointResult r = load_checkpoint_in_model(*model, path);
    EXPECT_TRUE(r.unexpected_keys.empty());
    EXPECT_TRUE(r.missing_keys.empty());
    for (const auto& [k, v] : sd) EXPECT_TRUE(same_bits(get(*model, k), v)) << path << " " << k;
  }
}

TEST(CheckpointLoadTest, EmptyModelWithoutMapLandsOnCpu) {
  TempDir dir;
  const auto sd = reference_state_dict();
  const auto paths = write_layouts(sd, dir);
  std::shared_ptr<Module> model;
  {
    auto guard = init_empty_weights(/*include_buffers=*/true);
    model = make_model_for_test();
  }
  ASSERT_TRUE(get(*model, "linear1.weight").is_meta());
  load_checkpoint_in_model(*model, paths[1]);
  for (const auto& [k, v] : sd) {
    EXPECT_TRUE(get(*model, k).device().is_cpu()) << k;
    EXPECT_TRUE(same_bits(get(*model, k), v)) << k;
  }
}

// accelerate test_load_checkpoint_in_model_disk_offload (+ ferry's in-place disk weights).
TEST(CheckpointLoadTest, DiskOffloadReadsInPlaceOrWritesTheFolder) {
  TempDir dir;
  const auto sd = reference_state_dict();
  const auto paths = write_layouts(sd, dir);
  const DeviceMap map{{"linear1", Placement::cpu()}, {"batchnorm", Placement::disk()}, {"linear2", Placement::cpu()}};
  for (const auto& path : paths) {
    for (bool in_place : {true, false}) {
      for (bool offload_buffers : {false, true}) {
        auto model = make_model_for_test();
        LoadCheckpointOptions o;
        o.device_map = map;
        o.disk_in_place = in_place;
        o.offload_buffers = offload_buffers;
        TempDir folder;
        o.offload_folder = folder.str();
        LoadCheckpointResult r = load_checkpoint_in_model(*model, path, o);
        EXPECT_TRUE(get(*model, "batchnorm.weight").is_meta());
        EXPECT_EQ(get(*model, "batchnorm.running_mean").is_meta(), offload_buffers);
        if (!offload_buffers) {
          // ferry loads disk-placed buffers (Accelerate silently keeps the model's values, spec 9.11).
          EXPECT_TRUE(same_bits(get(*model, "batchnorm.running_mean"), sd[4].second));
        }
        EXPECT_TRUE(same_bits(get(*model, "linear2.weight"), sd[7].second));
        ASSERT_NE(r.disk_weights, nullptr);
        EXPECT_EQ(r.disk_keys.size(), offload_buffers ? 5u : 2u);
        for (const auto& k : r.disk_keys) {
          const at::Tensor expected = std::find_if(sd.begin(), sd.end(), [&](auto& kv) { return kv.first == k; })->second;
          EXPECT_TRUE(same_bits(r.disk_weights->load(k), expected)) << k;
        }
        const bool folder_written = io::has_offload_index(folder.str());
        EXPECT_EQ(folder_written, !in_place) << "in place: no second copy";
        if (!in_place) EXPECT_TRUE(fs::exists(folder.file("batchnorm.weight.dat")));
      }
    }
  }
}

TEST(CheckpointLoadTest, DiskWithoutFolderIsAnErrorOnlyWhenCopying) {
  TempDir dir;
  const auto paths = write_layouts(reference_state_dict(), dir);
  auto model = make_model_for_test();
  LoadCheckpointOptions o;
  o.device_map = DeviceMap{{"", Placement::disk()}};
  o.disk_in_place = false;
  EXPECT_FERRY_ERROR(load_checkpoint_in_model(*model, paths[0], o), "places weights on disk, but no offload_folder");
  EXPECT_FALSE(get(*model, "linear1.weight").is_meta()) << "nothing was touched";
  o.disk_in_place = true;
  EXPECT_NO_THROW(load_checkpoint_in_model(*model, paths[0], o));
}

// accelerate test_load_checkpoint_in_model_dtype: ModelSeveralDtypes, offload_state_dict, float16.
TEST(CheckpointLoadTest, DtypeCastsFloatingTensorsOnly) {
  TempDir dir;
  auto make = [] {
    auto m = std::make_shared<Module>("ModelSeveralDtypes");
    m->register_buffer("int_param", at::randint(0, 10, {15, 30}, at::kLong));
    m->register_parameter("float_param", at::randn({10, 5}), true);
    return m;
  };
  auto source = make();
  io::save_safetensors(dir.file("model.safetensors"), source->state_dict());
  auto model = make();
  LoadCheckpointOptions o;
  o.device_map = DeviceMap{{"", Placement::cpu()}};
  o.dtype = at::kHalf;
  o.offload_state_dict = true;
  load_checkpoint_in_model(*model, dir.str(), o);
  EXPECT_EQ(model->buffer("int_param").scalar_type(), at::kLong);
  EXPECT_EQ(model->parameter("float_param").scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(model->buffer("int_param"), source->buffer("int_param")));
  EXPECT_TRUE(at::equal(model->parameter("float_param"), source->parameter("float_param").to(at::kHalf)));
}

TEST(CheckpointLoadTest, KeepInFp32Modules) {
  TempDir dir;
  const auto paths = write_layouts(reference_state_dict(), dir);
  auto model = make_model_for_test();
  LoadCheckpointOptions o;
  o.dtype = at::kHalf;
  o.keep_in_fp32_modules = {"linear2"};
  o.device_map = DeviceMap{{"", Placement::cpu()}};
  load_checkpoint_in_model(*model, paths[2], o);
  EXPECT_EQ(get(*model, "linear1.weight").scalar_type(), at::kHalf);
  EXPECT_EQ(get(*model, "linear2.weight").scalar_type(), at::kFloat);
  EXPECT_EQ(get(*model, "batchnorm.num_batches_tracked").scalar_type(), at::kLong);
}

// accelerate test_load_checkpoint_in_model_unexpected_keys (both with and without a map).
TEST(CheckpointLoadTest, UnexpectedKeysWarnOrFailWithStrict) {
  TempDir dir;
  auto sd = reference_state_dict();
  sd.push_back({"foo", at::ones({2})});
  io::save_safetensors(dir.file("model.safetensors"), sd);
  for (bool with_map : {false, true}) {
    auto model = make_model_for_test();
    LoadCheckpointOptions o;
    if (with_map) o.device_map = DeviceMap{{"", Placement::cpu()}};
    {
      ScopedLogCapture capture;
      LoadCheckpointResult r = load_checkpoint_in_model(*model, dir.str(), o);
      EXPECT_TRUE(capture.contains(LogLevel::Warning, "were not used when"));
      EXPECT_TRUE(capture.contains("foo"));
      EXPECT_EQ(r.unexpected_keys, std::vector<std::string>{"foo"});
    }
    o.strict = true;
    EXPECT_FERRY_ERROR(load_checkpoint_in_model(*model, dir.str(), o), "unexpected keys [foo]");
  }
}

TEST(CheckpointLoadTest, MissingKeysAreReported) {
  TempDir dir;
  auto sd = reference_state_dict();
  sd.erase(sd.begin() + 7);  // linear2.weight
  io::save_safetensors(dir.file("model.safetensors"), sd);
  auto model = make_model_for_test();
  ScopedLogCapture capture;
  LoadCheckpointResult r = load_checkpoint_in_model(*model, dir.str());
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"linear2.weight"});
  EXPECT_TRUE(capture.contains(LogLevel::Warning, "were not initialized from the model checkpoint"));
  LoadCheckpointOptions strict;
  strict.strict = true;
  EXPECT_FERRY_ERROR(load_checkpoint_in_model(*model, dir.str(), strict), "missing keys [linear2.weight]");
}

TEST(CheckpointLoadTest, ShapeMismatchNamesTensorShapesAndFile) {
  TempDir dir;
  auto sd = reference_state_dict();
  sd[0].second = at::randn({4, 7});
  io::save_safetensors(dir.file("model.safetensors"), sd);
  auto model = make_model_for_test();
  const at::Tensor before = get(*model, "linear2.weight").clone();
  EXPECT_FERRY_ERROR(load_checkpoint_in_model(*model, dir.str()), "tensor 'linear1.weight' has shape [4, 7]",
                     dir.file("model.safetensors"), "the model expects [4, 3]");
  EXPECT_TRUE(at::equal(get(*model, "linear2.weight"), before)) << "checked before anything is loaded";
}

TEST(CheckpointLoadTest, TensorWithoutPlacement) {
  TempDir dir;
  const auto paths = write_layouts(reference_state_dict(), dir);
  auto model = make_model_for_test();
  LoadCheckpointOptions o;
  o.device_map = DeviceMap{{"linear1", Placement::cpu()}, {"linear2", Placement::cpu()}};
  EXPECT_FERRY_ERROR(load_checkpoint_in_model(*model, paths[0], o), "batchnorm.", "doesn't have any device set");
}

TEST(CheckpointLoadTest, TiedParametersAreRetied) {
  TempDir dir;
  auto make = [] {
    auto m = std::make_shared<Module>("Tied");
    auto embed = m->register_module("embed", std::make_shared<Embedding>(10, 4));
    auto head = m->register_module("head", std::make_shared<Linear>(4, 10, false));
    head->set_parameter("weight", embed->parameter("weight"));
    return m;
  };
  at::Tensor w = at::randn({10, 4});
  io::save_safetensors(dir.file("model.safetensors"), {{"embed.weight", w}});  // tied: saved once
  auto model = make();
  LoadCheckpointResult r = load_checkpoint_in_model(*model, dir.str());
  EXPECT_TRUE(r.missing_keys.empty()) << "head.weight is filled through its tie";
  EXPECT_TRUE(get(*model, "head.weight").is_same(get(*model, "embed.weight")));
  EXPECT_TRUE(same_bits(get(*model, "head.weight"), w));
}

// The fixtures, streamed into a module tree built from their headers alone, placed over cpu and disk:
// every tensor bit-identical to what the files hold.
TEST(CheckpointLoadTest, FixturesLoadBitIdentical) {
  for (const char* name : {"tiny_llama", "tiny_qwen2"}) {
    const io::Checkpoint ckpt = io::Checkpoint::open(data_dir() + "/" + name);
    auto root = std::make_shared<Module>("FromHeaders");
    {
      auto guard = init_empty_weights();
      for (const auto& t : ckpt.tensors()) {
        Module* m = root.get();
        std::string rest = t.name;
        for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
          const std::string part = rest.substr(0, dot);
          if (!m->child(part)) m->register_child(part, std::make_shared<Module>("Module"));
          m = m->child(part).get();
        }
        m->register_parameter(rest, at::empty(t.shape, at::TensorOptions().dtype(t.dtype).device(at::kMeta)));
      }
    }
    LoadCheckpointOptions o;
    o.device_map = DeviceMap{{"model.embed_tokens", Placement::cpu()}, {"model.layers.0", Placement::cpu()},
                             {"model.layers.1", Placement::disk()}, {"model", Placement::cpu()},
                             {"lm_head", Placement::disk()}};
    LoadCheckpointResult r = load_checkpoint_in_model(*root, data_dir() + "/" + name, o);
    EXPECT_TRUE(r.missing_keys.empty());
    size_t on_disk = 0;
    for (const auto& t : ckpt.tensors()) {
      const at::Tensor expected = ckpt.open_file(t.file).view(t.name);
      at::Tensor in_model = get(*root, t.name);
      if (in_model.is_meta()) {
        ++on_disk;
        EXPECT_TRUE(same_bits(r.disk_weights->load(t.name), expected)) << name << " " << t.name;
      } else {
        EXPECT_TRUE(same_bits(in_model, expected)) << name << " " << t.name;
      }
    }
    EXPECT_EQ(on_disk, r.disk_keys.size());
    EXPECT_GT(on_disk, 5u);
  }
}

// load_offloaded_weights: a folder back into an empty model, cast to the model's dtype.
TEST(CheckpointLoadTest, LoadOffloadedWeightsIntoModel) {
  TempDir dir;
  const auto sd = reference_state_dict();
  io::OffloadIndex index = io::offload_state_dict(dir.str(), sd);
  std::shared_ptr<Module> model;
  {
    auto guard = init_empty_weights(true);
    model = make_model_for_test();
  }
  load_offloaded_weights(*model, index, dir.str());
  for (const auto& [k, v] : sd) EXPECT_TRUE(same_bits(get(*model, k), v)) << k;
}

// Progress after every tensor, and a throw from it (ferry run's Ctrl-C while loading) stops the load
// there, with the staging folder of offload_state_dict removed.
TEST(CheckpointLoadTest, ProgressAfterEachTensorAndAThrowStopsTheLoad) {
  TempDir dir;
  const auto sd = reference_state_dict();
  const std::string index = write_layouts(sd, dir)[1];
  uint64_t total_bytes = 0;
  for (const auto& [k, v] : sd) total_bytes += static_cast<uint64_t>(v.numel()) * v.element_size();
  LoadCheckpointOptions o;
  o.device_map = DeviceMap{{"linear1", Placement::cpu()}, {"batchnorm", Placement::disk()}, {"linear2", Placement::cpu()}};
  o.offload_state_dict = true;
  std::vector<LoadProgress> calls;
  o.on_progress = [&](const LoadProgress& p) { calls.push_back(p); };
  auto model = make_model_for_test();
  load_checkpoint_in_model(*model, index, o);
  ASSERT_EQ(calls.size(), sd.size() + 1) << "once before the first tensor and once after each";
  EXPECT_EQ(calls.front().bytes_done, 0u);
  EXPECT_EQ(calls.front().tensors_done, 0u);
  const size_t shards = calls.front().shards;
  EXPECT_GT(shards, 1u) << "the sharded layout";
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_GT(calls[i].bytes_done, calls[i - 1].bytes_done);
    EXPECT_EQ(calls[i].tensors_done, i);
    EXPECT_EQ(calls[i].bytes_total, total_bytes);
    EXPECT_EQ(calls[i].tensors_total, sd.size());
    EXPECT_GE(calls[i].shard, calls[i - 1].shard) << "shards in order";
    EXPECT_GE(calls[i].shard, 1u);
    EXPECT_LE(calls[i].shard, shards);
  }
  EXPECT_EQ(calls.back().bytes_done, total_bytes);
  EXPECT_EQ(calls.back().shard, shards);

  auto staging_folders = [] {
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
      n += e.path().filename().string().rfind("ferry_state_dict_", 0) == 0;
    return n;
  };
  const size_t before = staging_folders();
  int seen = 0;
  o.on_progress = [&](const LoadProgress&) {
    if (++seen == 3) throw std::runtime_error("interrupted");
  };
  auto second = make_model_for_test();
  EXPECT_THROW(load_checkpoint_in_model(*second, index, o), std::runtime_error);
  EXPECT_EQ(seen, 3) << "nothing is loaded after the throw";
  EXPECT_EQ(staging_folders(), before) << "the staging folder is removed when the load stops";
}
