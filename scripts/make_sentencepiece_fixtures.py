#!/usr/bin/env python3
"""Makes the tokenizer.model test vocabularies and their reference encodings (tests/data/sentencepiece/).

Two tiny SentencePiece models are trained by the `sentencepiece` package from PyPI on the training text of
make_tokenizer_fixtures.py:
- llama_bpe.model: BPE with byte fallback, identity normalisation, digits split, whitespace kept, as
  Llama 2's tokenizer.model is trained (<unk> 0, <s> 1, </s> 2);
- t5_unigram.model: unigram with NMT-NFKC normalisation and extra whitespace removed, as T5's and
  ALBERT's (<pad> 0, </s> 1, <unk> 2, no BOS), with a user-defined piece and a control piece.

The reference is the `sentencepiece` package itself (the library that Hugging Face's slow tokenizers,
`LlamaTokenizer` in legacy mode among them, run a tokenizer.model with), wrapped in the slow
tokenizers' rules, which ferry follows (tokenizers/include/ferry/tokenizers/tokenizer.h):
- encode: special tokens (SentencePiece's control pieces and its unknown piece, and the tokens that
  tokenizer_config.json names or adds) are matched in the text first, leftmost and longest first; each
  stretch of text between them is encoded by `sp.encode` on its own; with add_special_tokens, BOS
  (add_bos_token, default true) and EOS (add_eos_token, default false) around it;
- decode: special tokens are dropped (skip_special_tokens) or written as their text, as are added
  tokens; each run of the other ids between them is decoded by `sp.decode`.
Each reference lists the hard-case corpus of make_tokenizer_fixtures.py (spaces, tabs and newlines,
numbers, punctuation, accents, CJK, emoji and ZWJ, code) and special tokens inside text; the ones with a
"tokenizer_config" are checked with that tokenizer_config.json beside the model (tests write it).

    .venv/bin/python -m pip install sentencepiece==0.2.1
    .venv/bin/python scripts/make_sentencepiece_fixtures.py

The version is pinned: ferry runs Debian 12's libsentencepiece (0.1.97), whose encodings are those of
the `sentencepiece` package up to 0.2.1 (0.1.98, 0.1.99, 0.2.0 and 0.2.1 checked). 0.2.2 changed how
the unigram encoder breaks exact ties between segmentations of equal score (":::---" is "-" "--" there
and "--" "-" before); the corpus has such cases (runs of one character: "---", "aaaa..."), so references made with 0.2.2 or
later differ from ferry in two cases of t5_unigram and agree in all the others. The files are committed; rerun this
only to change them (training is deterministic for a given version).
"""
import ast
import io
import json
import os

import sentencepiece as spm

AGREES_WITH_DEBIAN = ("0.1.98", "0.1.99", "0.2.0", "0.2.1")  # see above
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "sentencepiece")


