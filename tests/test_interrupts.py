"""Interrupts: a load, a conversion or a sampling run stopped half-way (KeyboardInterrupt, or
ComfyUI's InterruptProcessingException, both BaseExceptions) leaves no half-built model
registered with ComfyUI, no partial output file or folder, no mapped file or pinned buffer
behind, and the standalone "layer" offload puts every block back on its host copy and
synchronizes its side stream on every exit path (emulated on the CPU; for real on CUDA)."""
import contextlib
import gc
import os
import signal
import subprocess
import sys
import weakref

import pytest
import torch

import comfy_sdnq
from comfy_sdnq import converter, files, offload
from comfy_sdnq.safetensors_io import write
from helpers import FakeStreamAPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Interrupted(BaseException):
    """stands for ComfyUI's InterruptProcessingException (a BaseException) outside ComfyUI"""


def _mapped(path) -> bool:
    """whether the file is memory-mapped by this process"""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(real) for line in f)


def _leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith((".tmp-", ".old-")))


# ---------------------------------------------------------------------------
# conversion


def _dense(tmp_path, name="dense.safetensors"):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(6):
        sd[f"blocks.{i}.proj.weight"] = torch.randn(256, 256, generator=g).to(torch.bfloat16)
        sd[f"blocks.{i}.proj.bias"] = torch.randn(256, generator=g).to(torch.bfloat16)
    path = tmp_path / name
    write(str(path), sd)
    return path


def _stop_at(n, exc):
    def progress(done, total, key):
        if done == n:
            raise exc()
    return progress


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Interrupted])
def test_convert_file_interrupted(tmp_path, exc):
    src = _dense(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "q.safetensors"
    with pytest.raises(exc):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", progress=_stop_at(5, exc))
    assert os.listdir(out) == []  # no output, no temporary file
    # over an existing output: the old file stays as it was
    converter.convert(src, dst, weights_dtype="int8", device="cpu")
    before = dst.read_bytes()
    with pytest.raises(exc):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", overwrite=True, progress=_stop_at(11, exc))
    assert dst.read_bytes() == before and os.listdir(out) == ["q.safetensors"]
    # interrupted while the header goes in: still nothing half-written
    with pytest.raises(exc), _raising(converter.StreamWriter, "close", exc):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", overwrite=True)
    assert dst.read_bytes() == before and os.listdir(out) == ["q.safetensors"]
    assert not _mapped(src)


@contextlib.contextmanager
def _raising(cls, name, exc):
    orig = getattr(cls, name)

    def boom(self, *a, **k):
        raise exc()

    setattr(cls, name, boom)
    try:
        yield
    finally:
        setattr(cls, name, orig)


def _dense_folder(tmp_path):
    from models import tiny_net

    tiny_net().save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


def test_convert_folder_interrupted(tmp_path):
    src = _dense_folder(tmp_path)
    dst = tmp_path / "q"
    with pytest.raises(KeyboardInterrupt):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", progress=_stop_at(3, KeyboardInterrupt))
    assert not dst.exists() and _leftovers(tmp_path) == []
    converter.convert(src, dst, weights_dtype="int8", device="cpu")
    before = {n: (dst / n).read_bytes() for n in sorted(os.listdir(dst))}
    with pytest.raises(Interrupted):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", overwrite=True,
                          progress=_stop_at(3, Interrupted))
    assert {n: (dst / n).read_bytes() for n in sorted(os.listdir(dst))} == before
    assert _leftovers(tmp_path) == []


