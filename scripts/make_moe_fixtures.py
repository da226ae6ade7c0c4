#!/usr/bin/env python3
"""Tiny mixture-of-experts checkpoints with reference outputs from transformers (issue 15).

Writes tests/data/tiny_mixtral, tiny_qwen2_moe and tiny_qwen3_moe: randomly initialised models (8
experts, top-2, 2 layers, hidden 64, vocab 1000; weights normal(0, 0.08)) saved with
save_pretrained(max_shard_size="100KB"), which writes the Hub's per-expert tensor names
(model.layers.0.block_sparse_moe.experts.3.w1.weight, model.layers.0.mlp.experts.5.gate_proj.weight),
and reference.safetensors as in ../shared/fixtures: input_ids (2 x 12), logits (2 x 12 x 1000, float32,
eager attention, CPU) and generated (2 x 28: greedy, 16 new tokens, no EOS stop).
Qwen2-MoE has its shared expert and gate, norm_topk_prob false, and layer 1 dense (mlp_only_layers);
Qwen3-MoE has per-head q/k RMSNorm and norm_topk_prob true.

  .venv/bin/python scripts/make_moe_fixtures.py [OUT_DIR (default tests/data)]
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
import transformers
from transformers import (MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

COMMON = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.08, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, attn_implementation="eager")


def models():
    yield "tiny_mixtral", MixtralForCausalLM(MixtralConfig(
        intermediate_size=48, num_local_experts=8, num_experts_per_tok=2, sliding_window=None, **COMMON))
    yield "tiny_qwen2_moe", Qwen2MoeForCausalLM(Qwen2MoeConfig(
        intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
        use_sliding_window=False, **COMMON))
    yield "tiny_qwen3_moe", Qwen3MoeForCausalLM(Qwen3MoeConfig(
        intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], head_dim=16, **COMMON))


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    torch.manual_seed(0)
    for name, model in models():
        with torch.no_grad():  # norms near 1, everything else normal(0, 0.08)
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.normal_(0, 0.08)
        model.eval()
        folder = os.path.join(out_root, name)
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder, max_shard_size="100KB")
        ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(ids).logits.float()
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                       do_sample=False, eos_token_id=None, pad_token_id=0)
        save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(), "generated": generated.contiguous()},
                  os.path.join(folder, "reference.safetensors"))
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"{len([f for f in os.listdir(folder) if f.endswith('.safetensors')]) - 1} shards, transformers "
              f"{transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
