"""A memory checker for Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``): bounds and races.

The interpreter reads and writes raw addresses without checking them: a kernel that loads or stores past the end of a
tensor passes every interpreter test (it reads whatever lies next to the tensor, and a product with a zero mask hides
it), and on a GPU it reads garbage, faults, or silently overwrites another tensor. Inside :func:`checked_memory`:

- every tensor argument of a launch is moved into a buffer of its own with guard bands of ``0xFF`` bytes (NaN for
  floats, -1 for ints) on both sides, views of one storage staying views of one buffer;
- every load and store whose mask is true must fall inside the memory of one of the launch's tensor arguments (from
  its first to its last element); anything else is recorded with the kernel, the access and the nearest argument;
- the guard bands must still be ``0xFF`` after the launch; then the data is copied back to the caller's tensors;
- races between programs, which the interpreter hides by running the programs one after another: an element written
  by one program of a launch and read or written by another is recorded (the GPU runs them in no fixed order);
- hazards inside a program: global memory written and then read (or read and then written) at another place of a
  block, by what on a GPU is another thread, with no ``tl.debug_barrier()`` between. Elements at the same position
  of blocks of the same shape are taken to be one thread's (Triton gives such blocks one layout); the check is
  therefore a heuristic for layouts that differ between the two accesses.

Only the interpreter's plain pointer loads and stores are checked (the kernels here use no block pointers, tensor
descriptors or atomics; such an access raises, so a new kernel using them cannot pass unchecked).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

GUARD = 1 << 16  # bytes each side: more than any block of a tiny test shape reaches past a tensor


@dataclass
class _Arg:
    name: str
    lo: int  # first byte of the tensor's elements in the guarded buffer
    hi: int  # one past its last element's last byte


@dataclass
class _Launch:
    kernel: str
    args: list[_Arg]
    violations: list[str] = field(default_factory=list)
    writer: dict[int, tuple] = field(default_factory=dict)  # address -> the program that stored it
    reader: dict[int, tuple | None] = field(default_factory=dict)  # address -> the program that read it (None: many)
    program: tuple | None = None
    since_barrier: dict[int, list[tuple[str, tuple, int]]] = field(default_factory=dict)  # (kind, shape, position)
    races: dict[str, int] = field(default_factory=dict)  # message -> elements

    def note(self, what: str, n: int = 1) -> None:
        self.races[what] = self.races.get(what, 0) + n


_ACTIVE: list[_Launch] = []


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` of ``t``'s elements within its storage (``lo == hi`` for an empty tensor)."""
    isz = t.element_size()
    lo = t.storage_offset() * isz
    if t.numel() == 0:
        return lo, lo
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
    return lo, lo + (last + 1) * isz


