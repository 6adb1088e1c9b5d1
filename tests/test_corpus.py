"""The bad-file corpus (tests/corpus/make_corpus.py) through every loader.

The corpus is generated at test time from a tiny model the sdnq package quantizes and
saves (no binary is committed). Each case is loaded in a child process (a crash fails
one case, not pytest) after a good model was loaded and used in that process, through
comfy_sdnq.load, the standalone loader (folders) and ComfyUI's stock loader path (files;
skipped without ComfyUI). Every case asserts:

* the outcome: an SdnqError of the expected class whose message names the damaged file
  and the key (where one applies), and what the case says; "error-or-ok" cases (random
  bit flips) may also load. ComfyUI: where the safetensors library itself refuses the
  file, ComfyUI's stock error stands (comfy_sdnq never sees the file); any other damage
  must raise comfy_sdnq's SdnqError naming file and key;
* no crash (the child exits normally), no BaseException other than Exception;
* bounded memory: the peak RSS grows by less than MEM_BOUND_MB during the case (memory
  bombs in a process of their own, and under an address-space limit where not sanitized);
* nothing executed: pickles' marker files are never created;
* the model loaded before is untouched: it gives the same outputs, bit for bit.
"""
import json
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(TESTS, "corpus"))
import make_corpus  # noqa: E402

import comfy_sdnq  # noqa: E402
from comfy_sdnq import errors  # noqa: E402

MEM_BOUND_MB = 300
# under ASan (COMFY_SDNQ_SANITIZED, set by .ci/sanitize.sh) an address-space limit cannot
# hold the sanitizer's shadow memory; the RSS bound still applies
MEM_LIMIT = 0 if os.environ.get("COMFY_SDNQ_SANITIZED") else 1024 * 2**20
PKG = os.path.dirname(os.path.dirname(os.path.abspath(comfy_sdnq.__file__)))

PARAMS = []
for _c in make_corpus.CASES:
    for _loader in make_corpus.applies(_c):
        marks = [pytest.mark.comfyui] if _loader == "comfyui" else []
        PARAMS.append(pytest.param(_c.id, _loader, id=f"{_c.id}-{_loader}", marks=marks))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    cases = make_corpus.generate(out)
    return {"manifest": os.path.join(out, "manifest.json"), "cases": {c["id"]: c for c in cases}}


