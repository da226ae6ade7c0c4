#!/usr/bin/env python3
"""Writes the PyTorch-pickle (.bin / .pt) fixtures of tests/torch_checkpoint_test.cpp.

    .venv/bin/python scripts/make_bin_fixtures.py            # rewrites tests/data/tiny_llama_bin*/ and torch_pickles/

tests/data/tiny_llama (3.2 MB of float32) is too large to commit a second time as .bin, so this builds
a smaller random Llama (2 layers, hidden 32, vocab 128, tied embeddings: 110 KB) and writes it three
ways, exactly as transformers 4.x did before it dropped .bin saving in 5.0:

  tiny_llama_bin/             config.json + pytorch_model.bin: torch.save(model.state_dict()), an
                              OrderedDict with a `_metadata` attribute (a BUILD opcode), tied
                              lm_head/embed_tokens sharing one storage (4.x kept both keys in .bin)
  tiny_llama_bin_sharded/     config.json + pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json:
                              save_pretrained(safe_serialization=False, max_shard_size="40KB") of 4.x,
                              plain dicts of .contiguous() tensors per shard
  tiny_llama_bin_safetensors/ the same weights saved by transformers' save_pretrained (safetensors), the twin
                              the .bin variants must equal bit for bit

and, under torch_pickles/:

  views.pt        one storage seen through several views (a row, a strided column, a transpose, the whole),
                  an nn.Parameter, bfloat16/float16/int64/bool/0-dim tensors
  legacy.pt       the pre-1.6 format (_use_new_zipfile_serialization=False), which ferry refuses with advice
  not_a_dict.pt   a list of tensors (refused: a checkpoint is a dict of name -> tensor)
  non_tensor.pt   a dict with an int value under "step" (refused, naming the key)
"""
import collections
import json
import os
import shutil
import sys

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")


def fresh(name):
    path = os.path.join(ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def tiny_llama():
    torch.manual_seed(18)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)
    return model


def main():
    model = tiny_llama()

    twin = fresh("tiny_llama_bin_safetensors")
    model.save_pretrained(twin)  # safetensors; the tied lm_head.weight is left out
    for f in os.listdir(twin):
        if f == "generation_config.json":
            os.remove(os.path.join(twin, f))

    single = fresh("tiny_llama_bin")
    shutil.copy(os.path.join(twin, "config.json"), single)
    state = model.state_dict()  # OrderedDict with _metadata; lm_head.weight and embed_tokens share storage
    assert isinstance(state, collections.OrderedDict) and hasattr(state, "_metadata")
    torch.save(state, os.path.join(single, "pytorch_model.bin"))

    sharded = fresh("tiny_llama_bin_sharded")
    shutil.copy(os.path.join(twin, "config.json"), sharded)
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                               max_shard_size="40KB")
    assert split.is_sharded, "raise the shard count: the fixture must be sharded"
    for file, names in split.filename_to_tensors.items():
        torch.save({n: state[n].contiguous() for n in names}, os.path.join(sharded, file))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": split.tensor_to_filename}
    with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")

    pickles = fresh("torch_pickles")
    base = torch.arange(12, dtype=torch.float32)
    grid = base.view(3, 4)
    torch.save({
        "base": base,
        "row": grid[1],            # offset 4, contiguous
        "column": grid[:, 2],      # offset 2, stride 4
        "transposed": grid.t(),    # strides (1, 4)
        "parameter": torch.nn.Parameter(torch.tensor([1.5, -2.0])),
        "bf16": torch.tensor([1.0, -0.5, 3.25], dtype=torch.bfloat16),
        "f16": torch.tensor([[0.5, 2.0]], dtype=torch.float16),
        "i64": torch.tensor([-(2 ** 40), 7], dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }, os.path.join(pickles, "views.pt"))
    torch.save({"w": torch.ones(2)}, os.path.join(pickles, "legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save([torch.ones(2)], os.path.join(pickles, "not_a_dict.pt"))
    torch.save({"w": torch.ones(2), "step": 7}, os.path.join(pickles, "non_tensor.pt"))

    total = 0
    for d in ("tiny_llama_bin", "tiny_llama_bin_sharded", "tiny_llama_bin_safetensors", "torch_pickles"):
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            total += os.path.getsize(os.path.join(ROOT, d, f))
    print(f"wrote {total} bytes of fixtures (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
