"""Load corpus cases through one loader, in this process, one JSON line per case (stdout).

    python tests/corpus/worker.py MANIFEST LOADER CASE_ID [CASE_ID ...]

LOADER: "load" (comfy_sdnq.load + dequantize() of every SDNQ tensor), "standalone"
(comfy_sdnq.standalone.load_model + a forward pass) or "comfyui" (ComfyUI's stock
comfy.utils.load_torch_file with comfy_sdnq's hooks installed + dequantize(), then the
"Load Diffusion Model" node for cases that must fail). Before the cases, the base model
is loaded and used; after each case it is used again and compared bit for bit.

Per case: {"id", "outcome": "ok" | "error" | "other", "exc": class name, "sdnq": is an
SdnqError, "msg", "rss_mb": the case's peak RSS above the RSS it started at, "marker": the pickle
marker file exists, "base_same": the earlier model still gives the same outputs,
"stock_rejects": (comfyui, where the error is not comfy_sdnq's) the safetensors library
itself refuses the file}.
Environment: CORPUS_PKG (folder holding the comfy_sdnq to test, put first on sys.path),
CORPUS_MEM_LIMIT (bytes of address space above the current, 0 = none; not under ASan).
"""
import json
import os
import resource
import sys

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
if os.environ.get("CORPUS_PKG"):
    sys.path.insert(0, os.environ["CORPUS_PKG"])

import torch  # noqa: E402

import comfy_sdnq  # noqa: E402
from comfy_sdnq import layout  # noqa: E402
from comfy_sdnq.errors import SdnqError  # noqa: E402

FLUX_IN = None


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_reset() -> float:
    """start measuring a case: the peak RSS (VmHWM) reset to the current RSS (Linux
    clear_refs 5); returns the RSS the case's growth is measured from"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:  # no clear_refs: the process's peak so far (growth is then a lower bound)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dequantized(sd: dict) -> dict:
    return {k: (v.dequantize() if layout.is_sdnq(v) else v.clone()) for k, v in sd.items()}


def flux_inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(64, 3)
    ids[:, 1], ids[:, 2] = torch.arange(64) // 8, torch.arange(64) % 8
    return dict(hidden_states=torch.randn(1, 64, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 128, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]), img_ids=ids,
                txt_ids=torch.zeros(8, 3))


def forward(model):
    with torch.no_grad():
        return model(**flux_inputs()).sample


def setup_comfyui(cases_dir: str):
    path = os.environ.get("COMFYUI_PATH", "/opt/comfyui")
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    import folder_paths

    from comfy_sdnq.comfyui import hooks

    hooks.install()
    folder_paths.add_model_folder_path("diffusion_models", cases_dir, is_default=True)


def stock_rejects(path: str) -> bool:
    import safetensors

    try:
        with safetensors.safe_open(path, framework="pt") as f:
            for k in f.keys():
                f.get_slice(k)
        return False
    except Exception:  # noqa: BLE001 - whatever the library raises
        return True


def main():
    manifest_path, loader, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
    manifest = json.load(open(manifest_path))
    cases = {c["id"]: c for c in manifest["cases"]}
    base = manifest["base"]
    cases_dir = os.path.join(os.path.dirname(manifest_path), "cases")
    # the model loaded before the bad files, and what it gives
    if loader == "standalone":
        from comfy_sdnq import standalone

        model = standalone.load_model(base["folder"], dtype=torch.float32, device="cpu")
        use = lambda: {"out": forward(model)}  # noqa: E731
    elif loader == "comfyui":
        setup_comfyui(cases_dir)
        import comfy.utils

        sd0 = comfy.utils.load_torch_file(base["file"])
        assert any(layout.is_sdnq(v) for v in sd0.values()), "the hooks did not load the base as SDNQ"
        use = lambda: dequantized(sd0)  # noqa: E731
    else:
        sd0 = comfy_sdnq.load(base["file"])
        use = lambda: dequantized(sd0)  # noqa: E731
    want = use()
    limit = int(os.environ.get("CORPUS_MEM_LIMIT", "0") or 0)
    if limit:
        vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + limit, vm + limit))
    for cid in ids:
        c = cases[cid]
        r = {"id": cid, "stock_rejects": None}
        rss0 = peak_reset()
        try:
            if loader == "standalone":
                from comfy_sdnq import standalone

                m = standalone.load_model(c["path"], dtype=torch.float32, device="cpu")
                forward(m)
                del m
            elif loader == "comfyui":
                import comfy.utils

                if c["expect"] == "error":  # the whole "Load Diffusion Model" node: fails where the file does
                    import nodes

                    nodes.UNETLoader().load_unet(os.path.basename(c["path"]), "default")
                else:  # may load: the file as every stock loader node reads it
                    dequantized(comfy.utils.load_torch_file(c["path"]))
            else:
                dequantized(comfy_sdnq.load(c["path"]))
            r.update(outcome="ok", exc=None, sdnq=False, msg="")
        except Exception as exc:  # noqa: BLE001 - what is raised is the result
            r.update(outcome="error", exc=type(exc).__name__, sdnq=isinstance(exc, SdnqError), msg=str(exc)[:4000])
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, MemoryError...
            r.update(outcome="other", exc=type(exc).__name__, sdnq=False, msg=str(exc)[:4000])
        r["rss_mb"] = round(peak_mb() - rss0, 1)
        if loader == "comfyui" and r["outcome"] == "error" and not r["sdnq"]:
            # not comfy_sdnq's error: was it the safetensors library's, before comfy_sdnq saw the file?
            r["stock_rejects"] = stock_rejects(c["path"])
        r["marker"] = os.path.exists(c["marker"])
        got = use()
        r["base_same"] = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
