"""A differentiable twin of a static-QDQ int8 ONNX engine, for white-box attacks on the int8 model.

`FakeQuantTwin(model, qdq_path)` reads, for every MatMul/Gemm node of the QDQ graph whose weight is
int8, the scale and zero point of its input activation (QuantizeLinear -> DequantizeLinear) and
the per-channel scales of its weight (DequantizeLinear), finds the `nn.Linear` of the zoo model
that node was exported from, and replaces it with a `FakeQuantLinear` that rounds its input and
weight onto exactly those int8 grids. Rounding uses a straight-through estimator: forward rounds
and clamps as ONNX Runtime's QuantizeLinear does (half to even, saturating to the integer type),
backward passes the gradient through unchanged, so attacks get useful input gradients.

Mapping ONNX nodes to modules does not trust names: the int8 weight, dequantized, must equal
the module's weight to within half a quantization step in every element (what rounding it with
that scale gives). Only when several modules fit equally (identical weights) does the exporter's
scope name (`/net/blocks/blocks.0/attn/qkv/MatMul`) decide.

The twin mirrors the "cpu" preset of `edgeattack.export.quantize` exactly (only Linear layers are
quantized). Graphs quantized further ("full" preset: attention matmuls, Add, Softmax...) are
mirrored only in their Linear layers; the twin lists the other quantized tensors in `unmodelled`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import EngineError

logger = logging.getLogger(__name__)

torch = require("torch", feature="the fake-quant twin")
nn = torch.nn
F = torch.nn.functional

_ONNX_INT_RANGES = {  # TensorProto data type -> (qmin, qmax)
    2: (0, 255),  # UINT8
    3: (-128, 127),  # INT8
    6: (-(2**31), 2**31 - 1),  # INT32 (biases)
}


@dataclass(frozen=True)
class QuantParams:
    """One QuantizeLinear/DequantizeLinear grid: `scale` and `zero_point` (scalars or per channel).

    For weights, `scale`/`zero_point` are shaped to broadcast against the torch weight [out, in].
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass(frozen=True)
class QLinearNode:
    """A quantized MatMul/Gemm node of the QDQ graph, in torch's terms."""

    node_name: str
    op_type: str
    weight: np.ndarray  # dequantized int8 weight, torch layout [out, in]
    weight_q: QuantParams
    input_q: QuantParams | None
    output_q: QuantParams | None  # a Q/DQ pair on the node's output ("full" preset)
    bias_q: QuantParams | None  # int32 bias of a Gemm
    output_before_bias: bool  # MatMul + separate Add: the output grid applies before the bias


@dataclass(frozen=True)
class LayerMapping:
    """Which module a QDQ node was mapped to, and how well its weights agree."""

    node_name: str
    module_name: str
    max_step_error: float  # max |w - w_int8| / scale: <= 0.5 when the module is the node's source
    weight_mismatches: int  # elements where the twin's rounded weight differs from the int8 one
    by_name: bool  # True when the scope name had to break a tie