def _guard(args: dict[str, object]) -> tuple[dict[str, object], list[_Arg], list]:
    """Move every tensor argument into a guarded buffer (one per storage); returns the new arguments, their byte
    ranges and what to copy back and check."""
    by_storage: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, a in args.items():
        if isinstance(a, torch.Tensor):
            by_storage.setdefault(a.untyped_storage().data_ptr(), []).append((name, a))
    new, ranges, restores = dict(args), [], []
    for views in by_storage.values():
        spans = [_extent(a) for _, a in views]
        lo = min(s for s, _ in spans)
        hi = max(e for _, e in spans)
        lo -= lo % 16  # keep every element aligned in the new buffer
        buf = torch.full((GUARD + (hi - lo) + GUARD,), 0xFF, dtype=torch.uint8)
        storage = views[0][1].untyped_storage()
        src = torch.empty(0, dtype=torch.uint8).set_(storage, lo, (hi - lo,), (1,))
        buf[GUARD : GUARD + hi - lo].copy_(src)
        base = buf.data_ptr()
        for (name, a), (s, e) in zip(views, spans):
            isz = a.element_size()
            offset = GUARD + s - lo
            assert offset % isz == 0, f"{name}: misaligned view"
            view = torch.empty(0, dtype=a.dtype).set_(buf.untyped_storage(), offset // isz, a.shape, a.stride())
            new[name] = view
            ranges.append(_Arg(name, base + offset, base + offset + (e - s)))
        restores.append((src, buf, hi - lo))
    return new, ranges, restores


def _check(builder, kind: str, ptrs, mask, elem_bits: int):
    """Record the accesses of a load/store outside the launch's tensor arguments, and its races and hazards; returns
    the mask without the out-of-bounds elements (so that a wrong kernel cannot fault or overwrite memory while it is
    being checked)."""
    if not _ACTIVE:
        return mask
    launch = _ACTIVE[-1]
    addrs = np.asarray(ptrs.data).astype(np.uint64)
    m = np.broadcast_to(np.asarray(mask.data).astype(bool), addrs.shape)
    size = max(1, elem_bits // 8)
    ok = np.zeros(addrs.shape, dtype=bool)
    for a in launch.args:
        ok |= (addrs >= a.lo) & (addrs + size <= a.hi)
    bad = m & ~ok
    if bad.any():
        first = int(addrs[bad].ravel()[0])
        near = min(launch.args, key=lambda a: min(abs(first - a.lo), abs(first - a.hi)), default=None)
        where = "" if near is None else (f"; nearest argument {near.name!r}: {first - near.lo:+d} bytes from "
                                         f"its start, {first - near.hi:+d} from its end ({near.hi - near.lo} "
                                         "bytes)")  # fmt: skip
        launch.violations.append(f"{launch.kernel}: {kind} of {int(bad.sum())} element(s) outside every tensor "
                                 f"argument{where}")  # fmt: skip
    _track(launch, tuple(builder.grid_idx), kind, addrs.shape, addrs, m & ok)
    return type(mask)(m & ok, mask.dtype) if bad.any() else mask


def _track(launch: _Launch, program: tuple, kind: str, shape: tuple, addrs, valid) -> None:
    if program != launch.program:
        launch.program, launch.since_barrier = program, {}
    flat, where = addrs.ravel(), np.flatnonzero(valid.ravel())
    for pos in where.tolist():
        a = int(flat[pos])
        if kind == "store":
            w = launch.writer.setdefault(a, program)
            if w != program:
                launch.note("an element stored by two programs")
            r = launch.reader.get(a, program)
            if r != program:
                launch.note("an element read by one program and stored by another")
        else:
            w = launch.writer.get(a, program)
            if w != program:
                launch.note("an element stored by one program and read by another")
            if launch.reader.setdefault(a, program) != program:
                launch.reader[a] = None
        seen = launch.since_barrier.setdefault(a, [])
        for k, sh, p in seen:
            if (sh, p) != (shape, pos) and "store" in (k, kind):
                launch.note(f"{k} then {kind} of an element at another block position with no debug_barrier between")
                break
        if len(seen) < 4:
            seen.append((kind, shape, pos))


@dataclass
class Report:
    """What :func:`checked_memory` saw: the kernels launched (by name, in order) and every violation."""

    launches: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


@contextlib.contextmanager
def checked_memory() -> Iterator[Report]:
    """Check every Triton launch inside the block; yields a :class:`Report` (no violations when every access was in
    bounds). Needs ``TRITON_INTERPRET=1`` before triton is imported (``tests/conftest.py`` sets it without CUDA)."""
    from triton.runtime import interpreter as itp

    report = Report()
    run, load, store = itp.InterpretedFunction.run, itp.InterpreterBuilder.create_masked_load, \
        itp.InterpreterBuilder.create_masked_store  # fmt: skip

    def checked_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        params = inspect.signature(self.fn).parameters
        options = {k: v for k, v in kwargs.items() if k not in params}  # num_warps, num_stages, ...
        bound = inspect.signature(self.fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params})
        guarded, ranges, restores = _guard(dict(bound.arguments))
        launch = _Launch(self.fn.__name__, ranges)
        _ACTIVE.append(launch)
        try:
            run(self, grid=grid, warmup=warmup, **guarded, **options)
        finally:
            _ACTIVE.pop()
        for src, buf, n in restores:
            if not (bool((buf[:GUARD] == 0xFF).all()) and bool((buf[GUARD + n :] == 0xFF).all())):
                launch.violations.append(f"{launch.kernel}: a guard band next to a tensor argument was written")
            src.copy_(buf[GUARD : GUARD + n])
        launch.violations += [f"{launch.kernel}: {what} ({n} accesses)" for what, n in launch.races.items()]
        report.launches.append(launch.kernel)
        report.violations.extend(launch.violations)

    def checked_load(self, ptrs, mask, other, *rest):
        bits = ptrs.get_element_ty().primitive_bitwidth
        return load(self, ptrs, _check(self, "load", ptrs, mask, bits), other, *rest)

    def checked_store(self, ptrs, value, mask, *rest):
        bits = ptrs.get_element_ty().primitive_bitwidth
        return store(self, ptrs, value, _check(self, "store", ptrs, mask, bits), *rest)

    def checked_barrier(self, *rest):
        if _ACTIVE:
            _ACTIVE[-1].since_barrier = {}
        return barrier(self, *rest)

    def refuse(name):
        def unchecked(self, *a, **k):
            raise NotImplementedError(f"checked_memory does not check {name}; extend tests/ops/_triton_bounds.py")

        return unchecked

    itp.InterpretedFunction.run = checked_run
    itp.InterpreterBuilder.create_masked_load = checked_load
    itp.InterpreterBuilder.create_masked_store = checked_store
    barrier = itp.InterpreterBuilder.create_barrier
    itp.InterpreterBuilder.create_barrier = checked_barrier
    refused = {n: getattr(itp.InterpreterBuilder, n) for n in ("create_descriptor_load", "create_descriptor_store",
               "create_tensor_pointer_load", "create_tensor_pointer_store", "create_atomic_rmw", "create_atomic_cas")
               if hasattr(itp.InterpreterBuilder, n)}  # fmt: skip
    for n in refused:
        setattr(itp.InterpreterBuilder, n, refuse(n))
    try:
        yield report
    finally:
        itp.InterpretedFunction.run = run
        itp.InterpreterBuilder.create_masked_load = load
        itp.InterpreterBuilder.create_masked_store = store
        itp.InterpreterBuilder.create_barrier = barrier
        for n, f in refused.items():
            setattr(itp.InterpreterBuilder, n, f)
