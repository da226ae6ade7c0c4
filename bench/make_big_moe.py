#!/usr/bin/env python3
"""A Mixtral-shaped checkpoint of about 2.7 GB for the mixture-of-experts benchmark (issue 15).

32 experts per layer, top-2 routing, 6 layers, hidden 1024, expert width 1024, vocabulary 32,000,
float32, random weights (seed 0, normal(0, 0.05)), written by transformers' save_pretrained, which
writes the Hub's per-expert tensor names (model.layers.0.block_sparse_moe.experts.3.w1.weight).
The routed experts are 2.25 GiB of it: 12 MiB each, so a token's top-2 over 6 layers is 144 MiB.

  .venv/bin/python bench/make_big_moe.py OUT_DIR [--layers 6] [--experts 32]
"""
import argparse
import os

import torch
from transformers import MixtralConfig, MixtralForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=1024)
    a = ap.parse_args()
    if os.path.exists(os.path.join(a.out_dir, "config.json")):
        print(f"{a.out_dir} exists; keeping it")
        return
    config = MixtralConfig(vocab_size=32000, hidden_size=a.hidden, intermediate_size=a.intermediate,
                           num_hidden_layers=a.layers, num_attention_heads=16, num_key_value_heads=4,
                           num_local_experts=a.experts, num_experts_per_tok=2, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, initializer_range=0.05, tie_word_embeddings=False,
                           sliding_window=None, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(a.out_dir, max_shard_size="1GB")
    size = sum(os.path.getsize(os.path.join(a.out_dir, f)) for f in os.listdir(a.out_dir))
    print(f"wrote {a.out_dir}: {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