# -- straight-through fake quantization -------------------------------------------------------
class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: QuantizeLinear then DequantizeLinear. Backward: the identity (straight through)."""

    @staticmethod
    def forward(ctx: Any, x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int) -> Any:
        q = x / scale  # division, as ONNX Runtime's QuantizeLinear does (not x * (1 / scale))
        q.round_().add_(zero_point).clamp_(qmin, qmax)  # round half to even, then saturate
        return q.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> tuple[Any, None, None, None, None]:
        return grad, None, None, None, None


def fake_quantize(x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int) -> Any:
    """`(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale`, with an identity gradient for `x`."""
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)


class FakeQuantLinear(nn.Module):
    """An `nn.Linear` whose input, weight (and bias/output where the graph has them) sit on int8 grids."""

    def __init__(self, linear: Any, spec: QLinearNode) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.node_name = spec.node_name
        self.quantize = True
        self.output_before_bias = spec.output_before_bias
        self._grids: dict[str, tuple[int, int]] = {}
        self._add_grid("w", spec.weight_q)
        for prefix, params in (("in", spec.input_q), ("out", spec.output_q), ("b", spec.bias_q)):
            if params is not None:
                self._add_grid(prefix, params)

    def _add_grid(self, prefix: str, params: QuantParams) -> None:
        self.register_buffer(f"{prefix}_scale", torch.from_numpy(np.asarray(params.scale, dtype=np.float32)))
        self.register_buffer(
            f"{prefix}_zp", torch.from_numpy(np.asarray(params.zero_point, dtype=np.float32))
        )
        self._grids[prefix] = (params.qmin, params.qmax)

    def _fq(self, prefix: str, x: Any) -> Any:
        if not self.quantize or prefix not in self._grids:
            return x
        qmin, qmax = self._grids[prefix]
        return fake_quantize(x, getattr(self, f"{prefix}_scale"), getattr(self, f"{prefix}_zp"), qmin, qmax)

    def quantized_weight(self) -> Any:
        """The weight on its int8 grid (what the engine multiplies with)."""
        return self._fq("w", self.weight)

    def forward(self, x: Any) -> Any:
        x = self._fq("in", x)
        weight = self.quantized_weight()
        bias = self.bias
        if bias is not None and "b" in self._grids:
            bias = self._fq("b", bias.reshape(1, -1)).reshape(-1)
        if self.output_before_bias and self.quantize:  # disabled, the twin is the float layer, bit for bit
            y = self._fq("out", F.linear(x, weight))
            return y if bias is None else y + bias
        return self._fq("out", F.linear(x, weight, bias))

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"{in_features}, {out_features}, node={self.node_name!r}, grids={sorted(self._grids)}"


# -- reading the QDQ graph --------------------------------------------------------------------
class _Graph:
    """Producers, consumers and initializers of an ONNX graph, for walking Q/DQ patterns."""

    def __init__(self, path: str | Path) -> None:
        onnx = require("onnx", feature="the fake-quant twin")
        self.numpy_helper = onnx.numpy_helper
        try:
            self.graph = onnx.load(str(path)).graph
        except Exception as exc:
            raise EngineError(f"cannot read QDQ model {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.initializers = {init.name: init for init in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.initializers[node.output[0]] = node.attribute[0].t
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        return self.numpy_helper.to_array(self.initializers[name])

    def dtype(self, name: str) -> int:
        return int(self.initializers[name].data_type)

    def dq_params(self, dq: Any) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        """(scale, zero_point, qmin, qmax, axis) of a DequantizeLinear/QuantizeLinear node."""
        scale = self.array(dq.input[1]).astype(np.float32)
        if len(dq.input) > 2 and dq.input[2]:
            zero_point = self.array(dq.input[2]).astype(np.float32)
            qtype = self.dtype(dq.input[2])
        else:
            zero_point = np.zeros_like(scale)
            qtype = 2 if dq.op_type == "QuantizeLinear" else self.dtype(dq.input[0])
        if qtype not in _ONNX_INT_RANGES:
            raise EngineError(f"{dq.name}: quantized type {qtype} is not int8/uint8/int32")
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        qmin, qmax = _ONNX_INT_RANGES[qtype]
        return scale, zero_point, qmin, qmax, int(axis)

    def activation_grid(self, tensor: str) -> QuantParams | None:
        """The grid of an activation produced by DequantizeLinear(QuantizeLinear(x)), else None."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in self.initializers:
            return None
        scale, zero_point, qmin, qmax, _ = self.dq_params(dq)
        if scale.size != 1:
            raise EngineError(f"{dq.name}: per-channel activation quantization is not supported by the twin")
        return QuantParams(scale.reshape(()), zero_point.reshape(()), qmin, qmax)

    def output_grid(self, tensor: str) -> QuantParams | None:
        """The grid of a Q/DQ pair that is the only consumer of `tensor`, else None."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            return None
        dq_users = self.consumers.get(users[0].output[0], [])
        if not dq_users or dq_users[0].op_type != "DequantizeLinear":
            return None
        return self.activation_grid(dq_users[0].output[0])

    def weight(self, tensor: str, transposed: bool) -> tuple[np.ndarray, QuantParams] | None:
        """(dequantized weight in torch layout [out, in], its grid) of an int8 weight input, else None."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.initializers:
            return None
        q = self.array(dq.input[0]).astype(np.float32)
        if q.ndim != 2:
            return None
        scale, zero_point, qmin, qmax, axis = self.dq_params(dq)
        shape = [1, 1]
        if scale.size > 1:
            shape[axis % 2] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        dequantized = (q - zero_point) * scale
        if not transposed:  # ONNX layout [in, out] -> torch [out, in]
            dequantized, scale, zero_point = dequantized.T, scale.T, zero_point.T
        return np.ascontiguousarray(dequantized), QuantParams(scale, zero_point, qmin, qmax)

    def bias_grid(self, tensor: str) -> QuantParams | None:
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.initializers:
            return None
        scale, zero_point, qmin, qmax, _ = self.dq_params(dq)
        return QuantParams(scale.reshape(1, -1), zero_point.reshape(1, -1), qmin, qmax)