def test_convert_folder_interrupted_while_renaming(tmp_path, monkeypatch):
    """the old output moved aside, then the interrupt before the new one is in place: the old
    output comes back (it was lost, left under a hidden .old- name, before)"""
    src = _dense_folder(tmp_path)
    dst = tmp_path / "q"
    converter.convert(src, dst, weights_dtype="int8", device="cpu")
    before = {n: (dst / n).read_bytes() for n in sorted(os.listdir(dst))}
    replace, calls = os.replace, []

    def interrupted_replace(a, b):
        if os.path.dirname(a) == str(tmp_path):  # the output folder's renames, not the files' inside it
            calls.append((os.path.basename(a)[:5], os.path.basename(b)[:5]))
            if len(calls) == 2:  # q -> .old-*, then .tmp-* -> q
                raise KeyboardInterrupt
        return replace(a, b)

    monkeypatch.setattr(converter.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        converter.convert(src, dst, weights_dtype="uint4", device="cpu", overwrite=True)
    monkeypatch.undo()
    assert calls == [("q", ".old-"), (".tmp-", "q"), (".old-", "q")]  # the third puts the old output back
    assert {n: (dst / n).read_bytes() for n in sorted(os.listdir(dst))} == before
    assert _leftovers(tmp_path) == []


def test_cli_convert_sigint(tmp_path):
    """Ctrl-C in `python -m comfy_sdnq convert`: exit status 130, one line, no output left"""
    src = _dense(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # a terminal's Ctrl-C: Python turns SIGINT into KeyboardInterrupt only where the process
    # started with SIGINT at its default, and a shell runs background jobs with it ignored (as
    # a CI runner may run pytest): the child sets Python's handler itself
    code = ("import os, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from comfy_sdnq import converter, cli\n"
            "tick = converter._Converter._tick\n"
            "def _tick(self, key):\n"
            "    tick(self, key)\n"
            "    if self.done == 4:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "converter._Converter._tick = _tick\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code, "convert", str(src), str(out / "q.safetensors"), "--dtype",
                        "uint4", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 128 + signal.SIGINT, r.stderr
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------
# loading


def _sdnq_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(4):
        w = torch.randn(128, 128, generator=g).to(torch.bfloat16)
        sd[f"blocks.{i}.proj.weight"] = comfy_sdnq.quantize(w, "uint4", use_svd=True, svd_rank=8,
                                                            torch_dtype=torch.bfloat16)
        sd[f"blocks.{i}.proj.bias"] = torch.zeros(128, dtype=torch.bfloat16)
    path = tmp_path / "q.safetensors"
    comfy_sdnq.save(sd, path, {"weights_dtype": "uint4", "use_svd": True, "svd_rank": 8})
    return path


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Interrupted])
def test_load_interrupted(tmp_path, monkeypatch, exc):
    path = _sdnq_file(tmp_path)
    sd = comfy_sdnq.load(path)
    ref = {k: v.dequantize() if comfy_sdnq.is_sdnq(v) else v.clone() for k, v in sd.items()}
    assert _mapped(path)  # the tensors are views of the mapped file ...
    del sd
    gc.collect()
    assert not _mapped(path)  # ... and the mapping goes with them
    build, calls = files.build_layer, []

    def interrupted(*a, **k):
        calls.append(a[1])
        if len(calls) == 3:
            raise exc()
        return build(*a, **k)

    monkeypatch.setattr(files, "build_layer", interrupted)
    with pytest.raises(exc):
        comfy_sdnq.load(path)
    monkeypatch.undo()
    gc.collect()
    assert len(calls) == 3 and not _mapped(path)
    sd = comfy_sdnq.load(path)
    assert all(torch.equal(sd[k].dequantize() if comfy_sdnq.is_sdnq(sd[k]) else sd[k], v) for k, v in ref.items())


# ---------------------------------------------------------------------------
# the standalone offload: a forward that raises


@pytest.fixture
def emulated(monkeypatch):
    api = FakeStreamAPI()
    monkeypatch.setattr(offload, "_streams", api)
    monkeypatch.setattr(offload, "_STREAM_DEVICES", ("cpu",))
    return api


class _Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin1 = torch.nn.Linear(n, n)
        self.lin2 = torch.nn.Linear(n, n)

    def forward(self, x):
        return x + self.lin2(torch.nn.functional.gelu(self.lin1(x)))


class _Net(torch.nn.Module):
    def __init__(self, n=128, depth=4):
        super().__init__()
        self.inp = torch.nn.Linear(n, n)
        self.blocks = torch.nn.ModuleList(_Block(n) for _ in range(depth))
        self.out = torch.nn.Linear(n, n)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def _net(device="cpu"):
    torch.manual_seed(0)
    net = _Net().eval().requires_grad_(False)
    for b in net.blocks:
        for lin in (b.lin1, b.lin2):
            lin.weight = offload.as_param(comfy_sdnq.quantize(lin.weight.data, "uint4", use_svd=True, svd_rank=8,
                                                              torch_dtype=torch.float32))
    offload.move_module(net, device)
    return net


def _on_host(net, state) -> bool:
    """every streamed weight is a view of its block's packed host buffer"""
    for u in state.units:
        block = net.get_submodule(u.name)
        lo = u.host.untyped_storage().data_ptr()
        hi = lo + u.host.nbytes
        for lin in (block.lin1, block.lin2):
            w = lin.weight
            ptr = (w._qdata if comfy_sdnq.is_sdnq(w) else w).untyped_storage().data_ptr()
            if not lo <= ptr < hi:
                return False
    return True


def _hooks(net) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Interrupted, RuntimeError])
def test_layer_forward_raises(emulated, monkeypatch, exc):
    net = _net()
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    ref = net(x)
    offload.apply(net, "layer", "cpu")
    state = offload.state_of(net)
    mover = state.mover
    assert [u.name for u in state.units] == [f"blocks.{i}" for i in range(4)]
    assert mover.stream is not None and "forward" in net.__dict__  # the side stream; the guard on the runner
    first = net(x)  # packed weights are contiguous copies: the kernels may take another path, same values
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-5)
    assert [u.name for u in mover.live] == ["blocks.0"]  # prefetched for the next forward
    hooks = _hooks(net)

    def boom(*a, **k):
        raise exc("stop")

    synced = mover.stream.synced
    monkeypatch.setattr(net.blocks[2].lin1, "forward", boom)  # mid-way: blocks 2 and 3 are live
    with pytest.raises(exc):
        net(x)
    assert not mover.live and mover.prev is None
    assert mover.stream.synced == synced + 1  # the side stream synchronized on the way out
    assert _on_host(net, state)  # no block left on a device copy
    assert _hooks(net) == hooks
    monkeypatch.undo()
    assert torch.equal(net(x), first)
    offload.remove(net)
    assert "forward" not in net.__dict__ and _hooks(net) == 0
    assert torch.equal(net(x), first)


