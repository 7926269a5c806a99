"""Read a ``Circuit`` off a model: torch.fx for the graph, a forward on the meta device for shapes.

The tracer descends into every module except leaves (no children) and ``ATOMIC`` ones, so a module's
inner wiring (a residual add, a reshape) is drawn. A module that fx cannot trace (Python control flow
on its inputs, as in ``nn.TransformerEncoder``) stays one call in the fx graph; its inside comes from
torch.export during the shape pass, with each leaf module's aten ops merged back into one box, and
from forward hooks if export fails too (hooks cannot see functional code between modules, so the
circuit's notes say so). A model whose top level fx cannot trace is read the same way as a whole.
Everything runs on a clone whose weights are meta tensors: the model is never touched, and a ViT-L
costs no memory."""

from __future__ import annotations

import contextlib
import copy
import logging
import operator
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from netatlas.backend.circuit.graph import Circuit, Edge, Op
from netatlas.backend.errors import NetatlasError, first_line, model_failed
from netatlas.backend.fx_threads import confine_fx_patches

ATOMIC: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
         getattr(nn, "RMSNorm", nn.LayerNorm))
FUNCTION_LABELS = {
    "add": "+", "iadd": "+", "sub": "−", "mul": "⊙", "imul": "⊙", "truediv": "÷", "matmul": "@",
    "bmm": "@", "relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "sigmoid": "σ", "tanh": "tanh",
    "softmax": "SoftMax", "getitem": "[·]", "scaled_dot_product_attention": "Attn",
}
# Ops that only move axes: their wires keep the input's axis symbols in the new order, even where two
# axes have the same size (a [B, 64, 64] transpose of a 64-wide sequence of 64 tokens).
AXIS_MOVES = {"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims", "t", "T", "mT"}


def trace_circuit(model: nn.Module, example: Any) -> Circuit:
    """The circuit of ``model`` on ``example`` (a tensor, or a dict/tuple of them, as forward takes).

    Works on a clone whose weights are meta tensors, so the model itself is never touched (another
    thread may be running it). If an op has no meta kernel (data-dependent shapes), the clone gets
    real, uninitialised CPU weights and runs for real, with a note.
    """
    confine_fx_patches()   # fx and torch.export patch nn.Module process-wide while they trace
    notes: list[str] = []
    clone = _meta_clone(model)
    try:
        graph, opaque = _fx_graph(clone)
    except Exception as exc:  # any tracing failure means: read the whole model another way
        graph, opaque = None, {""}
        notes.append(f"torch.fx could not trace {type(model).__name__} ({_first_line(exc)})")
    for device in ("meta", "cpu"):
        try:
            if device == "cpu":
                clone.to_empty(device="cpu")
            recorder = _Recorder(clone, graph, opaque)
            recorder.run(_to(example, device))
            break
        except NetatlasError:
            raise
        except Exception as exc:
            if device == "cpu":
                raise model_failed(exc, f"{_describe(example)} of zeros", model) from exc
            notes.append(f"shapes from a CPU forward: the meta device failed ({_first_line(exc)})")
    for name, how in recorder.read_by.items():
        what = f"{name} ({type(clone.get_submodule(name)).__name__}) has Python control flow that torch.fx " \
               "cannot trace; its inside" if name else "the graph"
        notes.append(f"{what} comes from torch.export" if how == "export" else
                     f"{what} comes from module hooks, which do not see functional code between modules "
                     f"(residual adds, reshapes): torch.export failed too ({how})")
    circuit = recorder.circuit
    circuit.notes[:0] = notes
    ways = sorted({"export" if how == "export" else "hooks" for how in recorder.read_by.values()})
    circuit.method = "+".join((["fx"] if graph is not None else []) + ways)
    return circuit


def architecture_circuit(arch: str, arch_kwargs: dict[str, Any] | None, input_shape: tuple[int, ...],
                         input_key: str | None = None) -> Circuit:
    """The circuit of an architecture alone: built on the meta device, so no weights are allocated."""
    from netatlas.backend.architectures import build_architecture

    with torch.device("meta"):
        model = build_architecture(arch, arch_kwargs)
    return trace_circuit(model.eval(), example_input(input_shape, input_key))