def read_qdq_linears(qdq_path: str | Path) -> tuple[list[QLinearNode], list[str]]:
    """The quantized MatMul/Gemm nodes with int8 weights, and the quantized tensors the twin cannot mirror."""
    graph = _Graph(qdq_path)
    nodes: list[QLinearNode] = []
    for node in graph.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and (
            _attr(attributes, "transA", 0) != 0 or _attr(attributes, "alpha", 1.0) != 1.0
        ):
            continue  # not the shape of an nn.Linear
        trans_b = node.op_type == "Gemm" and _attr(attributes, "transB", 0) == 1
        weight = graph.weight(node.input[1], transposed=trans_b)
        if weight is None:
            continue
        bias_q = graph.bias_grid(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        nodes.append(
            QLinearNode(
                node_name=node.name,
                op_type=node.op_type,
                weight=weight[0],
                weight_q=weight[1],
                input_q=graph.activation_grid(node.input[0]),
                output_q=graph.output_grid(node.output[0]),
                bias_q=bias_q,
                output_before_bias=node.op_type == "MatMul",
            )
        )
    if not nodes:
        raise EngineError(f"{qdq_path} has no MatMul/Gemm with an int8 weight: is it a static QDQ model?")
    return nodes, _unmodelled(graph, nodes)


def _attr(attributes: dict[str, Any], name: str, default: float) -> float:
    attribute = attributes.get(name)
    if attribute is None:
        return default
    return attribute.f if attribute.type == 1 else attribute.i  # 1: FLOAT


def _unmodelled(graph: _Graph, nodes: list[QLinearNode]) -> list[str]:
    """Activation QuantizeLinear inputs that no mirrored Linear accounts for."""
    mirrored: set[str] = set()
    by_name = {n.name: n for n in graph.graph.node}
    for spec in nodes:
        node = by_name[spec.node_name]
        mirrored.add(_q_input(graph, node.input[0]))
        for user in graph.consumers.get(node.output[0], []):
            if user.op_type == "QuantizeLinear":
                mirrored.add(user.input[0])
    quantized = [n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    return sorted({name for name in quantized if name not in mirrored})


def _q_input(graph: _Graph, tensor: str) -> str:
    dq = graph.producer.get(tensor)
    q = graph.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else tensor


# -- mapping nodes to modules -----------------------------------------------------------------
def _scope_tokens(text: str) -> tuple[str, ...]:
    """`/net/blocks/blocks.0/attn/qkv/MatMul` and `net.blocks.0.attn.qkv` -> comparable tokens."""
    tokens: list[str] = []
    for token in re.split(r"[/.]", text):
        if token and (not tokens or tokens[-1] != token):
            tokens.append(token)
    return tuple(tokens)


def _name_matches(node_name: str, module_name: str) -> bool:
    node_tokens = _scope_tokens(node_name)[:-1]  # drop the op name ("MatMul", "Gemm")
    module_tokens = _scope_tokens(module_name)
    return bool(module_tokens) and node_tokens[-len(module_tokens) :] == module_tokens


def _step_error(linear: Any, spec: QLinearNode) -> float:
    weight = linear.weight.detach().cpu().numpy().astype(np.float32)
    scale = np.broadcast_to(spec.weight_q.scale, weight.shape)
    diff = np.abs(weight - spec.weight)
    steps = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0).astype(np.float32), where=scale > 0)
    return float(steps.max())


