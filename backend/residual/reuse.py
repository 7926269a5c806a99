"""Prefix reuse for the residual measurements: what passes over the same images hand on to each other.

A probe pass on one image (``Plan``) lists the module calls that end before each unit (or its add)
starts, and which of their outputs later ops read; during a stage a memo (``PassMemo``) keeps those
outputs and every unit's branch and hands them to any later pass that reaches the same call after the
same residual adds. ``paths`` checks a plan against plain passes on two images before it uses it.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from netatlas.backend.residual.blocks import ResidualGate, ResidualUnit

MEMO_BYTES = 1 << 30             # what a stage's memo may keep; larger image sets go through in chunks
STACKED_ROWS = 128               # masks are stacked along the batch up to this many rows a pass


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value``: nested tuples, lists and dicts (call arguments, a ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def _plain(value: Any) -> bool:
    """A tensor or plain tuples and lists of them: an output the memo can copy or stand in for."""
    if isinstance(value, torch.Tensor):
        return True
    return type(value) in (tuple, list) and all(_plain(v) for v in value)


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    return fn(value) if isinstance(value, torch.Tensor) else type(value)(_map(v, fn) for v in value)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@contextlib.contextmanager
def _wrapped(model: nn.Module, names: Any, wrap: Callable[[str, Callable], Callable]) -> Iterator[None]:
    """Each named module's forward (gated ones included) replaced by ``wrap(name, forward)`` meanwhile."""
    modules = dict(model.named_modules())
    saved = []
    try:
        for name in names:
            module = modules[name]
            saved.append((module, module.__dict__.get("forward")))
            module.__dict__["forward"] = wrap(name, module.forward)
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


@dataclass(eq=False)
class _Call:
    """One module call in the probe pass; times are ticks of the probe's clock."""

    name: str
    index: int                        # earlier calls of the same module in the pass
    parent: "_Call | None"
    start: int
    end: int = -1
    plain: bool = False               # returned a tensor or tuples of tensors
    outputs: frozenset = frozenset()  # storages of what it returned
    touched: frozenset = frozenset()  # input storages it wrote to or returned views of
    nbytes: int = 0
    results: list = field(default_factory=list)
    children: list = field(default_factory=list)
    branch: int | None = None         # a unit's lazy branch, not a module call (the memo always keeps it)


