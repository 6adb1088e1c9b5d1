"""atheris harness: comfy_sdnq's parsing of untrusted model files and configs.

    PYTHONPATH=. python tests/fuzz/fuzz_files.py CORPUS_DIR [SEED_DIR] [libFuzzer flags]
    PYTHONPATH=. python tests/fuzz/fuzz_files.py --replay DIR...     # each input once (coverage)

The first input byte picks what the rest is:
  0  a .safetensors file: comfy_sdnq.load() (header length, JSON header, __metadata__ and its
     sdnq_config, tensor entries, dtype / shape / data_offsets checks, every SDNQ layer's
     geometry, side tensors and config), then every SDNQ layer dequantized;
  1  a quantization_config.json beside nothing else: the folder loader's config parsing, and
     QuantConfig's per-layer rules for a few module names and kinds;
  2  a config.json (model config holding quantization_config), the folder loader;
  3  the JSON text of __metadata__["sdnq_config"]: config_from_metadata and per-layer rules.
Contract for bad input: comfy_sdnq.errors.SdnqError (SdnqFormatError, SdnqUnsupportedError)
and nothing else - any other exception is reported as a crash; libFuzzer's -timeout and
-rss_limit_mb flags turn hangs and memory bombs into failures too.
"""
import os
import shutil
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

with atheris.instrument_imports(include=["comfy_sdnq"]):
    import comfy_sdnq
    from comfy_sdnq import files, layout
    from comfy_sdnq.config import QuantConfig
    from comfy_sdnq.errors import SdnqError
    from comfy_sdnq.safetensors_io import load_json

import torch  # noqa: E402

torch.set_num_threads(1)
BASE = tempfile.mkdtemp(prefix="sdnq-fuzz-files-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
FOLDER = os.path.join(BASE, "model")
SINGLE = os.path.join(BASE, "model.safetensors")
MODULES = [("blocks.0", "linear"), ("proj_in", "linear"), ("conv", "conv"), ("embed", "embedding"),
           ("transformer_blocks.3.attn.to_q", "linear"), ("", "linear")]
MAX_DEQUANT = 1 << 22  # elements: real files this small dequantize in milliseconds


def rules(cfg):
    for name, kind in MODULES:
        cfg.layer(name + ".weight", kind)


def fresh_folder():
    shutil.rmtree(FOLDER, ignore_errors=True)
    os.makedirs(FOLDER)


def one_input(data: bytes):
    if not data:
        return
    mode, payload = data[0] % 4, data[1:]
    try:
        if mode == 0:
            with open(SINGLE, "wb") as f:
                f.write(payload)
            sd = comfy_sdnq.load(SINGLE)
            for v in sd.values():
                if layout.is_sdnq(v) and v.numel() <= MAX_DEQUANT:
                    v.dequantize()
        elif mode == 1:
            fresh_folder()
            with open(os.path.join(FOLDER, "quantization_config.json"), "wb") as f:
                f.write(payload)
            raw = load_json(payload, "quantization_config.json")
            cfg = QuantConfig(raw, "quantization_config.json")
            rules(cfg)
            files.load_config(FOLDER)  # no .safetensors: an SdnqFormatError after the config parsed
        elif mode == 2:
            fresh_folder()
            with open(os.path.join(FOLDER, "config.json"), "wb") as f:
                f.write(payload)
            files.load_config(FOLDER)
        else:
            text = payload.decode("utf-8", "surrogateescape")
            cfg, _, _ = files.config_from_metadata(text, "model.safetensors")
            rules(cfg)
    except SdnqError:
        pass


def replay(dirs):
    """run every input of the given corpus directories once (coverage measurement)"""
    n = 0
    for d in dirs:
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                one_input(f.read())
            n += 1
    print(f"replayed {n} inputs")


def main():
    try:
        if sys.argv[1:2] == ["--replay"]:
            replay(sys.argv[2:])
            return
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(BASE, ignore_errors=True)


if __name__ == "__main__":
    main()