def map_linears(model: Any, nodes: list[QLinearNode], *, tolerance: float = 0.5 + 1e-3) -> list[LayerMapping]:
    """For every quantized node, the `nn.Linear` of `model` whose weight it quantizes.

    A module fits a node when its weight has the node's shape and lies within `tolerance`
    quantization steps of the int8 weight everywhere. Raises EngineError when a node fits no module
    or several equally (and the scope name cannot tell), or two nodes claim one module.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    mappings: list[LayerMapping] = []
    claimed: dict[str, str] = {}
    for spec in nodes:
        fits = [
            (name, module, error)
            for name, module in linears
            if tuple(module.weight.shape) == spec.weight.shape
            and (error := _step_error(module, spec)) <= tolerance
        ]
        by_name = False
        if len(fits) > 1:
            named = [fit for fit in fits if _name_matches(spec.node_name, fit[0])]
            fits, by_name = named, True
        if len(fits) != 1:
            what = "no module" if not fits else f"{len(fits)} modules"
            raise EngineError(
                f"QDQ node {spec.node_name} ({spec.weight.shape[1]}->{spec.weight.shape[0]}) fits {what} of "
                f"{getattr(model, 'model_name', type(model).__name__)}: was the engine exported from these weights?"
            )
        name, module, error = fits[0]
        if name in claimed:
            raise EngineError(f"QDQ nodes {claimed[name]} and {spec.node_name} both map to module {name}")
        claimed[name] = spec.node_name
        mappings.append(LayerMapping(spec.node_name, name, error, _weight_mismatches(module, spec), by_name))
    return mappings


def _weight_mismatches(linear: Any, spec: QLinearNode) -> int:
    params = spec.weight_q
    with torch.no_grad():
        rounded = fake_quantize(
            linear.weight.detach().float(),
            torch.from_numpy(params.scale),
            torch.from_numpy(params.zero_point),
            params.qmin,
            params.qmax,
        )
    return int((rounded.numpy() != spec.weight).sum())


# -- the twin ---------------------------------------------------------------------------------
class FakeQuantTwin(nn.Module):
    """A copy of ZooModel `model` whose Linear layers compute on the int8 grids of `qdq_path`.

    Takes [0,1] images like the model; `config`, `model_name` and `weights_sha256` are the model's.
    The int8 grids are buffers: `twin.to(device)` moves the twin, grids included, to a GPU
    (`device` says where it is); rounding then runs there too.
    `mapping` says which ONNX node became which module; `unmodelled` lists quantized tensors of
    the graph outside Linear layers (empty for the "cpu" preset).
    """

    def __init__(self, model: Any, qdq_path: str | Path) -> None:
        super().__init__()
        nodes, unmodelled = read_qdq_linears(qdq_path)
        self.model = copy.deepcopy(model).eval()
        self.mapping = tuple(map_linears(self.model, nodes))
        specs = {spec.node_name: spec for spec in nodes}
        for entry in self.mapping:
            linear = self.model.get_submodule(entry.module_name)
            _set_submodule(self.model, entry.module_name, FakeQuantLinear(linear, specs[entry.node_name]))
        self.unmodelled = tuple(unmodelled)
        self.qdq_path = str(qdq_path)
        self.config = getattr(model, "config", None)
        self.model_name = f"{getattr(model, 'model_name', 'model')}+fakequant"
        self.weights_sha256 = getattr(model, "weights_sha256", "")
        mismatches = sum(entry.weight_mismatches for entry in self.mapping)
        if unmodelled:
            logger.warning(
                "fake-quant twin of %s mirrors %d Linear layers but not %d other quantized tensors (%s...)",
                qdq_path,
                len(self.mapping),
                len(unmodelled),
                ", ".join(unmodelled[:3]),
            )
        if mismatches:
            logger.warning(
                "fake-quant twin: %d weight elements round differently from the int8 engine", mismatches
            )
        logger.info("fake-quant twin of %s: %d Linear layers on int8 grids", qdq_path, len(self.mapping))

    def forward(self, images: Any) -> Any:
        return self.model(images)

    @property
    def device(self) -> Any:
        """Where the twin's weights and int8 grids are (`twin.to(device)` moves both)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def fake_quant_layers(self) -> list[FakeQuantLinear]:
        return [m for m in self.model.modules() if isinstance(m, FakeQuantLinear)]

    @contextlib.contextmanager
    def quantization_disabled(self) -> Iterator[FakeQuantTwin]:
        """Within the block the twin computes in float32: the original model."""
        layers = self.fake_quant_layers()
        for layer in layers:
            layer.quantize = False
        try:
            yield self
        finally:
            for layer in layers:
                layer.quantize = True