def example_input(input_shape: tuple[int, ...], input_key: str | None = None) -> Any:
    """A zero batch of ``input_shape``; wrapped as ``{input_key: x}`` for models that take a dict."""
    x = torch.zeros(input_shape)
    return {input_key: x} if input_key else x


# ---- tracing ------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """Traces into every module but leaves and ``ATOMIC`` ones; an untraceable module becomes a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: set[str] = set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ATOMIC) or not any(True for _ in m.children()) or qualname in self.opaque

    def call_module(self, m: nn.Module, forward, args, kwargs):
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        mark, stack = next(reversed(self.graph.nodes)), dict(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            for node in reversed(list(self.graph.nodes)):   # undo the partial trace of this module
                if node is mark:
                    break
                self.graph.erase_node(node)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.opaque.add(name)
            return super().call_module(m, forward, args, kwargs)


def _fx_graph(model: nn.Module) -> tuple[fx.Graph, set[str]]:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return graph, tracer.opaque


# ---- the shape pass, which also builds the circuit ----------------------------------------------
class _Recorder:
    """Runs the fx graph (or the model, with hooks) and records every op, wire and shape."""

    def __init__(self, model: nn.Module, graph: fx.Graph | None, opaque: set[str]) -> None:
        self.model, self.graph, self.opaque = model, graph, opaque
        self.circuit = Circuit(ops={}, edges=[], modules={}, module_params={})
        self.producer: dict[int, str] = {}       # id(tensor) -> op id
        self.keep: list[Any] = []                # keeps recorded tensors alive, so ids stay unique
        self.last: str | None = None             # the op most recently added (hook graphs)
        self.read_by: dict[str, str] = {}        # untraceable module -> "export", or why export failed

    def run(self, example: Any) -> None:
        if self.graph is None:
            self._inputs(example, "x")
            out = self._inside("", self.model, _as_args(example), {})
        else:
            out = self._interpret(example)
        self._outputs(out)

    # fx graphs
    def _interpret(self, example: Any) -> Any:
        gm = fx.GraphModule(self.model, self.graph)
        recorder = self

        class Interpreter(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                value = super().run_node(n)
                recorder._node(n, value, self)
                return value

            def call_module(self, target, args, kwargs):
                if target in recorder.opaque:
                    return recorder._inside(target, self.fetch_attr(target), args, kwargs)
                return super().call_module(target, args, kwargs)

        args = _as_args(example)
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        return Interpreter(gm).run(*args[: len(placeholders)])

    def _node(self, n: fx.Node, value: Any, interpreter: fx.Interpreter) -> None:
        if n.op == "placeholder":
            self._inputs(value, n.target)
        elif n.op == "get_attr":
            if isinstance(value, torch.Tensor):
                learned = isinstance(value, nn.Parameter) or n.target in dict(self.model.named_parameters())
                self._add(Op(n.name, "param", n.target.rsplit(".", 1)[-1], n.target, "parameter" if learned else
                             "buffer", learned=learned, scope=_scope(n), shape=tuple(value.shape)), [], value)
        elif n.op == "call_module" and n.target not in self.opaque:
            module = interpreter.fetch_attr(n.target)
            self._module_op(n.name, n.target, module, _scope(n), _tensors((n.args, n.kwargs), interpreter), value)
        elif n.op in ("call_function", "call_method") and _has_tensor(value):
            inputs = _tensors((n.args, n.kwargs), interpreter)
            if n.target in (operator.getitem, getattr) and not isinstance(interpreter.env[n.args[0]], torch.Tensor):
                return   # an item of a tuple or dict: the wire comes straight from its producer
            name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            kind = "add" if name in ("add", "iadd") and len(inputs) >= 2 else "function"
            label = FUNCTION_LABELS.get(name, name)
            self._add(Op(n.name, kind, label, name, name, scope=_scope(n), shape=_shape(value),
                         axes=moved_axes(name, inputs, value)), inputs, value)
        for module in _scope(n) if n.op != "output" else ():
            self._note_module(module)

    # untraceable modules
    def _inside(self, root: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        """Run an untraceable module, adding the ops inside it: from torch.export, else from hooks."""
        try:
            with _quiet_export():   # a failed export prints its whole graph: the note says enough
                exported = torch.export.export(module, tuple(args), dict(kwargs), strict=False)
        except Exception as exc:
            self.read_by[root] = _first_line(exc)
            return self._hooked(root, lambda: module(*args, **kwargs))
        self.read_by[root] = "export"
        return self._exported(root, exported, module(*args, **kwargs), _flatten_tensors((args, kwargs)))

    def _exported(self, root: str, exported, out: Any, inputs: list[torch.Tensor]) -> Any:
        """Ops from an exported graph: aten ops inside a leaf module merge into that module's box."""
        user = set(exported.graph_signature.user_inputs)
        source: dict[str, str] = {}          # export node -> op id
        placeholders = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in user
                        and isinstance(n.meta.get("val"), torch.Tensor)]
        for n, t in zip(placeholders, inputs):
            if id(t) in self.producer:
                source[n.name] = self.producer[id(t)]
        prefix = f"{root}." if root else ""
        current: tuple[str, str] | None = None   # (leaf module, its op) while its aten ops follow
        for n in exported.graph.nodes:
            value = n.meta.get("val")
            if n.op != "call_function":
                continue
            if not isinstance(value, torch.Tensor):
                if n.args and isinstance(n.args[0], fx.Node) and n.args[0].name in source:
                    source[n.name] = source[n.args[0].name]     # an item of a multi-output op
                continue
            stack = [prefix + p if p else root for p, _ in (n.meta.get("nn_module_stack") or {}).values()]
            leaf = next((m for m in stack if m and self._is_leaf(m)), None)
            srcs = [(source[a.name], tuple(a.meta["val"].shape)) for a in n.all_input_nodes
                    if a.name in source and isinstance(a.meta.get("val"), torch.Tensor)]
            if leaf is not None and current is not None and current[0] == leaf:
                op = self.circuit.ops[current[1]]
                op.shape = tuple(value.shape)
                self._connect(srcs, op.id)
            elif leaf is not None:
                module = self.model.get_submodule(leaf)
                params = sum(p.numel() for p in module.parameters())
                op = Op(f"{leaf}#{len(self.circuit.ops)}", "module", module_label(module), leaf,
                        type(module).__name__, learned=params > 0, scope=_lineage(leaf)[:-1],
                        shape=tuple(value.shape), params=params)
                self.circuit.ops[op.id] = op
                self._connect(srcs, op.id)
                current = leaf, op.id
            else:
                name = getattr(n.target, "_opname", str(n.target))
                kind = "add" if name == "add" and len(srcs) >= 2 else "function"
                ins = [a.meta["val"] for a in n.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)]
                op = Op(f"{prefix}{n.name}", kind, FUNCTION_LABELS.get(name, name), name, name,
                        scope=_lineage(stack[-1]) if stack and stack[-1] else _lineage(root) if root else (),
                        shape=tuple(value.shape), axes=moved_axes(name, ins, value))
                self.circuit.ops[op.id] = op
                self._connect(srcs, op.id)
                current = None
            source[n.name] = op.id
            for m in op.scope:
                self._note_module(m)
        for node, t in zip(_output_nodes(exported.graph), _flatten_tensors(out)):
            if node.name in source:
                self.producer[id(t)] = source[node.name]
                self.keep.append(t)
        return out

    def _connect(self, sources: list[tuple[str, tuple[int, ...]]], dst: str) -> None:
        known = {(e.src, e.shape) for e in self.circuit.edges if e.dst == dst}
        for src, shape in sources:
            if src != dst and (src, shape) not in known:
                self.circuit.edges.append(Edge(src, dst, shape))
                known.add((src, shape))

    def _is_leaf(self, path: str) -> bool:
        module = self.model.get_submodule(path)
        return isinstance(module, ATOMIC) or not any(True for _ in module.children())

    def _hooked(self, root: str, call) -> Any:
        """Run ``call`` with hooks on the leaves under module ``root``, adding one op per leaf call."""
        base = self.model.get_submodule(root) if root else self.model
        handles, pending = [], {}

        def pre(name: str):
            def hook(module, args, kwargs):
                pending[name] = _flatten_tensors((args, kwargs))
            return hook

        def post(name: str):
            def hook(module, args, kwargs, output):
                scope = _lineage(name)[:-1]
                self._module_op(name.replace(".", "_") + f"_{len(self.circuit.ops)}", name, module, scope,
                                pending.pop(name, []), output, infer=True)
                for m in scope:
                    self._note_module(m)
            return hook

        for name, module in base.named_modules(prefix=root):
            if name == root:
                continue
            if isinstance(module, ATOMIC) or not any(True for _ in module.children()):
                handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post(name), with_kwargs=True))
        try:
            with torch.enable_grad():  # no fused inference fast paths: every submodule is really called
                out = call()
        finally:
            for h in handles:
                h.remove()
        for t in _flatten_tensors(out):   # outputs made by functional code: from the last op, guessed
            if id(t) not in self.producer and self.last is not None:
                self.producer[id(t)] = self.last
                self.keep.append(t)
        return out

    # shared
    def _module_op(self, op_id: str, path: str, module: nn.Module, scope: tuple[str, ...],
                   inputs: list[torch.Tensor], value: Any, infer: bool = False) -> None:
        params = sum(p.numel() for p in module.parameters())
        self._add(Op(op_id, "module", module_label(module), path, type(module).__name__, learned=params > 0,
                     scope=scope, shape=_shape(value), params=params), inputs, value, infer)

    def _add(self, op: Op, inputs: list[torch.Tensor], value: Any, infer: bool = False) -> None:
        for t in inputs:
            src = self.producer.get(id(t))
            guessed = src is None and infer and self.last is not None
            if guessed:
                src = self.last
            if src is not None and src != op.id:
                self.circuit.edges.append(Edge(src, op.id, tuple(t.shape), inferred=guessed))
        self.circuit.ops[op.id] = op
        self.last = op.id
        for t in _flatten_tensors(value):
            self.producer[id(t)] = op.id
            self.keep.append(t)

    def _inputs(self, value: Any, name: str) -> None:
        for key, t in _named_tensors(value, name):
            self._add(Op(f"input:{key}", "input", key, key, "input", shape=tuple(t.shape)), [], t)

    def _outputs(self, value: Any) -> None:
        for key, t in _named_tensors(value, ""):   # a dict's outputs by their keys, a tuple's as output[i]
            key = key if key and not key.startswith("[") else f"output{key}"
            src = self.producer.get(id(t))
            op = Op(f"output:{key}", "output", key, key, "output", shape=tuple(t.shape))
            self.circuit.ops[op.id] = op
            if src is not None:
                self.circuit.edges.append(Edge(src, op.id, tuple(t.shape)))

    def _note_module(self, path: str) -> None:
        if path and path not in self.circuit.modules:
            module = self.model.get_submodule(path)
            self.circuit.modules[path] = type(module).__name__
            self.circuit.module_params[path] = sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence what a failing torch.export writes (its partial graph, printed to stderr; the shape
    warnings) from this thread only: other sessions' threads keep their stderr."""
    owner, stderr = threading.get_ident(), sys.stderr

    class ThreadFilter:
        def write(self, text: str) -> int:
            return len(text) if threading.get_ident() == owner else stderr.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(stderr, name)

    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level, sys.stderr = logger.level, ThreadFilter()
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sys.stderr = stderr
        logger.setLevel(level)


