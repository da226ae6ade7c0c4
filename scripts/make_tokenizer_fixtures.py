#!/usr/bin/env python3
"""Makes the tokenizer test vocabularies and their reference encodings (tests/data/tokenizers/).

Each family's tokenizer.json is trained with the `tokenizers` library from PyPI on a small corpus and
configured as the published models are (normaliser, pre-tokenizer, post-processor, decoder, added
tokens); the hard-case corpus (corpus.txt here, one case per JSON string) is then encoded and decoded by
the same library, and its ids and texts are written as references that tests/tokenizer_test.cpp checks
ferry against, token for token.

    .venv/bin/python -m pip install tokenizers   # (transformers brings it)
    .venv/bin/python scripts/make_tokenizer_fixtures.py

The files are committed; rerun this only to change them.
"""
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizers")

# Training text: enough English, code, numbers and some accents for a few hundred merges.
TRAIN = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.
It's a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.
We'll see what they've done, I'm sure you'd agree they're right.
def main(argv):
    for i in range(10):
        print(f"value {i} = {i * 2}")
    return 0
int main(int argc, char** argv) { return argc > 1 ? 0 : 1; }
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000 123456789
Café crème brûlée, naïve façade, résumé, jalapeño, Zürich, São Paulo.
Language models read tokens and write tokens, one token at a time, until they stop.
Offloading puts weights on the disk and streams them to the device just in time.
the of and to in is that for it as was with be by on not he this are or his from at which
""" * 20 + "日本語のテキスト。中文文本。한국어 텍스트. Привет, мир! Γειά σου κόσμε.\n"

# What breaks tokenizers (issue 16): spaces, tabs and newlines, numbers, punctuation, accents and combining
# marks, CJK, emoji and ZWJ sequences, code, special tokens inside text.
CORPUS = [
    "Hello world",
    "Hello, world!",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple    spaces   between   words",
    "\ttab\tseparated\tvalues",
    "line one\nline two\n\nline four\r\nwindows line",
    "\n\n\n",
    "   ",
    "",
    "a",
    "1234567890",
    "3.14159265358979 and 1,000,000 and 00007",
    "the year 2024, the number 123456789012345",
    "!!!???...,,,;;;:::---",
    "\"quoted\" 'single' `backtick` (paren) [bracket] {brace}",
    "Café crème brûlée naïve façade",
    "e\u0301 (e + combining acute) and \u00e9 (precomposed)",
    "A\u030a\u0323 stacked combining marks",
    "日本語のテキストです。",
    "中文文本，标点符号！",
    "한국어 텍스트",
    "Привет, мир!",
    "emoji 😀 and 👍🏽 and flags 🇫🇷",
    "ZWJ family 👨\u200d👩\u200d👧\u200d👦 and 🏳️\u200d🌈",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "It's we'll they've I'm you'd THEY'RE IT'S",
    "tokens\u00a0with\u2003unicode\u3000spaces",
    "mixed123abc456DEF",
    "https://example.com/path?q=1&r=2#frag",
    "a" * 200,
    "The quick brown fox jumps over the lazy dog. " * 5,
]


def train(tok, alphabet_limit, vocab_size, special_tokens=()):
    kwargs = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if alphabet_limit is None else \
        {"limit_alphabet": alphabet_limit}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(special_tokens),
                                  show_progress=False, **kwargs)
    tok.train_from_iterator(TRAIN.splitlines(keepends=True), trainer=trainer)
    return tok


def gpt2():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, None, 600, ["<|endoftext|>"])
    return tok


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    train(tok, None, 700)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
    return tok


def qwen2():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, None, 700)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens(["<tool_call>", "</tool_call>"])  # Qwen2.5's non-special added tokens
    return tok


def llama2():
    """Llama 2 / Mistral v0.1: SentencePiece BPE converted by transformers (no pre-tokenizer)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    train(tok, 60, 500, ["<unk>", "<s>", "</s>"])
    # The byte tokens <0x00>..<0xFF> follow the three special tokens, as in the published vocabularies.
    data = json.loads(tok.to_str())
    old = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in old:
        if t not in vocab:
            vocab[t] = len(vocab)
    data["model"]["vocab"] = vocab
    for a in data["added_tokens"]:
        a["id"] = vocab[a["content"]]
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["pre_tokenizer"] = None
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    data["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}},
                                       {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return Tokenizer.from_str(json.dumps(data))


def mistral_metaspace():
    """Newer Mistral/Llama conversions: a Metaspace pre-tokenizer (prepend_scheme first, no split) instead of
    the Prepend/Replace normaliser, and the Metaspace decoder."""
    data = json.loads(llama2().to_str())
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    data["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return Tokenizer.from_str(json.dumps(data))


FAMILIES = {"gpt2": gpt2, "llama3": llama3, "qwen2": qwen2, "llama2": llama2, "mistral": mistral_metaspace}


# Variants of a family's file that exercise the options the families leave at one setting (every Split
# behaviour, invert, ByteLevel's add_prefix_space, Metaspace's other schemes, regex Replace, NFKC, Strip on
# each token): each is the family's model with other pieces, referenced like the families.
def variant(base, **pieces):
    def make():
        data = json.loads(FAMILIES[base]().to_str())
        data.update(pieces)
        return Tokenizer.from_str(json.dumps(data))
    return make


BYTE_LEVEL_PLAIN = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
VARIANTS = {
    "v_prefix_space": variant("gpt2", pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True,
                                                     "trim_offsets": True, "use_regex": True}),
    "v_nfkc_regex_replace": variant("gpt2", normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]}),
    "v_metaspace_always": variant(
        "llama2", normalizer=None,
        pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        decoder={"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),  # (stop > 0 panics in tokenizers 0.23)
}
for behavior in ("removed", "merged_with_previous", "merged_with_next", "contiguous"):
    for invert in (False, True):
        VARIANTS["v_split_%s%s" % (behavior, "_invert" if invert else "")] = variant(
            "gpt2", pre_tokenizer={"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "[\\p{P}\\s]+" if behavior != "contiguous" else "\\d"},
                 "behavior": "".join(w.capitalize() for w in behavior.split("_")), "invert": invert},
                BYTE_LEVEL_PLAIN]})