def _set_submodule(root: Any, dotted: str, module: Any) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


# -- agreement with the engine ----------------------------------------------------------------
def _torch_logits(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    device = getattr(model, "device", None) or torch.device("cpu")
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(np.asarray(images[i : i + batch_size])).to(device)).float().cpu().numpy()
                for i in range(0, len(images), batch_size)
            ]
        )


def twin_agreement(
    twin: FakeQuantTwin,
    engine: Any,
    dataset: ImageDataset,
    *,
    num_images: int | None = None,
    batch_size: int = 64,
) -> dict[str, float | int]:
    """Top-1 agreement and logit differences of the twin, and of the float model, with the int8 engine.

    `engine` is an Engine or the path of the QDQ ONNX file.
    """
    from edgeattack.engines import Engine, open_engine

    subset = dataset.take(num_images)
    twin.eval()
    twin_logits = _torch_logits(twin, subset.images, batch_size)
    with twin.quantization_disabled():
        float_logits = _torch_logits(twin, subset.images, batch_size)
    context = contextlib.nullcontext(engine) if isinstance(engine, Engine) else open_engine(engine)
    with context as active:
        active.activate()
        engine_logits = np.concatenate(
            [active.infer(subset.images[i : i + batch_size]) for i in range(0, len(subset), batch_size)]
        )
    labels = subset.labels
    result: dict[str, float | int] = {"n_images": len(subset)}
    for prefix, logits in (("", twin_logits), ("fp32_", float_logits)):
        diff = np.abs(logits - engine_logits)
        result[f"{prefix}top1_agreement"] = float((logits.argmax(1) == engine_logits.argmax(1)).mean())
        result[f"{prefix}max_abs_logit_diff"] = float(diff.max())
        result[f"{prefix}mean_abs_logit_diff"] = float(diff.mean())
    result["twin_acc"] = float((twin_logits.argmax(1) == labels).mean())
    result["fp32_acc"] = float((float_logits.argmax(1) == labels).mean())
    result["engine_acc"] = float((engine_logits.argmax(1) == labels).mean())
    logger.info(
        "twin vs int8 engine on %d images: top-1 agreement %.4f (fp32 model: %.4f), max |dlogit| %.3g",
        len(subset),
        result["top1_agreement"],
        result["fp32_top1_agreement"],
        result["max_abs_logit_diff"],
    )
    return result