def _output_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The nodes an exported graph returns, flattened in order (they pair with the outputs' tensors)."""
    found: list[fx.Node] = []
    output = next(n for n in graph.nodes if n.op == "output")
    fx.node.map_arg(output.args, found.append)
    return found


def module_label(module: nn.Module) -> str:
    """The box's symbol in Abbott's notation: L / L+ for Linear, Conv, Norm, Attn; else the class."""
    if isinstance(module, nn.Linear):
        return "L+" if module.bias is not None else "L"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "Conv+" if module.bias is not None else "Conv"
    if isinstance(module, NORMS):
        return "Norm"
    if isinstance(module, (nn.MultiheadAttention,)):
        return "Attn"
    if isinstance(module, nn.Embedding):
        return "Emb"
    return {"Sigmoid": "σ", "Tanh": "tanh", "Softmax": "SoftMax", "Flatten": "flatten",
            "AdaptiveAvgPool2d": "AvgPool", "AdaptiveMaxPool2d": "MaxPool"}.get(
        type(module).__name__, type(module).__name__)


# ---- helpers ------------------------------------------------------------------------------------
def _meta_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors: no weights are copied.

    Parameters require grad in the clone, which keeps fused inference fast paths (that skip calling
    submodules, as nn.TransformerEncoderLayer's does) out of the hook pass.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise NetatlasError("TorchScript models cannot be drawn: their Python modules are gone; load a "
                            "state_dict with --arch instead")
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=True)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(model, memo).eval()
    except Exception as exc:  # the user's module holds something that cannot be copied (a lock, a file, a socket)
        raise NetatlasError(f"{type(model).__name__} cannot be copied to draw it ({first_line(exc)}): the diagram "
                            "traces a copy with empty weights; move what cannot be copied out of the model") from exc