def lsan_tool_crash(pid: int) -> bool:
    """whether LeakSanitizer itself died at the exit of the sanitized child `pid`: its tracer
    (which stops every thread to scan them) now and then takes a SIGSEGV while torch's thread
    pools wind down, and the process aborts with no leak checked and no report - a failure of the
    tool, which .ci/sanitize.sh retries for its own pytest runs. Read from the child's report file
    (ASAN_OPTIONS log_path); False without one or where it also holds a real report."""
    opts = dict(kv.split("=", 1) for kv in os.environ.get("ASAN_OPTIONS", "").split(":") if "=" in kv)
    if "log_path" not in opts:
        return False
    try:
        with open(f"{opts['log_path']}.{pid}", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return "LeakSanitizer has encountered a fatal error" in text and "ERROR: " not in text


def run_worker(manifest: str, loader: str, ids: list[str], timeout: float = 600) -> dict:
    """{id: result} of the worker over ids; a case the worker died in is a 'crash', the rest
    go on in a new worker. A worker that reported every case and then failed at exit fails the
    test (a sanitizer report), unless LeakSanitizer itself crashed there: that run is repeated once."""
    results, todo, retried = {}, list(ids), False
    env = dict(os.environ, CORPUS_PKG=PKG, CORPUS_MEM_LIMIT=str(MEM_LIMIT))
    while todo:
        p = subprocess.Popen([sys.executable, os.path.join(TESTS, "corpus", "worker.py"), manifest, loader, *todo],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
        ran = list(todo)
        for line in stdout.splitlines():
            if line.startswith("{"):
                d = json.loads(line)
                results[d["id"]] = d
        todo = [i for i in todo if i not in results]
        if p.returncode == 0 and not todo:
            break
        if todo:
            results[todo[0]] = {"id": todo[0], "outcome": "crash", "msg": f"exit {p.returncode}: {stderr[-3000:]}"}
            todo = todo[1:]
        elif not retried and lsan_tool_crash(p.pid):
            retried = True
            todo = ran
            for i in ran:
                results.pop(i, None)
        else:  # every case reported, then the process failed (a sanitizer report at exit)
            raise AssertionError(f"{loader} worker exited {p.returncode}: {stderr[-3000:]}")
    return results


@pytest.fixture(scope="session")
def results(corpus):
    """{loader: {id: result}}, each loader run once"""
    cache = {}

    def get(loader):
        if loader not in cache:
            ids = [c.id for c in make_corpus.CASES if loader in make_corpus.applies(c)]
            plain = [i for i in ids if not corpus["cases"][i]["bomb"]]
            out = run_worker(corpus["manifest"], loader, plain)
            # the memory bombs in a process of their own, so no earlier case's peak hides theirs
            out.update(run_worker(corpus["manifest"], loader, [i for i in ids if i not in plain]))
            cache[loader] = out
        return cache[loader]

    return get


def names_key(msg: str, key: str) -> bool:
    return f"'{key}" in msg if key.endswith(".") else repr(key) in msg


@pytest.mark.parametrize("case_id,loader", PARAMS)
def test_corpus_case(corpus, results, case_id, loader):
    case = corpus["cases"][case_id]
    if loader == "comfyui":
        from conftest import comfyui_found

        if not comfyui_found():
            pytest.skip("ComfyUI not found")
    r = results(loader)[case_id]
    what = f"{case_id} via {loader}: {r}"
    assert r["outcome"] in ("ok", "error"), what                       # no crash, nothing but an Exception
    assert not r["marker"], f"{what}: the pickle was unpickled"
    assert r["base_same"], f"{what}: the model loaded before changed"
    assert r["rss_mb"] < MEM_BOUND_MB, f"{what}: peak RSS grew {r['rss_mb']} MB"
    msg = r["msg"]
    stock = loader == "comfyui" and r["stock_rejects"]
    if r["outcome"] == "ok":
        assert case["expect"] == "error-or-ok" or loader in case["ok_in"], f"{what}: loaded"
        return
    if stock:  # the safetensors library refused it inside ComfyUI's own load_torch_file: ComfyUI's error
        assert not r["sdnq"], what
        return
    assert r["sdnq"], f"{what}: not an SdnqError"
    if case["expect"] == "error" and loader not in case["ok_in"]:
        assert r["exc"] == case["exc"] or issubclass(getattr(errors, r["exc"]), getattr(errors, case["exc"])), what
    assert case["file"] in msg, f"{what}: the message does not name {case['file']}"
    if case["key"] and case["expect"] == "error":
        assert names_key(msg, case["key"]), f"{what}: the message does not name key {case['key']}"
    if loader != "comfyui" and case["expect"] == "error":  # ComfyUI hands comfy_sdnq tensors, not the file
        for frag in case["says"]:
            assert frag in msg, f"{what}: {frag!r} not in the message"


def test_corpus_counts(corpus):
    """every category of the issue has cases; the count is reported"""
    cats = {}
    for c in corpus["cases"].values():
        cats[c["category"]] = cats.get(c["category"], 0) + 1
    print(f"\ncorpus: {len(corpus['cases'])} cases: {cats}")
    for need in ("truncated", "bit-flip", "header-length", "offsets", "dtype-shape-lie", "side-tensors", "nan-inf",
                 "dtype-names", "config-fields", "memory-bomb", "json", "pickle"):
        assert cats.get(need), need


def test_corpus_is_deterministic(tmp_path, corpus):
    """the same bytes on a second run (ids and files), so a failure reproduces"""
    some = ["file:bitflip-header-3", "folder:truncated-mid-scale-of-transformer_blocks", "file:nan-scale"]
    again = {c["id"]: c for c in make_corpus.generate(str(tmp_path), some)}
    for i in some:
        a, b = corpus["cases"][i]["file"], again[i]["file"]
        assert open(a, "rb").read() == open(b, "rb").read(), i


@pytest.mark.parametrize("loader", ["load", "standalone", pytest.param("comfyui", marks=pytest.mark.comfyui)])
def test_corpus_outcome_summary(corpus, results, loader):
    """per loader: how the cases ended (printed with -s; the per-case tests assert them)"""
    if loader == "comfyui":
        from conftest import comfyui_found

        if not comfyui_found():
            pytest.skip("ComfyUI not found")
    got = results(loader)
    counts = {}
    for r in got.values():
        what = "ok" if r["outcome"] == "ok" else ("stock error" if r.get("stock_rejects") else
                                                   r.get("exc") if r.get("sdnq") else f"OTHER {r.get('exc')}")
        counts[what] = counts.get(what, 0) + 1
    peak = max(r.get("rss_mb", 0) for r in got.values())
    print(f"\n{loader}: {len(got)} cases: {dict(sorted(counts.items()))}; largest peak-RSS growth {peak} MB")
    assert not [k for k in counts if k.startswith("OTHER") or k == "None"], counts


def test_lsan_tool_crash_detection(tmp_path, monkeypatch):
    """run_worker repeats a worker only for LeakSanitizer's own crash, never for a real report"""
    log = tmp_path / "asan"
    monkeypatch.setenv("ASAN_OPTIONS", f"detect_leaks=1:log_path={log}")
    (tmp_path / "asan.11").write_text("Tracer caught signal 11: addr=0x1fcd8 pc=0x7f sp=0x7f\n"
                                      "==11==LeakSanitizer has encountered a fatal error.\n")
    (tmp_path / "asan.12").write_text("==12==ERROR: LeakSanitizer: detected memory leaks\n"
                                      "==12==LeakSanitizer has encountered a fatal error.\n")
    assert lsan_tool_crash(11)
    assert not lsan_tool_crash(12)  # a leak report as well: a real failure
    assert not lsan_tool_crash(13)  # no report file
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1")
    assert not lsan_tool_crash(11)  # reports not written to files: nothing to read
