"""The token-sparse contract shared by ATS, A-ViT and AdaViT, and the helpers they are built from.

A *token-sparse network* (`TokenSparseNet`, duck-typed) is an `nn.Module` that reuses the modules
of a timm `VisionTransformer` (same parameter names, so the ViT's state dict loads as it is) and
drops tokens that a mechanism judges unimportant, per image:

- `mechanism: str`: "ats", "avit" or "adavit" (`MECHANISMS`).
- `depth: int`: number of transformer blocks.
- `num_tokens: int`: tokens entering the first block, patch tokens + 1 class token.
- `token_cap: tuple[int, ...] | None`: a *defence*: at most `token_cap[b]` tokens (class token
  included) may reach block b, i.e. `counts[:, b] <= token_cap[b]`; None means no cap. Where the
  cap bites, the tokens the mechanism ranks highest are kept.
- `drop_mode: str`: "physical" (dropped tokens leave the tensors: data-dependent shapes, less
  compute) or "masked" (fixed shapes, every token computed, dropped ones masked out of attention;
  the same logits up to float error, no saving: shows what physical dropping buys).
- `forward(x)` (eval): logits [N, classes]. `x` is already normalised (ZooModel does (x-mean)/std).
- `forward_counts(x)`: `(logits, counts)`, counts int64 [N, depth]: the tokens (class token
  included) block b really processes for image n, the image's own count whatever else is in the
  batch.
- `usage(x)`: `(logits, usage)`, usage float [N, depth] in [0, 1] and differentiable w.r.t. `x`:
  a smooth surrogate of counts / num_tokens, what the DeSparsify attack maximises.
- optional, `keep_masks(x)`: `(logits, keep)`, keep bool [N, depth, num_tokens]: which of the
  original tokens (class token first) block b counts, so `keep.sum(-1)` equals the counts
  (`edgeattack.sparsity.depth` builds token-depth maps from it).

Physical dropping, batched: each image gathers its kept tokens first, in their order
(`compaction_order`, `compact_tokens`), the batch keeps the largest kept count, and the other
slots are padding that a key-padding mask (`key_bias`, `masked_attention`, `masked_block`) keeps
out of every attention, so padding never influences a kept token and never counts
(`token_counts`). An image's logits therefore do not depend on its batch, and at batch 1 the
computation really shrinks. Every helper here exports with `torch.onnx.export(dynamo=False)` at
opset 17: no `.item()`, no Python branching on tensor values; the widths come from ReduceMax /
Range / ScatterElements / GatherElements on the data.

`TokenSparseViT` is an optional base class: it takes over a ViT's modules and provides the
embedding, the classifier head and the contract's attributes; a mechanism adds `forward_counts`
and `usage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from edgeattack._lazy import require
from edgeattack.errors import ConfigError

torch = require("torch", feature="token-sparse ViTs")
nn = torch.nn

__all__ = [
    "DROP_MODES",
    "MECHANISMS",
    "TokenSparseNet",
    "TokenSparseViT",
    "apply_token_cap",
    "attend",
    "check_drop_mode",
    "check_token_cap",
    "check_token_vit",
    "compact_tokens",
    "compaction_order",
    "gather_tokens",
    "is_token_sparse",
    "key_bias",
    "masked_attention",
    "masked_block",
    "original_tokens",
    "split_qkv",
    "stages_cap",
    "token_arch_of",
    "token_counts",
    "token_sparsity_info",
]

MECHANISMS: tuple[str, ...] = ("ats", "avit", "adavit")
DROP_MODES: tuple[str, ...] = ("physical", "masked")


@runtime_checkable
class TokenSparseNet(Protocol):
    """What every token-sparse network provides (see the module docstring for the semantics)."""

    mechanism: str
    depth: int
    num_tokens: int
    token_cap: tuple[int, ...] | None
    drop_mode: str

    def forward(self, x: Any) -> Any:
        """Logits [N, classes] of normalised images `x`."""

    def forward_counts(self, x: Any) -> tuple[Any, Any]:
        """(logits [N, classes], counts int64 [N, depth]) of normalised images `x`."""

    def usage(self, x: Any) -> tuple[Any, Any]:
        """(logits [N, classes], usage float [N, depth] in [0, 1], differentiable w.r.t. `x`)."""


def token_arch_of(model: Any) -> Any:
    """The `edgeattack.metrics.tokens.TokenArch` of a token-sparse ZooModel or network (for GFLOPs)."""
    from edgeattack.metrics.tokens import TokenArch
    from edgeattack.zoo.arch import arch_of

    return TokenArch.from_vit_arch(arch_of(model))


def token_sparsity_info(model: Any) -> dict[str, Any]:
    """What engine metadata records of a token-sparse ZooModel or network (`EngineMetadata.token_sparsity`).

    Mechanism, depth, num_tokens, drop_mode, token_cap, the stages where it has them, whether
    counts are sampled inside the attention (ATS), and the `TokenArch` for GFLOPs without torch.
    """
    net = getattr(model, "net", model)
    if not is_token_sparse(net):
        raise ConfigError(f"{type(net).__name__} is not token-sparse (ats/avit/adavit)")
    cap = getattr(net, "token_cap", None)
    info: dict[str, Any] = {
        "mechanism": str(net.mechanism),
        "depth": int(net.depth),
        "num_tokens": int(net.num_tokens),
        "drop_mode": str(getattr(net, "drop_mode", "physical")),
        "token_cap": None if cap is None else [int(c) for c in cap],
        "sampled_in_attention": bool(getattr(net, "sampled_in_attention", False)),
        "output": "token_counts: int64 [batch, depth], tokens (class token included) each block processes",
    }
    stages = getattr(net, "stages", None)
    if stages is not None:
        info["stages"] = [int(s) for s in stages]
    try:
        info["arch"] = token_arch_of(model).to_dict()
    except ConfigError as exc:  # a network the analytic count does not describe
        info["arch_error"] = str(exc)
    return info


def is_token_sparse(net: Any) -> bool:
    """True when `net` offers the token-sparse contract (`forward_counts` and `usage`, a mechanism)."""
    return callable(getattr(net, "forward_counts", None)) and callable(getattr(net, "usage", None)) and bool(
        getattr(net, "mechanism", "")
    )


# -- validation ----------------------------------------------------------------------------------
def check_drop_mode(mode: str) -> str:
    """`mode` if it is "physical" or "masked", ConfigError otherwise."""
    if mode not in DROP_MODES:
        raise ConfigError(f"drop_mode must be one of {', '.join(DROP_MODES)}, got {mode!r}")
    return mode


def check_token_cap(cap: int | Sequence[int] | None, depth: int, num_tokens: int) -> tuple[int, ...] | None:
    """A per-block cap tuple (length `depth`, values in [1, num_tokens]) from an int, a sequence or None.

    An int caps every block alike; values above `num_tokens` are lowered to it (they never bite).
    """
    if cap is None:
        return None
    values = [cap] * depth if isinstance(cap, int) else list(cap)
    if len(values) != depth:
        raise ConfigError(f"token_cap needs one value per block ({depth}), got {len(values)}")
    result = []
    for value in values:
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise ConfigError(f"token_cap values must be integers >= 1 (the class token always stays), got {value!r}")
        result.append(min(int(value), num_tokens))
    return tuple(result)


def check_token_vit(net: Any, mechanism: str) -> None:
    """ConfigError unless `net` is a plain timm ViT (one class token, token pooling, standard blocks)."""
    vision_transformer = require("timm.models.vision_transformer", feature=mechanism)
    if not isinstance(net, vision_transformer.VisionTransformer):
        raise ConfigError(f"{mechanism} wraps a timm VisionTransformer, got {type(net).__name__}")
    problems = []
    if net.cls_token is None or net.num_prefix_tokens != 1:
        problems.append(
            f"needs exactly one class token and no register/distillation tokens (has {net.num_prefix_tokens})"
        )
    if net.global_pool != "token" or getattr(net, "attn_pool", None) is not None:
        problems.append(f"needs class-token pooling (global_pool='token'), has {net.global_pool!r}")
    if net.pos_embed is None or net.no_embed_class or net.dynamic_img_size:
        problems.append("needs a learned position embedding that covers the class token, at a fixed image size")
    block_parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    attn_parts = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop")
    for block in net.blocks:
        if not all(hasattr(block, p) for p in block_parts) or not all(hasattr(block.attn, p) for p in attn_parts):
            problems.append(f"needs timm's standard Block/Attention, has {type(block).__name__}")
            break
    if problems:
        raise ConfigError(f"cannot build {mechanism} from this ViT: " + "; ".join(problems))


# -- masks and compaction ------------------------------------------------------------------------
def token_counts(key_mask: Any) -> Any:
    """(B,) int64: the real (unpadded, kept) tokens of each image in a (B, N) bool mask."""
    return key_mask.to(torch.int64).sum(dim=1)


def key_bias(key_mask: Any, dtype: Any) -> Any:
    """(B, 1, 1, N) additive attention bias: 0 for real keys, -inf for padding / dropped keys."""
    zeros = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    bias = zeros.masked_fill(~key_mask, float("-inf"))
    return bias.unsqueeze(1).unsqueeze(1)


def compaction_order(keep_mask: Any) -> tuple[Any, Any]:
    """(order (B, W) int64, key_mask (B, W) bool) that gather each image's kept tokens first.

    W is the largest kept count in the batch. Row b of `order` lists the positions of image b's
    kept tokens in their original (stable) order, then positions of dropped tokens as padding,
    which `key_mask` marks False. Built from cumulative sums and a scatter (no sort, no ties), so
    torch and ONNX Runtime give the same indices.
    """
    keep = keep_mask.to(torch.int64)
    kept = keep.sum(dim=1, keepdim=True)  # (B, 1)
    width = kept.max()
    rank_kept = keep.cumsum(dim=1) - 1
    rank_dropped = (1 - keep).cumsum(dim=1) - 1 + kept
    destination = torch.where(keep_mask, rank_kept, rank_dropped)  # a permutation of 0..N-1 per row
    positions = torch.arange(keep_mask.shape[1], device=keep_mask.device).unsqueeze(0).expand_as(destination)
    order = torch.zeros_like(destination).scatter(1, destination, positions)[:, :width]
    slots = torch.arange(width, device=keep_mask.device).unsqueeze(0)
    return order, slots < kept


def original_tokens(positions: Any, slot_mask: Any, num_tokens: int) -> Any:
    """(B, num_tokens) bool over the original tokens: those whose slot is True in `slot_mask` (B, W).

    `positions` (B, W) int64 holds the original token of each slot (distinct per row), as the
    `compaction_order`s applied so far have moved them.
    """
    empty = torch.zeros(slot_mask.shape[0], num_tokens, dtype=torch.bool, device=slot_mask.device)
    return empty.scatter(1, positions, slot_mask)


def gather_tokens(x: Any, order: Any, dim: int = 1) -> Any:
    """`x` with its token axis `dim` reordered / cut by `order` (B, W): x[b, ..., order[b], ...]."""
    index = order
    for _ in range(dim - 1):
        index = index.unsqueeze(1)
    for _ in range(x.dim() - dim - 1):
        index = index.unsqueeze(-1)
    shape = list(x.shape)
    shape[dim] = order.shape[1]
    return torch.gather(x, dim, index.expand(shape))


def compact_tokens(x: Any, keep_mask: Any) -> tuple[Any, Any]:
    """(x_compact (B, W, C), key_mask (B, W)): each image's kept tokens of `x` (B, N, C) first.

    See `compaction_order`; padded slots hold dropped tokens' values and are False in `key_mask`.
    """
    order, key_mask = compaction_order(keep_mask)
    return gather_tokens(x, order), key_mask


def apply_token_cap(keep_mask: Any, scores: Any, cap: int | None) -> Any:
    """`keep_mask` (B, N) with at most `cap` True entries per row: those with the highest `scores`.

    Ties go to the lower index. Ranks are counted with an (N, N) comparison rather than TopK, so
    the result needs no dynamic k and is exactly reproducible in ONNX Runtime. `cap=None` or a cap
    of at least N returns the mask unchanged.
    """
    if cap is None:
        return keep_mask
    if cap < 0:
        raise ConfigError(f"a token cap cannot be negative, got {cap}")
    s_i, s_j = scores.unsqueeze(2), scores.unsqueeze(1)  # i: competitor, j: the token ranked
    index = torch.arange(scores.shape[1], device=scores.device)
    earlier = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(0)
    ahead = (s_i > s_j) | ((s_i == s_j) & earlier)
    rank = (ahead & keep_mask.unsqueeze(2)).to(torch.int64).sum(dim=1)  # kept tokens ranked above j
    return keep_mask & (rank < cap)


# -- attention with a key-padding mask -----------------------------------------------------------
def split_qkv(attn: Any, x: Any) -> tuple[Any, Any, Any]:
    """q, k, v (B, H, N, d) of timm `Attention` `attn` on tokens `x` (B, N, C), q/k norms applied."""
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attend(attn: Any, q: Any, k: Any, v: Any, bias: Any, gate_input: Any = None) -> Any:
    """timm `Attention`'s output (after proj) for queries `q` (B, H, M, d) over keys/values (B, H, N, d).

    `bias` is `key_bias` of the keys; `gate_input` the (B, M, C) tokens of the queries, needed only
    by gated attention.
    """
    weights = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
    out = attn.attn_drop(weights) @ v
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], attn.num_heads * attn.head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(gate_input).sigmoid()
    return attn.proj_drop(attn.proj(out))


def masked_attention(attn: Any, x: Any, key_mask: Any) -> Any:
    """timm `Attention` on `x` (B, N, C) where no token attends to keys that `key_mask` (B, N) marks False."""
    q, k, v = split_qkv(attn, x)
    return attend(attn, q, k, v, key_bias(key_mask, q.dtype), gate_input=x)


def masked_block(block: Any, x: Any, key_mask: Any) -> Any:
    """A timm `Block` on `x` (B, N, C) with a key-padding mask: padded / dropped tokens are never attended.

    Their own rows are still computed (they are padding or, in masked mode, carried along unused).
    """
    x = x + block.drop_path1(block.ls1(masked_attention(block.attn, block.norm1(x), key_mask)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


# -- the optional base class ---------------------------------------------------------------------
class TokenSparseViT(nn.Module):
    """Takes over a timm ViT's modules (under their timm names) and holds the contract's attributes.

    Subclasses set `mechanism` and implement `forward_counts` and `usage`; `forward` returns the
    logits of `forward_counts`.
    """

    mechanism: str = ""

    def __init__(self, net: Any, *, token_cap: int | Sequence[int] | None = None, drop_mode: str = "physical") -> None:
        super().__init__()
        check_token_vit(net, self.mechanism or type(self).__name__)
        self.patch_embed = net.patch_embed
        self.cls_token = net.cls_token
        self.pos_embed = net.pos_embed
        self.pos_drop = net.pos_drop
        self.patch_drop = net.patch_drop
        self.norm_pre = net.norm_pre
        self.blocks = net.blocks
        self.norm = net.norm
        self.fc_norm = net.fc_norm
        self.head_drop = net.head_drop
        self.head = net.head
        self.embed_dim = int(net.embed_dim)
        self.num_classes = int(net.num_classes)
        self.num_patches = int(net.patch_embed.num_patches)
        self.img_size = tuple(int(s) for s in net.patch_embed.img_size)
        self.depth = len(net.blocks)
        self.num_tokens = self.num_patches + 1
        self.drop_mode = check_drop_mode(drop_mode)
        self.token_cap = check_token_cap(token_cap, self.depth, self.num_tokens)

    def forward(self, x: Any) -> Any:
        return self.forward_counts(x)[0]

    def set_token_cap(self, token_cap: int | Sequence[int] | None) -> None:
        """Set (or clear, with None) the per-block token cap, the availability defence."""
        self.token_cap = check_token_cap(token_cap, self.depth, self.num_tokens)
        self._token_cap_changed()

    def _token_cap_changed(self) -> None:
        """Hook for subclasses that derive state from `token_cap`."""

    def forward_counts(self, x: Any) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def usage(self, x: Any) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, x: Any) -> Any:
        """Normalised images -> (B, num_tokens, C) tokens entering the first block (class token first)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def classify(self, x: Any) -> Any:
        """Logits from the last block's tokens (B, W, C): final norm, class token (always slot 0), head."""
        x = self.norm(x)
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))

    def all_tokens_mask(self, x: Any) -> Any:
        """(B, N) all-True key mask for tokens `x` (B, N, C) (traced with a dynamic batch)."""
        return torch.ones_like(x[..., 0], dtype=torch.bool)

    def extra_repr(self) -> str:
        cap = "None" if self.token_cap is None else list(self.token_cap)
        return f"mechanism={self.mechanism!r}, drop_mode={self.drop_mode!r}, token_cap={cap}, tokens={self.num_tokens}"


def stages_cap(
    token_cap: tuple[int, ...] | None, stages: Sequence[int], depth: int, num_tokens: int
) -> dict[int, int | None]:
    """Per stage block, the most tokens (class token included) it may keep: the tightest cap until the next stage.

    For mechanisms that drop tokens only at `stages` (the kept ones then stay until the next
    stage). A cap below `num_tokens` on a block before the first stage cannot be honoured (nothing
    has ranked the tokens yet): ConfigError.
    """
    ordered = sorted(stages)
    if token_cap is None:
        return dict.fromkeys(ordered)
    first = ordered[0] if ordered else depth
    for block in range(first):
        if token_cap[block] < num_tokens:
            raise ConfigError(
                f"token_cap {token_cap[block]} at block {block} cannot be honoured: no tokens are ranked "
                f"before the first sparsification stage (block {first})"
            )
    result: dict[int, int | None] = {}
    for index, stage in enumerate(ordered):
        end = ordered[index + 1] if index + 1 < len(ordered) else depth
        result[stage] = min(token_cap[stage:end])
    return result