def normalized_added_tokens():
    """Added tokens marked "normalized" (a special one too) are matched as their normalized content."""
    data = json.loads(FAMILIES["llama2"]().to_str())
    for a in data["added_tokens"]:
        if a["content"] in ("<s>", "</s>"):
            a["normalized"] = True
    data["normalizer"]["normalizers"].append({"type": "Replace", "pattern": {"String": "s"}, "content": "S"})
    return Tokenizer.from_str(json.dumps(data))


VARIANTS["v_normalized_added_tokens"] = normalized_added_tokens
VARIANTS["v_split_string"] = variant("gpt2", pre_tokenizer={"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"String": ", "}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL_PLAIN]})


def specials_corpus(name):
    if name == "v_normalized_added_tokens":
        return specials_corpus("llama2") + ["Hello<s>", "<S>", "x </s></s> y"]
    if name.startswith("v_"):
        return []
    return {
        "gpt2": ["Hello<|endoftext|>world", "<|endoftext|> start and end <|endoftext|>", "<|endoftext|><|endoftext|>"],
        "llama3": ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
                   "text <|eot_id|>text", "not special: <|begin_of_text |>"],
        "qwen2": ["<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>",
                  "call <tool_call>{\"name\": \"f\"}</tool_call> done", "<|endoftext|>"],
        "llama2": ["<s>Hello</s>", "Hello <s> world </s> end", " <unk> "],
        "mistral": ["<s>Hello</s>", "Hello <s> world </s> end", " <unk> "],
    }[name]


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, make in list(FAMILIES.items()) + list(VARIANTS.items()):
        tok = make()
        path = os.path.join(OUT, name + ".tokenizer.json")
        tok.save(path, pretty=False)
        if name == "gpt2":  # merges in the older "a b" form, as the Hub's gpt2 has them
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_file(path)  # the references come from the file as saved
        cases = []
        for text in CORPUS + specials_corpus(name):
            case = {"text": text}
            for add in (True, False):
                ids = tok.encode(text, add_special_tokens=add).ids
                case["ids" if add else "ids_no_special"] = ids
            ids = case["ids"]
            case["decoded"] = tok.decode(ids, skip_special_tokens=True)
            case["decoded_with_special"] = tok.decode(ids, skip_special_tokens=False)
            case["tokens"] = tok.encode(text).tokens
            cases.append(case)
        with open(os.path.join(OUT, name + ".reference.json"), "w", encoding="utf-8") as f:  # one case a line
            f.write('{"tokenizer": "%s.tokenizer.json", "vocab_size": %d, "cases": [\n' % (name, tok.get_vocab_size()))
            f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n")
        print(name, os.path.getsize(path), "bytes,", tok.get_vocab_size(), "tokens")


if __name__ == "__main__":
    main()
