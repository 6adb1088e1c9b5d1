"""Weight offloading for models with SDNQ (and plain) weights, without accelerate.

    offload.apply(model, "layer", "cuda")  # stream the blocks' *compressed* weights, the rest resident
    offload.apply(model, "model", "cuda")  # the whole model moved in when it runs (one group: one at a time)
    offload.apply(model, "none", "cuda")   # everything resident
    offload.stats(model)                   # OffloadStats: bytes moved, transfers, copy waits, peak memory
    offload.remove(model)                  # hooks off, weights back on their host copies

"layer": the blocks (children of the model's large nn.ModuleLists: Flux's
transformer_blocks and single_transformer_blocks, a text encoder's layers) keep their
weights on the host, every tensor of a block (SDNQ codes and side tensors included)
packed into one pinned buffer. A forward pre-hook on a block makes it resident: one
host -> device copy on a side CUDA stream, issued while the block before it computes
(the successor is learnt from the order blocks run in), and the compute stream waits
for it only when the copy is late. After the block, its device copy is dropped. At
most 2 x prefetch + 2 block copies are alive: the host waits before issuing a copy
while older ones are still in use, which bounds device memory by a few blocks. A forward
that raises (an interrupt, an OOM; any BaseException) skips the blocks' post-hooks: a guard
on the forward of the module that runs the blocks then puts every block back on its host
copy, synchronizes the side stream and drops the device copies before the exception
leaves. remove() and release() synchronize the side stream too, so no copy still reads a
host buffer that is about to be freed. The offloading holds no reference cycle (hooks see the
state weakly, units their modules weakly): a model dropped without remove() frees its pinned
buffers at once, after its side stream is synchronized.

"model": the whole model is one such unit, moved in by a pre-hook on the model and its
direct children (and by diffusers' `_hf_hook.pre_forward` protocol, for vae.decode and
friends); models sharing an OffloadGroup take turns, like diffusers'
enable_model_cpu_offload. The host copy stays, so moving a model out is free.

Weights are treated as read-only (inference): device copies are dropped, never copied
back. With device "cpu" nothing moves: the units are still packed and rebuilt from
their buffers on every run, so the bookkeeping is exercised on any machine.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import time
import weakref
from dataclasses import dataclass

import torch
from comfy_kitchen.tensor import QuantizedTensor

from .errors import SdnqError

MODES = ("none", "model", "layer")
# the stream API and the device types it serves (tests put an emulation of it on "cpu")
_streams = torch.cuda
_STREAM_DEVICES = ("cuda",)
ATTR = "_sdnq_offload"  # the _State on a model
_ALIGN = 256            # bytes; every tensor in a packed buffer starts at a multiple
_BLOCK_SHARE = 0.05     # an nn.ModuleList streams when it holds at least this share of the model's bytes


@dataclass
class OffloadStats:
    """Counters of one offloaded model (or of the components of one pipeline)."""

    bytes_moved: int = 0      # host -> device bytes copied
    transfers: int = 0        # host -> device copies (one per block or model made resident)
    loads: int = 0            # units made resident, copies or not (device cpu: no copies)
    wait_s: float = 0.0       # time the compute stream stalled waiting for a copy (CUDA events)
    throttle_s: float = 0.0   # time the host waited for old block copies to be released
    resident_bytes: int = 0   # weight bytes that stay on the device
    streamed_bytes: int = 0   # weight bytes kept on the host that move when needed
    max_unit_bytes: int = 0   # the largest unit (block or model) that moves
    device: str = "cpu"
    _timers: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def peak_bytes(self) -> int:
        """peak device memory allocated since the last reset (CUDA; 0 elsewhere)"""
        dev = torch.device(self.device)
        return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0

    def resolve(self) -> None:
        """fold the pending copy-wait timings in (synchronizes with the device)"""
        for a, b in self._timers:
            b.synchronize()
            self.wait_s += a.elapsed_time(b) / 1000.0
        self._timers.clear()

    def reset(self) -> None:
        self.resolve()
        self.bytes_moved = self.transfers = self.loads = 0
        self.wait_s = self.throttle_s = 0.0
        if torch.device(self.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def as_dict(self) -> dict:
        self.resolve()
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["peak_bytes"] = self.peak_bytes
        return out


# ---------------------------------------------------------------------------
# tensors


def _pieces(t: torch.Tensor) -> list[torch.Tensor]:
    """the plain tensors a (Quantized)Tensor is made of"""
    if isinstance(t, QuantizedTensor):
        p = t.params
        return [t._qdata] + [getattr(p, f) for f in p._tensor_fields()]
    return [t]


def _assemble(like: torch.Tensor, pieces: list[torch.Tensor]) -> torch.Tensor:
    """`like` rebuilt from new pieces (same shapes and dtypes)"""
    if isinstance(like, QuantizedTensor):
        p = like.params
        params = dataclasses.replace(p, **dict(zip(p._tensor_fields(), pieces[1:])))
        return QuantizedTensor(pieces[0], like._layout_cls, params)
    return pieces[0]


def nbytes(t: torch.Tensor) -> int:
    """every byte of a tensor, SDNQ side tensors included"""
    return sum(x.nbytes for x in _pieces(t))


def as_param(t: torch.Tensor) -> torch.nn.Parameter:
    """t as a frozen Parameter without copying. nn.Parameter(QuantizedTensor) would
    detach it, and detaching a QuantizedTensor clones its side tensors."""
    if isinstance(t, QuantizedTensor):
        t._is_param = True  # what nn.Parameter does to tensor subclasses
        return t
    return torch.nn.Parameter(t, requires_grad=False)


def move(t: torch.Tensor, device, non_blocking=False) -> torch.Tensor:
    if isinstance(t, QuantizedTensor):
        return _assemble(t, [x.to(device, non_blocking=non_blocking) for x in _pieces(t)])
    return t.to(device, non_blocking=non_blocking)


def _slots(modules) -> dict[int, list]:
    """{id(tensor): [tensor, [(module, name, is_param), ...]]} for the modules' own tensors"""
    out = {}
    for m in modules:
        for table, is_param in ((m._parameters, True), (m._buffers, False)):
            for name, t in table.items():
                if t is not None:
                    out.setdefault(id(t), [t, []])[1].append((m, name, is_param))
    return out


