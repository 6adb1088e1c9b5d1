"""benchmarks/bench_comfyui.py on the CPU: `--tiny --device cpu`, the whole pipeline end to end
(model files built with comfy_sdnq.quantize / comfy_sdnq.save, one ComfyUI process per
configuration, the stock UNETLoader, comfy.sample.sample, unload), with the cap emulated (ComfyUI
never partially loads onto a CPU). Checks the JSON and the markdown, that the capped rows loaded
less than the model and cast layers per step through the lowvram path, that their outputs are
bit-equal to the resident runs', that nothing stays pinned, and that the Dynamic VRAM rows are
reported as not run, with the reason. The GPU run is the same script without --tiny/--device."""
import json
import os
import statistics
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench_comfyui.py")
RAN = ("sdnq-resident-legacy", "sdnq-capped-legacy", "bf16-resident-legacy", "bf16-capped-legacy")
NOT_RUN = ("sdnq-resident-dynamic", "sdnq-capped-dynamic", "bf16-resident-dynamic", "bf16-capped-dynamic")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from conftest import COMFYUI_PATH, comfyui_found

    if not comfyui_found():
        pytest.skip(f"ComfyUI not found at {COMFYUI_PATH}")
    tmp = tmp_path_factory.mktemp("bench_comfyui")
    out = tmp / "bench.json"
    path = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, COMFYUI_PATH=COMFYUI_PATH, PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run([sys.executable, BENCH, "--tiny", "--device", "cpu", "--out", str(out),
                           "--workdir", str(tmp / "work"), "--timeout", "100", "--profile", "--torch-profile",
                           "--repeat", "2"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    log = f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text()) if out.exists() else None, log


def test_runs_and_writes_json(bench):
    proc, doc, log = bench
    assert proc.returncode == 0, log
    assert doc is not None, log
    for key in ("env", "model", "cap_bytes", "flags", "configs", "comparisons", "evidence", "markdown"):
        assert key in doc, key
    env = doc["env"]
    assert env["torch"] and env["comfyui_version"] and env["comfyui_commit"]
    assert doc["failed"] == [] and doc["evidence_missing"] == {}, log
    main = doc["model"]["main"]
    assert (main["double"], main["single"], main["hidden"]) == (1, 2, 512)
    # every Linear of the blocks: double (img + txt: mod, qkv, proj, 2 mlp), single (linear1, linear2, modulation)
    assert main["quantized_layers"] == 1 * 2 * 5 + 2 * 3
    assert 0 < main["sdnq_bytes"] < main["bf16_bytes"]
    assert 0 < doc["cap_bytes"] < main["sdnq_bytes"]


def test_markdown_table(bench):
    proc, doc, log = bench
    text = doc["markdown"]
    assert text in proc.stdout
    assert "CPU" in text and "ComfyUI " + doc["env"]["comfyui_version"] in text and doc["env"]["torch"] in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for name in RAN + NOT_RUN:
        assert any(line.startswith(f"| {name} |") for line in rows), name
    assert sum(line.startswith("| sdnq-capped-legacy |") for line in rows) == 2  # timings + evidence tables
    # --repeat 2: the step column gives the range of the two processes
    assert any(line.startswith("| sdnq-resident-legacy |") and "2 runs)" in line for line in rows)
    assert "2 processes per row" in text


def test_configurations(bench):
    _, doc, log = bench
    cfg = doc["configs"]
    assert set(cfg) == set(RAN + NOT_RUN)
    for name in NOT_RUN:
        assert cfg[name]["status"] == "not_run" and "Dynamic VRAM" in cfg[name]["reason"], cfg[name]
    for name in RAN:
        r = cfg[name]
        assert r["status"] == "ok", (name, r.get("error"), r.get("log_tail"))
        assert r["comfy_args"] == ["--cpu"] and r["mode"] == "legacy"
        assert r["torch_imported_before_aimdo_init"] is False
        assert len(r["steps"]) == 2 and r["step_s"] > 0 and r["warmup_s"] > 0
        assert not r.get("oom")
        assert r["patcher"] == ("SDNQModelPatcher" if name.startswith("sdnq") else "ModelPatcher")
        second = r["second"]  # the dense second model, loaded beside the main one the whole time
        assert second["loaded_before"] == second["model_size"] > 0
        assert second["loaded_during"] > 0 and second["loaded_after_rerun"] > 0
        after = r["after_unload"]
        assert after["main_loaded"] == 0 and after["total_pinned"] == 0 and after["pinned_entries"] == 0
        assert r["loaded_models_after_unload"] == []
        # --profile: the timed steps' host functions, the SDNQ rows through comfy_sdnq's linear
        assert "Ordered by: internal time" in r["profile"]
        assert "comfy_sdnq" in r["profile"] or not name.startswith("sdnq"), r["profile"][:3000]
        # --repeat 2: a second process per row, round-robin; the step is the median of the two
        runs = r["step_s_runs"]
        assert len(runs) == 2 and all(v > 0 for v in runs) and r["step_s"] == statistics.median(runs), runs
        # --torch-profile: the torch ops of the timed steps, the SDNQ rows through sdnq::linear
        assert "Self CPU" in r["torch_profile"]
        assert "sdnq::linear" in r["torch_profile"] or not name.startswith("sdnq"), r["torch_profile"][:3000]
    for name in ("sdnq-capped-legacy", "bf16-capped-legacy"):
        r = cfg[name]
        assert r["capped"] and r["model_lowvram"] and r["lowvram_modules"] > 0
        assert 0 <= r["loaded_size_max"] < r["model_size"], name
        assert r["loaded_size"] <= doc["cap_bytes"]
        assert all(n > 0 for n in r["lowvram_casts_per_step"]), r["lowvram_casts_per_step"]
        assert any("loaded partially" in line for line in r["comfy_log"]), r["comfy_log"]
        ev = doc["evidence"][name]
        assert ev["loaded_lt_model"] and ev["streaming"] and ev["outputs_agree"] and ev["nothing_left"]
    for name in ("sdnq-resident-legacy", "bf16-resident-legacy"):
        r = cfg[name]
        assert r["loaded_size"] == r["model_size"] and not r["model_lowvram"]
        assert all(n == 0 for n in r["lowvram_casts_per_step"])
    # SDNQ: ComfyUI counts every byte that streams, still far below the dequantized model
    assert cfg["sdnq-capped-legacy"]["model_size"] < cfg["bf16-capped-legacy"]["model_size"]


def test_outputs_agree(bench):
    _, doc, log = bench
    cmp = doc["comparisons"]
    assert cmp["sdnq-capped-legacy"]["ref"] == "sdnq-resident-legacy"
    assert cmp["sdnq-capped-legacy"]["equal"] and cmp["sdnq-capped-legacy"]["rel"] == 0
    assert cmp["bf16-capped-legacy"]["ref"] == "bf16-resident-legacy"
    assert cmp["bf16-capped-legacy"]["equal"] and cmp["bf16-capped-legacy"]["rel"] == 0
    # the dense file holds the SDNQ weights dequantized: the same model up to the order of rounding
    for name in ("bf16-resident-legacy", "bf16-capped-legacy"):
        assert cmp[name]["rel_vs_sdnq"] < 1e-2, cmp[name]
    assert all(c["finite"] for c in cmp.values())