def from_tokenizer_script(*names):
    """TRAIN and CORPUS of make_tokenizer_fixtures.py, without importing it (it needs `tokenizers`)."""
    with open(os.path.join(HERE, "make_tokenizer_fixtures.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", "") in names:
            values[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<fixtures>", "eval"), {})
    return [values[n] for n in names]


TRAIN, CORPUS = from_tokenizer_script("TRAIN", "CORPUS")
# The training text: that script's, the corpus itself and this docstring (more words for the unigram).
SENTENCES = TRAIN.splitlines() + [line for text in CORPUS for line in text.splitlines()] + __doc__.splitlines()


def train(**options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=model,
                                   minloglevel=2, num_threads=1, **options)
    return model.getvalue()


MODELS = {
    "llama_bpe": dict(model_type="bpe", vocab_size=800, byte_fallback=True, split_digits=True,
                      normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
                      allow_whitespace_only_pieces=True, character_coverage=0.99995, unk_id=0, bos_id=1,
                      eos_id=2, pad_id=-1, max_sentencepiece_length=16),
    "t5_unigram": dict(model_type="unigram", vocab_size=600, hard_vocab_limit=False,
                       normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                       user_defined_symbols=["<sep>"], control_symbols=["<ctl>"]),
}


def llama_config(n):
    """A tokenizer_config.json as Llama 2's, with BOS and EOS added and three tokens beyond the model."""
    def added(content, special):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": special}
    return {
        "add_bos_token": True, "add_eos_token": True, "legacy": True, "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "added_tokens_decoder": {"0": added("<unk>", True), "1": added("<s>", True), "2": added("</s>", True),
                                 str(n): added("<|im_start|>", True), str(n + 1): added("<|im_end|>", True),
                                 str(n + 2): added("<tool>", False)},
    }


# (reference name, model, tokenizer_config.json or None, extra cases)
SPECIALS = ["<s>Hello</s>", "Hello <s> world </s> end", " <unk> ", "<s><s>", "x<s>y", "▁already▁metaspace",
            "<0x41> is a byte piece's name, not a byte"]
REFERENCES = [
    ("llama_bpe", "llama_bpe", None, SPECIALS),
    ("llama_bpe_config", "llama_bpe", llama_config,
     SPECIALS + ["<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "call <tool>f()</tool> done",
                 "<|im_start|><|im_end|><tool>"]),
    ("t5_unigram", "t5_unigram", None,
     ["<pad>x</s>", "question: <sep> answer", "<ctl> control", "</s></s>", " <unk> ", "ＦＵＬＬ　ｗｉｄｔｈ ①②"]),
]


class Reference:
    """The rules above around a SentencePieceProcessor (tokenizer.h says the same)."""

    def __init__(self, sp, config):
        self.sp = sp
        n = sp.get_piece_size()
        self.tokens = {}  # content -> [id, special]
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i):
                self.tokens[sp.id_to_piece(i)] = [i, True]
        bos = sp.bos_id() if sp.bos_id() >= 0 else None
        eos = sp.eos_id() if sp.eos_id() >= 0 else None
        add_bos, add_eos = True, False
        if config:
            add_bos = config.get("add_bos_token", True)
            add_eos = config.get("add_eos_token", False)
            for i, t in config.get("added_tokens_decoder", {}).items():
                assert int(i) >= n or sp.id_to_piece(int(i)) == t["content"]
                self.tokens[t["content"]] = [int(i), t["special"]]
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                if config.get(key) in self.tokens:
                    self.tokens[config[key]][1] = True
            bos = self.tokens[config["bos_token"]][0] if config.get("bos_token") else bos
            eos = self.tokens[config["eos_token"]][0] if config.get("eos_token") else eos
        self.bos = bos if add_bos else None
        self.eos = eos if add_eos else None
        self.by_id = {i: (c, s) for c, (i, s) in self.tokens.items()}
        self.vocab_size = n + sum(1 for i in self.by_id if i >= n)

    def encode(self, text, add_special_tokens):
        ids = [self.bos] if add_special_tokens and self.bos is not None else []
        start = i = 0
        while i < len(text):
            hits = [c for c in self.tokens if text.startswith(c, i)]
            if not hits:
                i += 1
                continue
            hit = max(hits, key=lambda c: len(c.encode("utf-8")))
            if i > start:
                ids += self.sp.encode(text[start:i])
            ids.append(self.tokens[hit][0])
            i += len(hit)
            start = i
        if start < len(text):
            ids += self.sp.encode(text[start:])
        if add_special_tokens and self.eos is not None:
            ids.append(self.eos)
        return ids

    def decode(self, ids, skip_special_tokens):
        out, run = "", []
        for i in ids:
            if i in self.by_id:
                content, special = self.by_id[i]
                if skip_special_tokens and special:
                    continue
                out += self.sp.decode(run) + content
                run = []
            else:
                run.append(i)
        return out + self.sp.decode(run)

    def token(self, i):
        return self.by_id[i][0] if i in self.by_id else self.sp.id_to_piece(i)


def main():
    if spm.__version__ not in AGREES_WITH_DEBIAN:
        raise SystemExit("sentencepiece %s breaks unigram ties unlike Debian's libsentencepiece; "
                         "pip install sentencepiece==0.2.1" % spm.__version__)
    os.makedirs(OUT, exist_ok=True)
    models = {}
    for name, options in MODELS.items():
        data = train(**options)
        with open(os.path.join(OUT, name + ".model"), "wb") as f:
            f.write(data)
        models[name] = spm.SentencePieceProcessor(model_proto=data)
        print(name + ".model", len(data), "bytes,", models[name].get_piece_size(), "pieces")
    for ref_name, model, make_config, extra in REFERENCES:
        sp = models[model]
        config = make_config(sp.get_piece_size()) if make_config else None
        ref = Reference(sp, config)
        cases = []
        for text in CORPUS + extra:
            ids = ref.encode(text, True)
            cases.append({"text": text, "ids": ids, "ids_no_special": ref.encode(text, False),
                          "decoded": ref.decode(ids, True), "decoded_with_special": ref.decode(ids, False),
                          "tokens": [ref.token(i) for i in ids]})
        head = {"model": model + ".model", "vocab_size": ref.vocab_size, "sentencepiece": spm.__version__}
        if config:
            head["tokenizer_config"] = config
        with open(os.path.join(OUT, ref_name + ".reference.json"), "w", encoding="utf-8") as f:  # one case a line
            f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
            f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n")
        print(ref_name + ".reference.json", len(cases), "cases")


if __name__ == "__main__":
    main()