def test_remove_synchronizes_the_side_stream(emulated):
    net = _net()
    x = torch.randn(3, 128)
    offload.apply(net, "layer", "cpu")
    state = offload.state_of(net)  # held here: the state synchronizes once more when it is freed
    mover = state.mover
    net(x)
    assert mover.live  # the prefetch of the first block
    offload.remove(net)
    assert mover.stream.synced == 1 and emulated.compute.synced >= 1 and not mover.live and not mover.retired
    del state
    assert mover.stream.synced == 2  # a dropped state waits for its copies before its buffers go


def test_guard_keeps_the_forward_signature(emulated):
    import inspect

    net = _net()
    want = inspect.signature(net.forward)
    offload.apply(net, "layer", "cpu")
    assert inspect.signature(net.forward) == want
    offload.remove(net)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Interrupted])
def test_apply_interrupted(emulated, monkeypatch, exc):
    """interrupted while packing the blocks (pinning them, on a GPU): no state, no hook and no
    guard left, no host buffer alive, the model runs as before"""
    net = _net()
    x = torch.randn(3, 128)
    ref = net(x)
    alive = weakref.WeakSet()
    init = offload._HostBuffer.__init__

    def tracked(self, n, pin):
        init(self, n, pin)
        alive.add(self)

    unit_init = offload._Unit.__init__

    def interrupted(self, *a, **k):
        if len(alive) == 2:
            raise exc()
        unit_init(self, *a, **k)

    monkeypatch.setattr(offload._HostBuffer, "__init__", tracked)
    monkeypatch.setattr(offload._Unit, "__init__", interrupted)
    with pytest.raises(exc):
        offload.apply(net, "layer", "cpu")
    gc.collect()
    assert offload.state_of(net) is None and _hooks(net) == 0 and "forward" not in net.__dict__
    assert len(alive) == 0
    monkeypatch.setattr(offload._Unit, "__init__", unit_init)
    # the blocks packed before the interrupt keep their host copies, unpinned once the buffers go
    torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-5)
    offload.apply(net, "layer", "cpu")
    assert len(alive) == 4
    torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-5)
    offload.remove(net)


