"""The command line as a user runs it: convert, inspect, verify (exit statuses for
scripts), bad input, and the demo."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "comfy_sdnq", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=HERE)


@pytest.fixture
def dense(tmp_path):
    from models import tiny_net

    tiny_net().save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


def test_convert_inspect_verify(tmp_path, dense):
    r = cli("convert", dense, tmp_path / "q", "--dtype", "uint4", "--svd-rank", "8", "--override",
            "int8=blocks.0.weight")
    assert r.returncode == 0, r.stderr
    assert "layers quantized" in r.stdout and "worst layer error" in r.stdout
    r = cli("inspect", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert "blocks.0.weight" in r.stdout and "int8" in r.stdout and "vs bf16" in r.stdout
    r = cli("inspect", tmp_path / "q", "--json")
    rows = {row["key"]: row for row in json.loads(r.stdout)[0]["layers"]}
    assert rows["blocks.0.weight"]["type"] == "int8" and rows["blocks.1.weight"]["type"] == "uint4"
    assert rows["blocks.1.weight"]["svd"] == 8 and rows["blocks.1.weight"]["group"] == "128"
    assert "embed.weight" not in rows  # an embedding: sdnq leaves it dense
    r = cli("verify", dense, tmp_path / "q")
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    r = cli("verify", dense, tmp_path / "q", "--max-error", "0.001")
    assert r.returncode == 1 and "FAIL" in r.stdout and "FAILED" in r.stdout


def test_verify_catches_a_corrupted_layer(tmp_path, dense):
    import torch

    import comfy_sdnq
    from comfy_sdnq.safetensors_io import SafetensorsFile

    assert cli("convert", dense, tmp_path / "q.safetensors", "--dtype", "int8").returncode == 0
    st = SafetensorsFile(str(tmp_path / "q.safetensors"))
    tensors = {k: st.get(k).clone() for k in st.keys()}
    tensors["blocks.1.scale"] *= 3  # a wrong scale: dequantizes fine, to the wrong weights
    from comfy_sdnq.safetensors_io import write

    write(str(tmp_path / "bad.safetensors"), tensors, st.metadata)
    r = cli("verify", dense, tmp_path / "bad.safetensors")
    assert r.returncode == 1 and "FAIL blocks.1.weight" in r.stdout
    assert comfy_sdnq.load(tmp_path / "bad.safetensors")["blocks.1.weight"].dtype == torch.bfloat16


def test_bad_input_exit_status(tmp_path, dense):
    r = cli("convert", tmp_path / "nothing", tmp_path / "q")
    assert r.returncode == 2 and "nothing: no such file" in r.stderr
    (tmp_path / "x.safetensors").write_bytes(b"garbage!" * 4)
    r = cli("convert", tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    assert r.returncode == 2 and "x.safetensors" in r.stderr and "Traceback" not in r.stderr
    r = cli("convert", dense, tmp_path / "q", "--dtype", "uint99")
    assert r.returncode == 2 and "uint99" in r.stderr
    r = cli("verify", dense, tmp_path / "missing")
    assert r.returncode == 2 and "missing" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["dense", "x.safetensors"]


def test_info():
    r = cli("info")
    assert r.returncode == 0 and "backend:" in r.stdout and "types: 176" in r.stdout


@pytest.mark.slow
def test_demo_standalone():
    """README's main-job command, without ComfyUI, on a small image"""
    r = cli("demo", "--standalone", "--steps", "2", "--size", "64", "--svd-rank", "0", "--offload", "layer",
            timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "output vs dense" in r.stdout and "OK" in r.stdout and "ms/step" in r.stdout
