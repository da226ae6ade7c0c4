// WeightsMap implementations over real files; zero-copy and identity contracts; concurrent loads.

#include "ferry/core/error.h"
#include "ferry/io/weights_map.h"
#include "io_test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

using namespace ferry::io;
using ferry::test::data_dir;
using ferry::test::same_bits;
using ferry::test::TempDir;

namespace {
bool inside(const at::Tensor& t, const SafetensorsFile& f) {
  auto p = static_cast<const uint8_t*>(t.data_ptr());
  return p >= f.mapping()->data() && p < f.mapping()->data() + f.mapping()->size();
}
}  // namespace

TEST(WeightsMapTest, StateDictPreservesIdentityAndConverts) {
  at::Tensor a = at::randn({2, 3});
  at::Tensor i = at::arange(4);
  auto map = make_state_dict_weights_map({{"a", a}, {"i", i}});
  EXPECT_EQ(map->keys(), (std::vector<std::string>{"a", "i"}));
  EXPECT_TRUE(map->load("a").is_same(a)) << "the very tensor object, as Accelerate's loader returns";
  at::Tensor h = map->load("a", at::kCPU, at::kHalf);
  EXPECT_EQ(h.scalar_type(), at::kHalf);
  EXPECT_FALSE(h.is_same(a));
  TensorInfo info = map->info("a");
  EXPECT_EQ(info.dtype, at::kFloat);
  EXPECT_EQ(info.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(info.nbytes, 24u);
  EXPECT_FALSE(map->contains("b"));
  EXPECT_FERRY_ERROR(map->load("b"), "no tensor named 'b'");
  EXPECT_FERRY_ERROR(make_state_dict_weights_map({{"a", a}, {"a", i}}), "names 'a' twice");
}

TEST(WeightsMapTest, CheckpointInPlaceIsZeroCopyForCpuAtStoredDtype) {
  Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_qwen2");
  auto map = make_checkpoint_weights_map(ckpt);
  EXPECT_EQ(map->size(), ckpt.tensors().size());
  for (const auto& t : ckpt.tensors()) {
    at::Tensor w = map->load(t.name);
    SafetensorsFile file = SafetensorsFile::open(t.file);
    EXPECT_TRUE(same_bits(w, file.view(t.name))) << t.name;
    // Loading twice gives views of the same cached mapping.
    EXPECT_EQ(map->load(t.name).data_ptr(), w.data_ptr());
    EXPECT_EQ(map->info(t.name).nbytes, t.nbytes);
  }
  const std::string name = "model.layers.0.self_attn.q_proj.bias";
  at::Tensor f32 = map->load(name, at::kCPU, at::kFloat);
  EXPECT_EQ(f32.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(f32.to(at::kBFloat16), map->load(name)));
  // A copy never aliases the file.
  SafetensorsFile f = SafetensorsFile::open(ckpt.at(name).file);
  EXPECT_FALSE(inside(f32, f));
}

TEST(WeightsMapTest, CheckpointSubsetShowsOnlyThoseNames) {
  Checkpoint ckpt = Checkpoint::open(data_dir() + "/tiny_llama");
  auto map = make_checkpoint_weights_map(ckpt, {"lm_head.weight", "model.norm.weight"});
  EXPECT_EQ(map->size(), 2u);
  EXPECT_FALSE(map->contains("model.embed_tokens.weight"));
  EXPECT_FERRY_ERROR(map->load("model.embed_tokens.weight"), "no tensor named 'model.embed_tokens.weight' in this weights map");
  EXPECT_FERRY_ERROR(make_checkpoint_weights_map(ckpt, {"nope"}), "no tensor named 'nope' in the checkpoint");
}

TEST(WeightsMapTest, PrefixedViewListsRelativeKeys) {
  auto base = make_checkpoint_weights_map(Checkpoint::open(data_dir() + "/tiny_llama"));
  auto layer = make_prefixed_weights_map(base, "model.layers.1.");
  EXPECT_EQ(layer->size(), 9u);  // 4 attention + 3 mlp + 2 norms
  for (const auto& k : layer->keys()) {
    EXPECT_EQ(k.rfind("model.", 0), std::string::npos) << "keys are relative: " << k;
    EXPECT_TRUE(layer->contains(k));
    EXPECT_TRUE(same_bits(layer->load(k), base->load("model.layers.1." + k)));
  }
  EXPECT_TRUE(layer->contains("mlp.up_proj.weight"));
  EXPECT_FALSE(layer->contains("model.layers.1.mlp.up_proj.weight"));
  // "model.layers.1." does not catch layer 10+ (none here) nor "model.layers.1" without the dot.
  EXPECT_EQ(make_prefixed_weights_map(base, "model.layers.9.")->size(), 0u);
}

// accelerate tests/test_offload.py::test_offload_weights_loader
TEST(WeightsMapTest, OffloadedWeightsLoaderStateDictFirstThenFolder) {
  TempDir dir;
  NamedTensors cpu_part = {{"linear1.weight", at::randn({4, 3})}, {"linear1.bias", at::randn({4})}};
  NamedTensors disk_part = {{"linear2.weight", at::randn({2, 4})}, {"linear2.bias", at::randn({2}).to(at::kBFloat16)}};
  offload_state_dict(dir.str(), disk_part);
  auto loader = make_offloaded_weights_loader(&cpu_part, dir.str());
  EXPECT_EQ(loader->keys(), (std::vector<std::string>{"linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"}));
  for (const auto& [k, v] : cpu_part) EXPECT_TRUE(loader->load(k).is_same(v));
  for (const auto& [k, v] : disk_part) EXPECT_TRUE(same_bits(loader->load(k), v)) << k;
  EXPECT_EQ(loader->info("linear2.bias").dtype, at::kBFloat16);

  // Everything on disk AND in the state dict: duplicates removed, the state dict wins.
  NamedTensors all = cpu_part;
  all.insert(all.end(), disk_part.begin(), disk_part.end());
  offload_state_dict(dir.str(), all);
  NamedTensors overriding = {{"linear2.weight", at::zeros({2, 4})}};
  auto both = make_offloaded_weights_loader(&overriding, dir.str());
  EXPECT_EQ(both->size(), 4u);
  EXPECT_EQ(both->keys().front(), "linear2.weight");
  EXPECT_TRUE(both->load("linear2.weight").is_same(overriding[0].second));
  EXPECT_FERRY_ERROR(make_offloaded_weights_loader(nullptr, ""), "need at least one of");
}

TEST(WeightsMapTest, OffloadFolderDatIsZeroCopyAndSafetensorsEntriesWork) {
  TempDir dir;
  save_safetensors(dir.file("w.safetensors"), {{"model.w", at::arange(6, at::kFloat)}});
  offload_state_dict(dir.str(), {{"b", at::arange(3, at::kFloat)}});
  OffloadIndex index = read_offload_index(dir.str());
  OffloadEntry st;
  st.safetensors_file = "w.safetensors";  // relative to the folder
  st.weight_name = "model.w";
  st.dtype = "float16";
  index.set("w", st);
  auto map = make_offload_folder_weights_map(dir.str(), index);
  EXPECT_EQ(map->info("w").dtype, at::kHalf);
  EXPECT_EQ(map->load("w").scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(map->load("w").to(at::kFloat), at::arange(6, at::kFloat)));
  at::Tensor b1 = map->load("b");
  EXPECT_TRUE(at::equal(b1, at::arange(3, at::kFloat)));
  EXPECT_EQ(map->load("b", at::kCPU, at::kDouble).scalar_type(), at::kDouble);
  EXPECT_FERRY_ERROR(map->load("zz"), "has no weight named 'zz'");
}

TEST(WeightsMapTest, ConcurrentLoadsFromManyThreads) {
  auto map = make_checkpoint_weights_map(Checkpoint::open(data_dir() + "/tiny_llama"));
  const auto keys = map->keys();
  std::vector<at::Tensor> expected;
  for (const auto& k : keys) expected.push_back(map->load(k).clone());
  auto fresh = make_checkpoint_weights_map(Checkpoint::open(data_dir() + "/tiny_llama"));  // cold cache
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < keys.size(); ++i) {
        size_t k = (i + t * 7) % keys.size();
        at::Tensor w = (t % 2) ? fresh->load(keys[k]) : fresh->load(keys[k], at::kCPU, at::kDouble).to(at::kFloat);
        if (!at::equal(w, expected[k])) ++mismatches;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}