@pytest.mark.parametrize("mode", ["layer", "model"])
def test_dropped_model_frees_its_host_buffers(emulated, monkeypatch, mode):
    """no reference cycle through the offloading: a model dropped without remove() (a load
    abandoned half-way, a pipeline replaced) frees its packed, pinned host buffers at once, not
    at the garbage collector's next run"""
    alive = weakref.WeakSet()
    init = offload._HostBuffer.__init__

    def tracked(self, n, pin):
        init(self, n, pin)
        alive.add(self)

    monkeypatch.setattr(offload._HostBuffer, "__init__", tracked)
    net = _net()
    group = offload.OffloadGroup() if mode == "model" else None
    offload.apply(net, mode, "cpu", group=group)
    net(torch.randn(3, 128))
    assert len(alive) == (4 if mode == "layer" else 1)
    model = weakref.ref(net)
    gc.disable()
    try:
        del net
        assert model() is None and len(alive) == 0
    finally:
        gc.enable()
    if group is not None:
        assert group.active is None


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_layer_forward_raises_cuda(monkeypatch, exc):
    net = _net()
    x = torch.randn(3, 128, device="cuda")
    offload.apply(net, "layer", "cuda")
    ref = net(x)
    state = offload.state_of(net)
    mover = state.mover
    assert all(u.host.is_pinned() for u in state.units)
    torch.cuda.synchronize()
    mover.clear()
    base = torch.cuda.memory_allocated()

    def boom(*a, **k):
        raise exc("stop")

    monkeypatch.setattr(net.blocks[2].lin1, "forward", boom)
    with pytest.raises(exc):
        net(x)
    assert not mover.live and not mover.retired
    assert mover.stream.query()  # nothing in flight on the side stream
    assert _on_host(net, state)
    assert torch.cuda.memory_allocated() <= base  # the blocks' device copies are gone
    monkeypatch.undo()
    torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
    offload.remove(net)
    assert torch.cuda.memory_allocated() <= base


# ---------------------------------------------------------------------------
# ComfyUI: the loader node and sampling


def _models_alive() -> int:
    import warnings

    import comfy.model_base

    gc.collect()
    with warnings.catch_warnings():  # isinstance() on deprecated module proxies warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, comfy.model_base.BaseModel))


@pytest.mark.comfyui
@pytest.mark.parametrize("where", ["building SDNQ layers", "loading the model's weights"])
def test_loader_node_interrupted(flux, comfy, monkeypatch, where):
    import comfy.model_management as mm
    import comfy_models as cm

    from comfy_sdnq.comfyui.ops import SDNQLayer

    loaded = list(mm.current_loaded_models)
    pinned = mm.TOTAL_PINNED_MEMORY
    alive = _models_alive()
    calls = []
    if where == "building SDNQ layers":
        orig = files.build_layer

        def interrupted(*a, **k):
            calls.append(1)
            if len(calls) == 5:
                raise mm.InterruptProcessingException()
            return orig(*a, **k)

        monkeypatch.setattr(files, "build_layer", interrupted)
    else:
        orig = SDNQLayer._load_from_state_dict

        def interrupted(self, state_dict, prefix, *a):
            if comfy_sdnq.is_sdnq(state_dict.get(prefix + "weight")):
                calls.append(1)
                if len(calls) == 5:
                    raise mm.InterruptProcessingException()
            return orig(self, state_dict, prefix, *a)

        monkeypatch.setattr(SDNQLayer, "_load_from_state_dict", interrupted)
    with pytest.raises(mm.InterruptProcessingException):
        cm.load_unet("flux-sdnq.safetensors")
    monkeypatch.undo()
    assert len(calls) == 5
    assert list(mm.current_loaded_models) == loaded  # nothing registered
    assert _models_alive() == alive  # the half-built model is gone
    assert not _mapped(flux["sdnq"]) and mm.TOTAL_PINNED_MEMORY == pinned
    p = cm.load_unet("flux-sdnq.safetensors")  # and the next load is whole
    assert type(p).__name__ == "SDNQModelPatcher"