class _Probe(TorchFunctionMode):
    """One gated pass on one image that writes down every module call and every tensor each op reads.

    From it ``Plan`` learns which calls a pass may skip when it starts at a unit, and which of
    their outputs a later op still reads (only those are kept; the rest get shape-only stand-ins).
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.roots: list[_Call] = []
        self.calls: list[_Call] = []
        self.stack: list[_Call] = []
        self.reads: list[tuple[int, int]] = []     # (time, storage)
        self.adds: list[tuple[int, int]] = []      # (unit, time)
        self.combines: dict[int, int] = {}         # unit -> when its add began (before a lazy branch)
        self.counts: Counter = Counter()
        self.alive: list[torch.Tensor] = []        # keeps storages from being freed and their addresses reused
        self.quiet = False

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.quiet:
            self.read(tensors((args, kwargs)))
        return func(*args, **kwargs)

    def read(self, tensors: list[torch.Tensor]) -> None:
        now = self.tick()
        with self.silenced():
            self.alive += tensors
            self.reads += [(now, _storage(t)) for t in tensors]

    @contextlib.contextmanager
    def silenced(self):
        quiet, self.quiet = self.quiet, True
        try:
            yield
        finally:
            self.quiet = quiet

    def note(self, unit: int) -> None:         # the gate's memo interface
        now = self.tick()
        self.adds.append((unit, now))
        self.combines.setdefault(unit, now)    # an add whose branch came computed starts here

    def reuse(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """A lazy branch: recorded as a call of its own, since the memo hands it back like one."""
        return self._call(f"#{key[1]}", compute, [], [], branch=key[1])

    def wrap(self, name: str, forward: Callable) -> Callable:
        def probed(*args, **kwargs):
            with self.silenced():
                inputs = tensors((args, kwargs))
                versions = [t._version for t in inputs]
            return self._call(name, lambda: forward(*args, **kwargs), inputs, versions)
        return probed

    def _call(self, name: str, run: Callable[[], Any], inputs: list[torch.Tensor], versions: list[int],
              branch: int | None = None) -> Any:
        parent = self.stack[-1] if self.stack else None
        call = _Call(name, self.counts[name], parent, self.tick(), branch=branch)
        self.counts[name] += 1
        (parent.children if parent else self.roots).append(call)
        self.calls.append(call)
        if branch is not None:
            self.combines.setdefault(branch, call.start)
        self.stack.append(call)
        try:
            out = run()
        finally:
            self.stack.pop()
        call.end = self.tick()
        with self.silenced():
            self._describe(call, out, inputs, versions)
        return out

    def _describe(self, call: _Call, out: Any, inputs: list[torch.Tensor], versions: list[int]) -> None:
        outs = tensors(out)
        call.plain = _plain(out)
        call.outputs = frozenset(_storage(t) for t in outs)
        written = {_storage(t) for t, v in zip(inputs, versions) if t._version != v}
        call.touched = frozenset(written | ({_storage(t) for t in inputs} & call.outputs))
        call.nbytes = sum(t.numel() * t.element_size() for t in outs)
        call.results = [(t, t._version) for t in outs]
        self.alive += inputs + outs


@dataclass(eq=False)
class Plan:
    """How the passes of one analysis share work, learned from a probe pass on one image.

    ``points`` maps module -> call index -> (needed, copy, reach): the calls a memo keeps, whether a
    later op reads their output (else a stand-in is kept), whether something writes to it later
    (then copies are kept and handed out) and which block positions run before or inside them.
    ``order`` lists the units in the order their adds run; ``blocks`` the unit modules in call
    order, with ``block_units`` their units. ``passes`` and ``chain`` say whether memo-shared passes
    and the block-to-block backward matched plain passes.
    """

    points: dict[str, dict[int, tuple]]
    order: list[int]
    blocks: list[str]
    block_units: list[list[int]]
    chunk: int
    rows: int = STACKED_ROWS
    passes: bool = True
    chain: bool = True

    @classmethod
    def build(cls, model: nn.Module, gate: ResidualGate, units: list[ResidualUnit],
              x: torch.Tensor) -> "Plan | None":
        """The plan for ``model`` on images like ``x``; None where the probe cannot follow the model.
        Unchecked: ``paths`` turns off what does not reproduce plain passes before using it."""
        probe = _Probe()
        gate.reset()
        gate.memo = probe
        try:
            with _wrapped(model, [name for name, _ in model.named_modules()], probe.wrap):
                with torch.no_grad(), probe:
                    probe.read(tensors(model(x[:1])))
        except Exception:  # noqa: BLE001 - e.g. tensors without storage: every pass runs in full
            return None
        finally:
            gate.memo = None
        return cls._from_probe(probe, units)

    @classmethod
    def _from_probe(cls, probe: _Probe, units: list[ResidualUnit]) -> "Plan":
        first_add = {}
        for unit, at in probe.adds:
            first_add.setdefault(unit, at)
        order = sorted(range(len(units)), key=lambda u: first_add.get(u, math.inf))
        starts = {}
        for call in probe.calls:
            starts.setdefault(call.name, call)
        unit_blocks = list(dict.fromkeys(u.module for u in units))   # the positions reordering swaps
        resumes = [starts[name].start for name in unit_blocks
                   if name in starts and starts[name].parent is not None] + list(probe.combines.values())
        points, kept_bytes = _kept_calls(probe, sorted(set(resumes)), unit_blocks, starts)
        image_bytes = kept_bytes + sum(c.nbytes for c in probe.calls if c.branch is not None)
        blocks = sorted(unit_blocks, key=lambda b: starts[b].start if b in starts else 0)
        block_units = [[u for u in order if units[u].module == b] for b in blocks]
        plan = cls(points, order, blocks, block_units, chunk=max(1, MEMO_BYTES // max(1, image_bytes)))
        plan.chain = _is_chain(probe, blocks)
        return plan

    @contextlib.contextmanager
    def memo(self, model: nn.Module, gate: ResidualGate) -> Iterator["PassMemo"]:
        """A memo for passes over one set of images; call ``start`` before each pass."""
        memo = PassMemo(gate, self.points)
        with _wrapped(model, self.points, memo.wrap):
            gate.memo = memo
            try:
                yield memo
            finally:
                gate.memo = None


def _kept_calls(probe: _Probe, resumes: list[int], unit_blocks: list[str],
                starts: dict[str, _Call]) -> tuple[dict[str, dict[int, tuple]], int]:
    """``Plan.points`` for passes that resume at the given times, and the bytes kept per image.

    A kept call is handed back in every pass that reaches it with the same history, whichever unit
    that pass starts from; so a call whose writes to (or views of) its inputs a still-running op
    would see from any of these starts is kept for none, and its children are considered instead.
    """
    banned: set[int] = set()
    while True:
        frontiers = [_frontier(probe, resume, banned) for resume in resumes]
        exposed = {id(call) for frontier in frontiers for call, exposes, _ in frontier if exposes}
        if not exposed:
            break
        banned |= exposed
    points: dict[str, dict[int, tuple]] = {}
    kept: dict[int, int] = {}
    for call, _, needed in (entry for frontier in frontiers for entry in frontier if entry[0].branch is None):
        copy = any(t._version != v for t, v in call.results)
        reach = tuple(i for i, b in enumerate(unit_blocks) if b in starts and starts[b].start < call.end)
        was = points.setdefault(call.name, {}).get(call.index, (False,))
        points[call.name][call.index] = (was[0] or needed, copy, reach)
        if needed:
            kept.update(dict.fromkeys(call.outputs, call.nbytes // max(1, len(call.outputs))))
    return points, sum(kept.values())


def _frontier(probe: _Probe, start: int, banned: set[int]) -> list[tuple[_Call, bool, bool]]:
    """The calls a pass resuming at ``start`` skips: the outermost unbanned calls that ended before it
    and returned tensors, each with whether an op that still runs after it touches the storage it
    wrote to or shares with its inputs, and whether one reads its output. Reads inside skipped
    calls do not count.
    """
    skipped = list(_outermost(probe.roots, start, banned))
    begins = [c.start for c in skipped]
    last: dict[int, int] = {}              # storage -> last time an op that still runs reads it
    for t, storage in probe.reads:
        i = bisect.bisect_right(begins, t) - 1
        if i < 0 or t > skipped[i].end:
            last[storage] = t

    def read_after(call: _Call, storages: frozenset) -> bool:
        return any(last.get(s, -1) > call.end for s in storages)

    return [(c, read_after(c, c.touched), read_after(c, c.outputs)) for c in skipped]


def _outermost(calls: list[_Call], start: int, banned: set[int]) -> Iterator[_Call]:
    for call in calls:
        if call.start >= start:
            return
        if call.end < start and call.plain and id(call) not in banned:
            yield call
        else:
            yield from _outermost(call.children, start, banned)


def _is_chain(probe: _Probe, blocks: list[str]) -> bool:
    """Whether the unit modules run once each, one after another (not nested): a chain of blocks."""
    if not blocks or "" in blocks or any(probe.counts[b] != 1 for b in blocks):
        return False
    spans = sorted((c.start, c.end) for c in probe.calls if c.name in blocks)
    return all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


class _Entry:
    """A kept output: the adds before the call, the adds and wrapped calls inside it, and the value."""

    def __init__(self, history: tuple, adds: tuple, calls: tuple, value: Any, needed: bool, copy: bool) -> None:
        self.history, self.adds, self.calls, self.copy = history, adds, calls, copy and needed
        if not needed:        # read by nothing that runs: keep only shapes
            value = _map(value, lambda t: torch.empty_like(t, device="meta"))
        elif copy:
            value = _map(value, torch.clone)
        self.value = value
        self.versions = [(t, t._version) for t in tensors(value)] if needed and not copy else []

    def fits(self, history: tuple, scales: list[float]) -> bool:
        return (self.history == history and all(scales[u] == s for u, s in self.adds)
                and all(t._version == v for t, v in self.versions))

    def handed(self) -> Any:
        return _map(self.value, torch.clone) if self.copy else self.value


class PassMemo:
    """What earlier passes over the same images hand on: kept module outputs and unit branches.

    A call's output is a function of the images and of the residual adds (unit, scale) that ran
    before and inside it, which the gate reports as they run (``note``). An entry is handed back
    when a pass reaches the same call (module, call index) after the same adds and the adds inside
    it would get the same scales; the adds and calls it skips are then counted as if they ran. Block
    order (reordering) shows in the adds too, since each block's adds carry its own units.
    """

    def __init__(self, gate: ResidualGate, points: dict[str, dict[int, tuple]]) -> None:
        self.gate, self.points = gate, points
        self.entries: dict[tuple, _Entry] = {}
        self.log: list[tuple[int, float]] = []
        self.calls: list[str] = []
        self.counts: Counter = Counter()
        self.scales: list[float] = []
        self.placement: tuple[int, ...] = ()
        self.hits = 0

    def start(self, placement: tuple[int, ...] = ()) -> None:
        """Begin a pass; the gate's scales must not change until the next start.

        ``placement`` is the reordering's block order (``_placed``): a kept call is handed back only
        where the blocks before and inside it are the same modules.
        """
        self.placement = placement
        self.log.clear()
        self.calls.clear()
        self.counts.clear()
        rows = self.gate.rows
        self.scales = self.gate.mask.tolist() if rows is None else [tuple(r) for r in rows.tolist()]

    def note(self, unit: int) -> None:
        self.log.append((unit, self.scales[unit]))

    def reuse(self, key: tuple, compute: Callable[[], Any], needed: bool = True, copy: bool = False,
              reach: tuple[int, ...] = ()) -> Any:
        history = (tuple(self.placement[i] for i in reach) if self.placement else (), tuple(self.log))
        entry = self.entries.get(key)
        if entry is not None and entry.fits(history, self.scales):
            self.log += entry.adds
            self.calls += entry.calls
            self.counts.update(entry.calls)
            self.hits += 1
            return entry.handed()
        logged, called = len(self.log), len(self.calls)
        value = compute()
        self.entries[key] = _Entry(history, tuple(self.log[logged:]), tuple(self.calls[called:]), value,
                                   needed, copy)
        return value

    def wrap(self, name: str, forward: Callable) -> Callable:
        points = self.points[name]

        def memoized(*args, **kwargs):
            index = self.counts[name]
            self.counts[name] += 1
            self.calls.append(name)
            if index not in points:
                return forward(*args, **kwargs)
            return self.reuse((name, index), lambda: forward(*args, **kwargs), *points[index])
        return memoized
