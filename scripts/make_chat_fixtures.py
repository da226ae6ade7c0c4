#!/usr/bin/env python3
"""References for `ferry chat` from transformers (issue 16): whole conversations, turn by turn.

For each fixture model paired with a trained tokenizer of its family (tests/data/tokenizers) and its
family's published chat template (tests/data/chat_templates/templates, see make_chat_template_fixtures.py
for where each comes from), this plays a conversation the way a chat UI built on transformers does:
the history is rendered with tokenizer.apply_chat_template(add_generation_prompt=True), the text
encoded without adding special tokens again, model.generate() greedy, the reply decoded with
skip_special_tokens=True and appended to the history as the assistant's message. It writes
tests/data/chat/<name>.json: the model and files used, the tokenizer_config.json to put beside them,
and per turn the user's line, the prompt ids, the reply ids and the reply text.

  .venv/bin/python scripts/make_chat_fixtures.py
"""
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tests", "data")

# (name, fixture model, tokenizer, template, bos, eos, system message or None)
CASES = [
    ("llama", "tiny_llama", "llama3", "llama3.3", "<|begin_of_text|>", "<|eot_id|>", "Answer briefly."),
    ("qwen2", "tiny_qwen2", "qwen2", "qwen2.5", None, "<|im_end|>", None),
    ("mixtral", "tiny_mixtral", "mistral", "mistral-v0.3", "<s>", "</s>", None),
    ("qwen2_moe", "tiny_qwen2_moe", "qwen2", "chatml", None, "<|im_end|>", "You are terse."),
    ("qwen3_moe", "tiny_qwen3_moe", "qwen2", "qwen3", None, "<|im_end|>", None),
]
USER_TURNS = ["Hi! Who are you?", "Name 3 colours, please.", "Danke schön 🌍"]
MAX_NEW_TOKENS = 6


def main():
    torch.manual_seed(0)
    os.makedirs(os.path.join(DATA, "chat"), exist_ok=True)
    for name, model_name, tokenizer_name, template_name, bos, eos, system in CASES:
        with open(os.path.join(DATA, "chat_templates", "templates", template_name + ".jinja")) as f:
            template = f.read()
        tokenizer_config = {"chat_template": template, "bos_token": bos, "eos_token": eos,
                            "tokenizer_class": "PreTrainedTokenizerFast"}
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(DATA, "tokenizers", tokenizer_name + ".tokenizer.json"),
                                      bos_token=bos, eos_token=eos)
        tok.chat_template = template
        model = AutoModelForCausalLM.from_pretrained(os.path.join(DATA, model_name), dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        messages = [{"role": "system", "content": system}] if system else []
        turns = []
        for user in USER_TURNS:
            messages.append({"role": "user", "content": user})
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            assert len(prompt) + MAX_NEW_TOKENS <= model.config.max_position_embeddings, (name, len(prompt))
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=model.generation_config.eos_token_id)
            reply_ids = out[0, len(prompt):].tolist()
            reply = tok.decode(reply_ids, skip_special_tokens=True)
            messages.append({"role": "assistant", "content": reply})
            turns.append({"user": user, "prompt_ids": prompt, "reply_ids": reply_ids, "reply": reply})
        record = {"model": model_name, "tokenizer": tokenizer_name, "template": template_name, "system": system,
                  "max_new_tokens": MAX_NEW_TOKENS, "tokenizer_config": tokenizer_config, "turns": turns,
                  "transformers": transformers.__version__}
        path = os.path.join(DATA, "chat", name + ".json")
        with open(path, "w") as f:
            json.dump(record, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{path}: {len(turns)} turns, prompts of {[len(t['prompt_ids']) for t in turns]} tokens")


if __name__ == "__main__":
    main()