def _weights(model) -> dict:
    out = {}
    for name, m in model.named_modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if w is not None and comfy_sdnq.is_sdnq(w):
            out[name] = (w._qdata.clone(), len(getattr(m, "weight_function", [])))
    return out


def _interrupting(at):
    import comfy.model_management as mm

    calls = [0]

    def wrapper(apply_model, a):
        calls[0] += 1
        if calls[0] == at:  # ComfyUI's interrupt flag, as the UI's Cancel sets it: the next op raises
            mm.interrupt_current_processing(True)
        return apply_model(a["input"], a["timestep"], **a["c"])

    return wrapper, calls


@pytest.mark.comfyui
def test_sampling_interrupted(flux, comfy):
    import comfy.model_management as mm
    import comfy_models as cm

    p = cm.load_unet("flux-sdnq.safetensors")
    cond = cm.flux_conditioning()
    ref = cm.sample(p, cond, steps=3)
    before = _weights(p.model)
    assert before
    pinned = mm.TOTAL_PINNED_MEMORY
    q = p.clone()
    wrapper, calls = _interrupting(2)
    q.set_model_unet_function_wrapper(wrapper)
    with pytest.raises(mm.InterruptProcessingException):
        cm.sample(q, cond, steps=3)
    assert calls[0] == 2 and not mm.processing_interrupted()
    mine = [lm for lm in mm.current_loaded_models if lm.model is not None and lm.model.model is p.model]
    assert len(mine) == 1 and mine[0].model.loaded_size() == mine[0].model.model_size()  # whole, not half
    after = _weights(p.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k][0], before[k][0]) and after[k][1] == before[k][1] for k in before)
    assert mm.TOTAL_PINNED_MEMORY == pinned
    assert torch.equal(cm.sample(p, cond, steps=3), ref)


@pytest.mark.comfyui
def test_sampling_interrupted_layer_offload(flux, comfy, emulated):
    """the SDNQ Offload Mode node's layer streaming, interrupted mid-step: the blocks go back on
    their host copies and the side stream is synchronized before the exception leaves"""
    import comfy.model_management as mm
    import comfy_models as cm

    from comfy_sdnq.comfyui.offload import SDNQOffloadMode

    base = cm.load_unet("flux-sdnq.safetensors")
    cond = cm.flux_conditioning()
    ref = cm.sample(base, cond, steps=3)
    layer = SDNQOffloadMode().apply(base, "layer")[0]
    assert torch.equal(cm.sample(layer, cond, steps=3), ref)
    assert offload.state_of(layer.model).mover.live  # the prefetch for the next step
    q = layer.clone()  # the wrapper on a clone (ComfyUI hands the model to it: the clone's streaming)
    wrapper, calls = _interrupting(2)
    q.set_model_unet_function_wrapper(wrapper)
    with pytest.raises(mm.InterruptProcessingException):
        cm.sample(q, cond, steps=3)
    assert calls[0] == 2
    state = offload.state_of(q.model)
    assert state is not None and state.owner == id(q)  # still loaded, streaming installed ...
    mover = state.mover
    assert not mover.live and mover.stream.synced == 1  # ... every block back, the copies finished
    for u in state.units:
        w = layer.model.get_submodule(u.name).modules()
        ptrs = [m.weight._qdata.untyped_storage().data_ptr() for m in w
                if comfy_sdnq.is_sdnq(getattr(m, "weight", None))]
        assert ptrs and all(pp == u.host.untyped_storage().data_ptr() for pp in ptrs)
    assert torch.equal(cm.sample(layer, cond, steps=3), ref)
    mm.unload_all_models()
    assert offload.state_of(layer.model) is None