def _set(owners, t, param=None) -> None:
    for m, name, is_param in owners:
        if isinstance(m, weakref.ref):  # a unit's owners: the unit must not keep its modules alive
            m = m()
            if m is None:
                continue
        if is_param:
            m._parameters[name] = param if param is not None else as_param(t)
        else:
            m._buffers[name] = t


def weight_bytes(modules) -> int:
    """bytes of the modules' own parameters and buffers, each tensor once"""
    return sum(nbytes(t) for t, _ in _slots(modules).values())


def move_module(module: torch.nn.Module, device, modules=None) -> None:
    """params and buffers of `modules` (default: all of module's) to device, SDNQ
    weights included; tied tensors stay tied. Unlike Module.to, never swaps or clones."""
    device = torch.device(device)
    for t, owners in _slots(modules if modules is not None else module.modules()).values():
        if t.device != device:
            _set(owners, move(t, device))


# ---------------------------------------------------------------------------
# units: tensors that move together, packed into one host buffer


class _HostBuffer:
    """n host bytes, page-locked in place when pin (cudaHostRegister: the exact size, where
    pin_memory() rounds up to a power of two). Unregistered while the memory is still
    held; views that outlive it stay valid, merely pageable."""

    def __init__(self, n: int, pin: bool):
        self.t = torch.empty(max(n, 1), dtype=torch.uint8)
        self.registered = False
        if pin:
            try:
                self.registered = torch.cuda.cudart().cudaHostRegister(self.t.data_ptr(), self.t.nbytes, 0) == 0
            except (RuntimeError, AttributeError):
                pass
            if not self.registered:
                self.t = self.t.pin_memory()

    def __del__(self):
        if self.registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.t.data_ptr())
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class _Unit:
    """A block (or a whole model): its tensors packed into one host buffer; rebuilt as
    views of that buffer's device copy when it runs."""

    def __init__(self, name: str, slots: list, pin: bool):
        self.name = name
        self.slots = slots  # [(tensor template, owners)]
        layout, off = [], 0
        for t, _ in slots:
            spans = []
            for x in _pieces(t):
                spans.append((off, x.dtype, tuple(x.shape)))
                off += -(-x.nbytes // _ALIGN) * _ALIGN
            layout.append(spans)
        self.layout = layout
        self.nbytes = off
        self._buffer = _HostBuffer(off, pin)
        host = self.host = self._buffer.t
        for (t, _), spans in zip(slots, layout):
            for x, view in zip(_pieces(t), self._views(host, spans)):
                view.copy_(x)
        # the host copies, as the module tensors between runs (the originals are dropped)
        self.host_tensors = [self.rebuild(host, i) for i in range(len(slots))]
        # owners held weakly: model -> offload state -> units -> modules would be a reference
        # cycle, and a dropped model (and its pinned buffers) would wait for the garbage collector
        self.slots = [(t, [(weakref.ref(m), name, is_param) for m, name, is_param in owners])
                      for t, (_, owners) in zip(self.host_tensors, slots)]
        self.host_params = [as_param(t) if any(o[2] for o in owners) else None
                            for t, (_, owners) in zip(self.host_tensors, slots)]
        self.swap_out()

    @staticmethod
    def _views(buf, spans):
        return [buf[o:o + torch.empty((), dtype=dt).element_size() * _numel(shape)].view(dt).view(shape)
                for o, dt, shape in spans]

    def rebuild(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        return _assemble(self.slots[i][0], self._views(buf, self.layout[i]))

    def swap_in(self, buf: torch.Tensor) -> None:
        for i, (_, owners) in enumerate(self.slots):
            _set(owners, self.rebuild(buf, i))

    def swap_out(self) -> None:
        for (_, owners), t, p in zip(self.slots, self.host_tensors, self.host_params):
            _set(owners, t, p)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------------------
# moving units


class _Mover:
    """Makes units resident on a device and drops them again; on CUDA through a side
    stream with prefetch and a bound on the copies alive."""

    def __init__(self, device: torch.device, stats: OffloadStats, prefetch: int, side_stream: bool):
        self.device = device
        self.stats = stats
        self.prefetch = max(0, int(prefetch))
        self.cuda = device.type in _STREAM_DEVICES
        self.api = _streams if self.cuda else None
        # a side stream lets copies overlap compute; without one ("model" mode), the copy is
        # ordered on the compute stream and its memory comes from the compute stream's pool
        self.stream = self.api.Stream(device) if self.cuda and side_stream else None
        self.live = {}                      # unit -> (device buffer, copy-done event)
        self.retired = collections.deque()  # (device buffer, compute-done event)
        self.next_of = {}                   # unit -> the unit that ran after it last time
        self.prev = None

    def issue(self, unit: _Unit) -> None:
        """start making unit resident (no-op when it is)"""
        if unit in self.live:
            return
        if not self.cuda:
            if self.device.type == "cpu":  # nothing to move: the views are rebuilt from the host buffer
                self.live[unit] = (unit.host, None)
            else:  # other accelerators: a plain synchronous copy
                self.live[unit] = (unit.host.to(self.device), None)
                self._count(unit)
            return
        self._throttle()
        api = self.api
        with api.stream(self.stream or api.current_stream(self.device)):
            buf = torch.empty(unit.host.shape, dtype=torch.uint8, device=self.device)
            buf.copy_(unit.host, non_blocking=True)
            done = api.Event()
            done.record()
        self.live[unit] = (buf, done)
        self._count(unit)

    def _count(self, unit):
        self.stats.bytes_moved += unit.nbytes
        self.stats.transfers += 1

    def _throttle(self):
        while self.retired and self.retired[0][1].query():
            self.retired.popleft()
        if len(self.retired) > self.prefetch:
            t = time.perf_counter()
            while len(self.retired) > self.prefetch:
                self.retired.popleft()[1].synchronize()
            self.stats.throttle_s += time.perf_counter() - t

    def acquire(self, unit: _Unit, successor=None) -> None:
        """unit resident and swapped in; the next one's copy started"""
        self.issue(unit)
        buf, done = self.live[unit]
        if done is not None:
            compute = self.api.current_stream(self.device)
            a, b = self.api.Event(enable_timing=True), self.api.Event(enable_timing=True)
            a.record(compute)
            compute.wait_event(done)
            b.record(compute)
            self.stats._timers.append((a, b))
            if len(self.stats._timers) > 4096:
                self.stats.resolve()
        unit.swap_in(buf)
        self.stats.loads += 1
        if self.prev is not None and self.prev is not unit:
            self.next_of[self.prev] = unit
        self.prev = unit
        nxt = self.next_of.get(unit, successor)
        if self.prefetch and nxt is not None and nxt is not unit:
            self.issue(nxt)

    def release(self, unit: _Unit) -> None:
        """back on the host copies; the device copy is dropped once the device is done with it"""
        unit.swap_out()
        entry = self.live.pop(unit, None)
        if entry is None or not self.cuda:
            return
        buf, _ = entry
        compute = self.api.current_stream(self.device)
        if buf.device.type == "cuda":
            buf.record_stream(compute)  # the allocator must not reuse it before the block ran
        done = self.api.Event()
        done.record(compute)
        self.retired.append((buf, done))

    def clear(self) -> None:
        """every unit back on its host copy, every copy finished, the device copies dropped"""
        for unit in list(self.live):
            self.release(unit)
        if self.cuda:
            if self.stream is not None:
                # a prefetch still in flight reads a host buffer that may be freed (unregistered)
                # next: wait for it, not only for the compute stream
                self.stream.synchronize()
            self.api.current_stream(self.device).synchronize()
            self.retired.clear()
            self.api.empty_cache()  # copies came from the side stream's pool: give them back
        self.prev = None


# ---------------------------------------------------------------------------
# offloading a model


def find_blocks(model: torch.nn.Module, share: float = _BLOCK_SHARE) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the blocks to stream: the children of the outermost
    nn.ModuleLists that hold at least `share` of the model's weight bytes"""
    total = weight_bytes(model.modules()) or 1
    out = []

    def walk(prefix, m):
        for name, child in m.named_children():
            if isinstance(child, torch.nn.ModuleList):
                if weight_bytes(child.modules()) >= share * total:
                    out.extend((f"{prefix}{name}.{i}", b) for i, b in child.named_children()
                               if any(True for _ in b.parameters()))
                    continue
            walk(f"{prefix}{name}.", child)

    walk("", model)
    return out


class OffloadGroup:
    """Models that take turns on the device in "model" mode (one resident at a time)."""

    def __init__(self):
        self._active = None

    @property
    def active(self):
        """the state of the model now resident (held weakly: a dropped model goes at once)"""
        return self._active() if self._active is not None else None

    @active.setter
    def active(self, state):
        self._active = weakref.ref(state) if state is not None else None


class _ExecutionDevice:
    """diffusers reads a component's `_hf_hook.execution_device` to place latents, and
    calls `_hf_hook.pre_forward(module)` before methods like vae.decode (accelerate's
    hook protocol); removing it (remove_all_hooks) removes our offloading."""

    def __init__(self, state):
        self.execution_device = state.device
        self._state = weakref.ref(state)

    def init_hook(self, module):
        return module

    def pre_forward(self, module, *args, **kwargs):
        state = self._state()
        if state is not None:
            state.onload()
        return args, kwargs

    def post_forward(self, module, output):
        return output

    def detach_hook(self, module):  # accelerate deletes the attribute itself
        state = module.__dict__.pop(ATTR, None)
        if state is not None:
            state.remove()
        return module


class _State:
    """The offloading of one model."""

    def __init__(self, model, mode, device, stats, group, prefetch, blocks, move_inputs, pin):
        self.mode, self.device, self.stats, self.group = mode, device, stats, group
        self.handles = []
        self.guarded = []  # (weakref to the module, its instance-level forward before ours, ours)
        self.mover = _Mover(device, stats, prefetch if mode == "layer" else 0, side_stream=mode == "layer")
        self.units = []
        self.unit = None
        try:
            self._setup(model, mode, device, stats, prefetch, blocks, move_inputs, pin)
        except BaseException:
            # interrupted half-way (KeyboardInterrupt while pinning, an OOM): no hook or
            # guard stays behind; the weights are on their host copies or where they were
            self.remove()
            raise

    def _setup(self, model, mode, device, stats, prefetch, blocks, move_inputs, pin):
        if mode == "none":
            move_module(model, device)
            stats.resident_bytes += weight_bytes(model.modules())
        elif mode == "model":
            slots = [(t, o) for t, o in _slots(model.modules()).values()]
            self.unit = _Unit(type(model).__name__, slots, pin)
            self.units = [self.unit]
            stats.streamed_bytes += self.unit.nbytes
            stats.max_unit_bytes = max(stats.max_unit_bytes, self.unit.nbytes)
            ref = weakref.ref(self)
            for m in [model] + list(model.children()):
                self.handles.append(m.register_forward_pre_hook(functools.partial(_model_pre, ref)))
        else:
            self._setup_layers(model, blocks, pin)
        if move_inputs:
            self.handles.append(model.register_forward_pre_hook(functools.partial(_move_inputs, weakref.ref(self)),
                                                                with_kwargs=True))

    def _setup_layers(self, model, blocks, pin):
        if blocks is None:
            found = find_blocks(model)
        else:
            found = [(name, model.get_submodule(name)) for name in blocks]
        block_of = {}
        for i, (_, b) in enumerate(found):
            for m in b.modules():
                block_of.setdefault(id(m), i)
        units_slots = [[] for _ in found]
        resident = []
        for t, owners in _slots(model.modules()).values():
            where = {block_of.get(id(m)) for m, _, _ in owners}
            if len(where) == 1 and None not in where:
                units_slots[where.pop()].append((t, owners))
            else:  # outside the blocks, or tied across them: resident
                resident.append((t, owners))
        # the blocks packed first (the slow part, pinning): an interrupt there leaves nothing moved
        self.units = [_Unit(name, s, pin) for (name, _), s in zip(found, units_slots)]
        for t, owners in resident:
            if t.device != self.device:
                _set(owners, move(t, self.device))
        self.stats.resident_bytes += sum(nbytes(t) for t, _ in resident)
        for u in self.units:
            self.stats.streamed_bytes += u.nbytes
            self.stats.max_unit_bytes = max(self.stats.max_unit_bytes, u.nbytes)
        n = len(self.units)
        # hooks hold the state weakly and the units by index: no reference cycle through the blocks
        ref = weakref.ref(self)
        for i, (_, b) in enumerate(found):
            nxt = (i + 1) % n if n > 1 else None
            self.handles.append(b.register_forward_pre_hook(functools.partial(_acquire, ref, i, nxt)))
            self.handles.append(b.register_forward_hook(functools.partial(_release, ref, i)))
        # the modules that run the blocks: a forward that raises (an interrupt, an OOM) skips
        # the blocks' post-hooks, so the guard puts every block back and waits for the copies
        for name in sorted({_runner(name) for name, _ in found}):
            self._guard(model.get_submodule(name) if name else model)

    def _guard(self, module) -> None:
        state = weakref.ref(self)
        inner = module.__dict__.get("forward")  # an instance-level forward (another wrapper), else the class's
        run = inner if inner is not None else type(module).forward
        owner = weakref.ref(module)

        def forward(*args, **kwargs):
            try:
                return inner(*args, **kwargs) if inner is not None else run(owner(), *args, **kwargs)
            except BaseException:
                st = state()
                if st is not None:
                    st.abort()
                raise

        try:  # what the model's forward looks like to callers inspecting it (diffusers pipelines do)
            forward.__signature__ = inspect.signature(module.forward)
        except (TypeError, ValueError):
            pass
        forward.__doc__ = getattr(run, "__doc__", None)
        module.__dict__["forward"] = forward
        self.guarded.append((weakref.ref(module), inner, forward))

    def abort(self) -> None:
        """after a forward that raised: every streamed block on its host copy, the side
        stream synchronized, the device copies dropped (the next forward starts afresh)"""
        self.mover.clear()

    def __del__(self):
        # the model was dropped: no copy may still read its host buffers when they are freed
        try:
            if self.mover.stream is not None:
                self.mover.stream.synchronize()
        except Exception:  # noqa: BLE001 - interpreter shutdown, a device already gone
            pass

    def onload(self) -> None:
        if self.mode != "model" or self.unit in self.mover.live:
            return
        active = self.group.active if self.group is not None else None
        if active is not None and active is not self:
            active.offload()
        self.mover.acquire(self.unit)
        if self.group is not None:
            self.group.active = self

    def offload(self) -> None:
        self.mover.clear()
        if self.group is not None and self.group.active is self:
            self.group.active = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for ref, inner, ours in self.guarded:
            module = ref()
            if module is not None and module.__dict__.get("forward") is ours:
                if inner is None:
                    del module.__dict__["forward"]
                else:
                    module.__dict__["forward"] = inner
        self.guarded = []
        self.offload()


def _acquire(ref, i, nxt, module, args):
    state = ref()
    if state is not None:
        state.mover.acquire(state.units[i], state.units[nxt] if nxt is not None else None)


def _release(ref, i, module, args, output):
    state = ref()
    if state is not None:
        state.mover.release(state.units[i])


def _model_pre(ref, module, args):
    state = ref()
    if state is not None:
        state.onload()


def _move_inputs(ref, module, args, kwargs):
    state = ref()
    if state is None:
        return None
    return _to(args, state.device), _to(kwargs, state.device)


def _runner(block: str) -> str:
    """the module that runs a block: the owner of its nn.ModuleList ("a.blocks.3" -> "a")"""
    parts = block.split(".")
    return ".".join(parts[:-2])


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def apply(model: torch.nn.Module, mode: str = "layer", device=None, *, stats: OffloadStats | None = None,
          group: OffloadGroup | None = None, prefetch: int = 1, blocks: list[str] | None = None,
          move_inputs: bool = True, pin: bool | None = None, hint: bool = False) -> OffloadStats:
    """Offload a model (see the module doc); replaces any earlier offloading of it.

    device: the compute device (default: cuda if available). stats: share counters
    (pipelines). group: "model" mode models that take turns. blocks: module names to
    stream instead of the found ones. move_inputs: a pre-hook moves the model's tensor
    inputs to the device. pin: page-lock the host copies (default: on CUDA). hint:
    announce the execution device to diffusers pipelines (`_hf_hook`)."""
    if mode not in MODES:
        raise SdnqError(f"offload mode must be one of {', '.join(MODES)}, got {mode!r}")
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    remove(model)
    stats = stats if stats is not None else OffloadStats(device=str(device))
    if pin is None:
        pin = device.type == "cuda" and torch.cuda.is_available()
    state = _State(model, mode, device, stats, group if mode == "model" else None, prefetch, blocks, move_inputs,
                   pin)
    model.__dict__[ATTR] = state
    if hint and mode == "model":
        model.__dict__["_hf_hook"] = _ExecutionDevice(state)
    return stats


def state_of(model):
    return model.__dict__.get(ATTR) if isinstance(model, torch.nn.Module) else None


def remove(model: torch.nn.Module) -> None:
    """undo apply(): hooks removed, streamed weights on their host copies (resident ones, and
    all of a "none" model, stay where they are)"""
    state = model.__dict__.pop(ATTR, None)
    hook = model.__dict__.get("_hf_hook")
    if isinstance(hook, _ExecutionDevice):
        del model.__dict__["_hf_hook"]
    if state is not None:
        state.remove()


def release(obj) -> None:
    """move every offloaded ("model"/"layer") model of obj back to the host now"""
    for m in _models(obj):
        state = state_of(m)
        if state is not None:
            state.offload()


def _models(obj) -> list:
    """the models of a model, a ComfyUI ModelPatcher or a diffusers pipeline"""
    if isinstance(obj, torch.nn.Module):
        return [m for m in obj.modules() if state_of(m) is not None] or [obj]
    inner = getattr(obj, "model", None)
    if isinstance(inner, torch.nn.Module):  # ModelPatcher
        return _models(inner)
    comps = getattr(obj, "components", None)
    if isinstance(comps, dict):
        return [m for c in comps.values() if isinstance(c, torch.nn.Module) for m in _models(c)]
    raise SdnqError(f"not a model, model patcher or pipeline: {type(obj).__name__}")


def stats(obj) -> OffloadStats | None:
    """the OffloadStats of a model, a ModelPatcher or a pipeline (None: not offloaded)"""
    for m in _models(obj):
        state = state_of(m)
        if state is not None:
            return state.stats
    return None
