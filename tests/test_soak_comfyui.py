"""benchmarks/soak_comfyui.py: the load/unload soak in one real ComfyUI process.

The end-to-end test runs the script on the CPU with tiny models and a reduced cycle count
(16 cycles, growth measured from cycle 8; the full run is 100 cycles from cycle 10), the C heap
trimmed every cycle, through the same bound logic: SDNQ and dense models alternate through the stock loader, every cycle samples
and unloads, host RSS grows < 64 MiB per model kind, pinned memory returns to its base value,
no cycle raises, nothing stays loaded or pinned at the end, and ComfyUI never warns of a model
that reference counting did not free. The bound logic itself is checked on synthetic cycles."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(ROOT, "benchmarks", "soak_comfyui.py")
MiB = 1 << 20


def _soak_module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import soak_comfyui
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    return soak_comfyui


def _rows(n, rss=lambda i: 1000 * MiB, pinned=lambda i: 0, **extra):
    return [{"cycle": i, "kind": "sdnq" if i % 2 else "dense", "rss": rss(i), "pinned": pinned(i),
             "pinned_entries": 0, "patcher_pinned": 0, **extra} for i in range(1, n + 1)]


def test_bound_logic():
    soak = _soak_module()
    bound = 64 * MiB
    ok = soak.check({"status": "ok", "cycles": _rows(100, rss=lambda i: 1000 * MiB + i * 100_000)}, 10, bound)
    assert ok["ok"] and ok["cycles_run"] == 100 and ok["errors"] == 0
    assert ok["per_kind"]["dense"]["from_cycle"] == 10 and ok["per_kind"]["dense"]["to_cycle"] == 100
    assert ok["per_kind"]["sdnq"]["from_cycle"] == 11 and ok["per_kind"]["sdnq"]["to_cycle"] == 99
    assert ok["per_kind"]["dense"]["rss"]["growth"] == 90 * 100_000
    assert ok["per_kind"]["dense"]["rss"]["slope_per_cycle"] == pytest.approx(100_000)
    # the warm-up before the base cycle does not count; growth after it does
    warm = soak.check({"status": "ok", "cycles": _rows(100, rss=lambda i: (500 if i < 10 else 1000) * MiB)}, 10,
                      bound)
    assert warm["ok"]
    leak = soak.check({"status": "ok", "cycles": _rows(100, rss=lambda i: 1000 * MiB + i * MiB)}, 10, bound)
    assert not leak["ok"] and leak["per_kind"]["dense"]["rss"]["growth"] == 90 * MiB
    one_kind = soak.check({"status": "ok", "cycles": _rows(
        100, rss=lambda i: 1000 * MiB + (i * MiB if i % 2 else 0))}, 10, bound)
    assert not one_kind["ok"] and one_kind["per_kind"]["dense"]["rss"]["growth"] == 0
    pinned = soak.check({"status": "ok", "cycles": _rows(100, pinned=lambda i: 4096 if i > 50 else 0)}, 10, bound)
    assert not pinned["ok"] and pinned["per_kind"]["dense"]["pinned"]["returns"] is False
    rows = _rows(100)
    rows[40].update(error="OutOfMemoryError: CUDA out of memory", oom=True)
    oom = soak.check({"status": "ok", "cycles": rows}, 10, bound)
    assert not oom["ok"] and oom["ooms"] == 1 and "out of memory" in oom["first_error"]
    assert not soak.check({"status": "ok", "cycles": _rows(9)}, 10, bound)["ok"]  # never reached the base cycle
    vram = soak.check({"status": "ok", "cycles": _rows(100, torch_allocated=0, device_used=0)}, 10, bound)
    assert vram["ok"] and vram["per_kind"]["sdnq"]["device_used"]["growth"] == 0


@pytest.mark.comfyui
@pytest.mark.slow
def test_soak_cpu(tmp_path):
    from conftest import COMFYUI_PATH, comfyui_found

    if not comfyui_found():
        pytest.skip(f"ComfyUI not found at {COMFYUI_PATH}")
    out = tmp_path / "soak.json"
    path = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, COMFYUI_PATH=COMFYUI_PATH, PYTHONPATH=os.pathsep.join(path))
    # --malloc-trim: glibc keeps freed heap memory, and with models this small (20-80 MiB) the RSS of
    # 16 cycles swings by up to ~80 MiB without any memory in use (the 100-cycle runs in
    # benchmarks/results show it: no trend, flat once trimmed); trimmed, the bound is not flaky
    proc = subprocess.run([sys.executable, SOAK, "--tiny", "--device", "cpu", "--cycles", "16", "--base-cycle", "8",
                           "--bound-mib", "256", "--malloc-trim", "--out", str(out), "--workdir", str(tmp_path / "work"),
                           "--timeout", "150"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    log = f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert out.exists(), log
    doc = json.loads(out.read_text())
    assert (tmp_path / "soak.md").read_text().strip() == doc["markdown"].strip()
    assert list(doc["runs"]) == ["cpu"]
    run, chk = doc["runs"]["cpu"], doc["checks"]["cpu"]
    assert run["status"] == "ok", (run.get("error"), run.get("log_tail"))
    rows = run["cycles"]
    assert [r["cycle"] for r in rows] == list(range(1, 17))
    assert [r["kind"] for r in rows[:2]] == ["sdnq", "dense"]
    assert {r["patcher"] for r in rows if r["kind"] == "sdnq"} == {"SDNQModelPatcher"}
    assert {r["patcher"] for r in rows if r["kind"] == "dense"} == {"ModelPatcher"}
    assert all(not r.get("error") and r["finite"] for r in rows), [r.get("error") for r in rows]
    # gc unloading: only the model of the cycle stays loaded; the previous one was loaded beside it while it sampled
    assert all(r["loaded_models"] == 1 for r in rows)
    assert all(r["prev_loaded_during"] > 0 for r in rows[1:])
    assert all(r["pinned"] == 0 and r["pinned_entries"] == 0 for r in rows)  # ComfyUI pins nothing on the CPU
    assert chk["errors"] == 0 and set(chk["per_kind"]) == {"sdnq", "dense"}
    # the leak check is the trimmed RSS (heap returned to the system after each cycle), held to a
    # quarter of the 64 MiB; the untrimmed RSS of 16 cycles only has to stay within the
    # script's bound, set to a gross 256 MiB (--bound-mib): it swings with glibc's arenas (one run:
    # SDNQ cycles 1058-1163 MiB untrimmed, "growth" 82 MiB, while the trimmed RSS moved 0.1 MiB).
    # The 64 MiB bound over 100 cycles is the benchmark's (docs/reliability.md).
    for kind, k in chk["per_kind"].items():
        assert k["rss_trimmed"]["growth"] < 16 * MiB, (kind, k["rss_trimmed"], log)
        assert k["rss_file"]["growth"] < 8 * MiB, (kind, k["rss_file"])  # no model file left mapped
        assert k["pinned"]["returns"]
    assert chk["ok"] and doc["bound_failed"] == [] and doc["failed"] == [], log
    end = run["end"]
    assert end["loaded_models"] == 0 and end["pinned"] == 0 and end["leak_warnings"] == 0
    assert proc.returncode == 0, log