def _describe(example: Any) -> str:
    """``a 1x3x224x224 batch`` (a tensor) or ``pixels 1x3x224x224`` (inside a dict): what the forward was given."""
    named = [(k, "x".join(map(str, t.shape))) for k, t in _named_tensors(example, "")]
    if len(named) == 1 and not named[0][0]:
        return f"a {named[0][1]} batch"
    return ", ".join(f"{k or 'x'} {shape}" for k, shape in named) or "its example input"


def _to(value: Any, device: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _as_args(example: Any) -> tuple:
    return tuple(example) if isinstance(example, tuple) else (example,)


def _scope(n: fx.Node) -> tuple[str, ...]:
    stack = [path for path, _ in (n.meta.get("nn_module_stack") or {}).values()]
    if n.op == "call_module" and stack and stack[-1] == n.target:
        stack = stack[:-1]
    return tuple(p for p in stack if p)


def _lineage(module: str) -> tuple[str, ...]:
    parts = module.split(".")
    return tuple(".".join(parts[:d]) for d in range(1, len(parts) + 1))


def _tensors(args: Any, interpreter: fx.Interpreter) -> list[torch.Tensor]:
    """The tensor values of a node's inputs, in argument order."""
    found: list[torch.Tensor] = []
    fx.node.map_arg(args, lambda n: found.extend(_flatten_tensors(interpreter.env[n])))
    return found


def _flatten_tensors(value: Any) -> list[torch.Tensor]:
    return [t for _, t in _named_tensors(value, "")]


def _named_tensors(value: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """Tensor leaves of nested tuples, lists, dicts and dataclass-like outputs, with readable keys."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, Mapping):
        return [kt for k, v in value.items() for kt in _named_tensors(v, f"{name}[{k!r}]" if name else str(k))]
    if isinstance(value, (tuple, list)):
        return [kt for i, v in enumerate(value) for kt in _named_tensors(v, f"{name}[{i}]")]
    return []


def _has_tensor(value: Any) -> bool:
    return bool(_flatten_tensors(value))


def moved_axes(name: str, inputs: list[torch.Tensor], value: Any) -> tuple[int, ...] | None:
    """For an op that only moves axes, the input axis each output axis comes from, read from strides.

    A permuted view's strides are the input's, reordered; matching stride and size recovers the order
    without parsing the op's arguments (permute, transpose, movedim and .mT all spell them differently).
    """
    if name not in AXIS_MOVES or len(inputs) != 1 or not isinstance(value, torch.Tensor):
        return None
    source, free = inputs[0], list(range(inputs[0].dim()))
    if source.dim() != value.dim():
        return None
    order = []
    for size, stride in zip(value.shape, value.stride()):
        j = next((j for j in free if source.shape[j] == size and (size == 1 or source.stride(j) == stride)), None)
        if j is None:
            return None
        order.append(j)
        free.remove(j)
    return tuple(order)


def _shape(value: Any) -> tuple[int, ...] | None:
    tensors = _flatten_tensors(value)
    return tuple(tensors[0].shape) if tensors else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
