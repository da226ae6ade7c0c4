#!/usr/bin/env python3
"""Writes small valid safetensors files as fuzzing seeds (standard library only)."""
import json
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def image(tensors, metadata=None, pad=True):
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        data += bytes((i * 37) % 2 if dtype == "BOOL" else (i * 37) % 256 for i in range(size))
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


seeds = {
    "one_f32": image({"w": ("F32", [2, 3], 24)}, {"format": "pt"}),
    "all_dtypes": image({"a": ("F64", [1], 8), "b": ("I64", [2], 16), "c": ("F32", [1], 4), "d": ("I32", [], 4),
                         "e": ("F16", [3], 6), "f": ("BF16", [1, 1], 2), "g": ("I16", [1], 2), "h": ("I8", [4], 4),
                         "i": ("U8", [0, 5], 0), "j": ("BOOL", [2], 2), "k": ("F8_E4M3", [2], 2)}),
    "empty": image({}),
    "metadata_only": image({}, {"a": "b", "format": "pt"}),
    "unpadded": image({"x": ("U8", [3], 3)}, pad=False),
}
for name, data in seeds.items():
    with open(os.path.join(out, name + ".safetensors"), "wb") as f:
        f.write(data)
