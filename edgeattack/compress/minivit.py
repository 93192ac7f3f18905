"""edgeattack's class-token MiniViT: weight multiplexing after Zhang et al. 2022 (arXiv:2204.07154).

Consecutive transformer blocks are merged into one `MultiplexedBlock`: `share` layers run one after
the other with *the same* attention (qkv, proj) and MLP (fc1, fc2) weights, so block parameters
drop to about 1/share. Each layer keeps its own, small parts, which give the layers diversity:

- its two LayerNorms (not shared);
- an attention transformation: two head-mixing matrices (heads x heads) applied to the attention
  logits before the softmax and to the attention weights after it (MiniViT's 1x1 convolutions
  over heads); both start as the identity;
- an MLP transformation: a depth-wise 3x3 convolution over the patch-token grid of the MLP input,
  as a residual that starts at zero (so a fresh student computes exactly the shared block).

The student starts from the teacher (stem, position embedding, final norm and head copied, the
shared weights from one teacher block of each group, the LayerNorms from their own layers) and
is trained with weight distillation from that teacher: prediction-logit distillation,
(1 - α) CE(y) + α τ² KL(teacher ‖ student), plus MiniViT's self-attention and hidden-state
relation losses (`edgeattack.compress.minivit_distill`).

This keeps the teacher's class token and has no image relative position encoding, so it starts
exactly from a timm ViT; it is `minivit_tiny_digits` (shipped weights) and the
`variant="class-token"` option of the `mini_deit_*_patch16_224` names. Cream's own Mini-DeiT
(iRPE on keys, no class token, mean-pooled head, no MLP transformation), which loads Cream's
released checkpoints, is `edgeattack.compress.mini_deit.MiniDeiT`, those names' default.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from edgeattack._lazy import require
from edgeattack.compress.distill import (
    check_teacher,
    finish_report,
    fit_student,
    parse_hyperparams,
    soft_kd_loss,
    vit_arch,
)
from edgeattack.compress.minivit_distill import LastLayerTap, hidden_relation_mse, relation_kl
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.factory import ZooModel, count_parameters

torch = require("torch", feature="MiniViT")
nn = torch.nn
F = torch.nn.functional
vision_transformer = require("timm.models.vision_transformer", feature="MiniViT")
timm_layers = require("timm.layers", feature="MiniViT")

logger = logging.getLogger(__name__)

DIGITS_MINIVIT_NAME = "minivit_tiny_digits"
SHARED_INITS = ("first", "middle", "mean")


class LayerSpecific(nn.Module):
    """What one layer of a multiplexed block owns: LayerNorms, head mixers, depth-wise MLP conv."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        *,
        attn_transform: bool,
        mlp_transform: bool,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.grid = tuple(int(g) for g in grid)
        if attn_transform:
            self.mix_pre = nn.Parameter(torch.eye(num_heads))
            self.mix_post = nn.Parameter(torch.eye(num_heads))
        else:
            self.register_parameter("mix_pre", None)
            self.register_parameter("mix_post", None)
        if mlp_transform:
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
            nn.init.zeros_(self.dwconv.weight)
            nn.init.zeros_(self.dwconv.bias)
        else:
            self.dwconv = None

    def mlp_input(self, x: Any) -> Any:
        """norm2(x), plus the depth-wise convolution of its patch tokens (prefix tokens pass through)."""
        h = self.norm2(x)
        if self.dwconv is None:
            return h
        patches = self.grid[0] * self.grid[1]
        prefix, tokens = h[:, : h.shape[1] - patches], h[:, h.shape[1] - patches :]
        grid = tokens.transpose(1, 2).unflatten(2, self.grid)  # [B, C, gh, gw]
        local = self.dwconv(grid).flatten(2).transpose(1, 2)
        return torch.cat([prefix, tokens + local], dim=1)


def mix_heads(attn: Any, matrix: Any) -> Any:
    """Mix the heads of attention maps [B, H, N, N] with a [H, H] matrix (a 1x1 conv over heads)."""
    return torch.matmul(matrix, attn.flatten(2)).view_as(attn)


class MultiplexedBlock(nn.Module):
    """`share` consecutive pre-norm transformer layers with one shared attention and MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        *,
        qkv_bias: bool,
        share: int,
        grid: tuple[int, int],
        attn_transform: bool = True,
        mlp_transform: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.mlp = timm_layers.Mlp(in_features=dim, hidden_features=mlp_hidden, act_layer=nn.GELU)
        self.layers = nn.ModuleList(
            LayerSpecific(dim, num_heads, grid, attn_transform=attn_transform, mlp_transform=mlp_transform)
            for _ in range(share)
        )

    def attention(self, x: Any, layer: LayerSpecific) -> Any:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if layer.mix_pre is not None:
            attn = mix_heads(attn, layer.mix_pre)
        attn = attn.softmax(dim=-1)
        if layer.mix_post is not None:
            attn = mix_heads(attn, layer.mix_post)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = x + self.attention(layer.norm1(x), layer)
            x = x + self.mlp(layer.mlp_input(x))
        return x


class MiniVisionTransformer(vision_transformer.VisionTransformer):
    """A timm VisionTransformer whose `depth` blocks are `depth / share` multiplexed blocks."""

    def __init__(
        self, *, share: int = 2, attn_transform: bool = True, mlp_transform: bool = True, **kwargs: Any
    ) -> None:
        depth = int(kwargs.get("depth", 12))
        if share < 1 or depth % share:
            raise ConfigError(f"share must divide depth: depth {depth}, share {share}")
        super().__init__(**kwargs)
        dim = self.embed_dim
        first = self.blocks[0]
        grid = tuple(int(g) for g in self.patch_embed.grid_size)
        self.share = share
        self.blocks = nn.Sequential(
            *(
                MultiplexedBlock(
                    dim,
                    first.attn.num_heads,
                    first.mlp.fc1.out_features,
                    qkv_bias=first.attn.qkv.bias is not None,
                    share=share,
                    grid=grid,
                    attn_transform=attn_transform,
                    mlp_transform=mlp_transform,
                )
                for _ in range(depth // share)
            )
        )
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks) * self.share


def build_minivit(config: ModelConfig, arch: dict[str, Any], **options: Any) -> MiniVisionTransformer:
    """A MiniViT for `config` with ViT arguments `arch` (patch_size, embed_dim, depth, ...) and `options`."""
    return MiniVisionTransformer(
        img_size=config.input_size[1],
        in_chans=config.input_size[0],
        num_classes=config.num_classes,
        global_pool="token",
        **arch,
        **options,
    )


def build_digits_minivit(name: str, config: ModelConfig, **overrides: Any) -> Any:
    """Zoo builder: the digits ViT (depth 6) multiplexed in groups of `share` (default 2) blocks."""
    from edgeattack.zoo.vit import DIGITS_VIT_ARGS

    options = {k: overrides.pop(k) for k in ("share", "attn_transform", "mlp_transform") if k in overrides}
    return build_minivit(config, {**DIGITS_VIT_ARGS, **overrides}, **options)


# -- initialisation from the teacher --------------------------------------------------------------
def init_from_teacher(student: MiniVisionTransformer, teacher_net: Any, shared_init: str = "first") -> None:
    """Copy a same-width timm ViT teacher into `student`: stem, norms, head, and the shared weights.

    The shared qkv/proj/MLP of each group come from the group's first teacher block (`"first"`), its
    middle one (`"middle"`), or the mean of the group (`"mean"`). LayerNorms are copied per layer.
    """
    if shared_init not in SHARED_INITS:
        raise ConfigError(f"shared_init must be one of {', '.join(SHARED_INITS)}, got {shared_init!r}")
    if len(teacher_net.blocks) != student.depth:
        raise ConfigError(f"teacher depth {len(teacher_net.blocks)} differs from the student's {student.depth}")
    with torch.no_grad():
        for key in (
            "patch_embed.proj.weight",
            "patch_embed.proj.bias",
            "cls_token",
            "norm.weight",
            "norm.bias",
            "head.weight",
            "head.bias",
        ):
            _copy(student, teacher_net, key)
        pos_t, pos_s = teacher_net.pos_embed, student.pos_embed
        prefix_t = int(getattr(teacher_net, "num_prefix_tokens", 1))
        patches = student.patch_embed.num_patches
        pos_s.copy_(torch.cat([pos_t[:, :1], pos_t[:, prefix_t : prefix_t + patches]], dim=1))
        for g, block in enumerate(student.blocks):
            group = [teacher_net.blocks[g * student.share + i] for i in range(student.share)]
            sources = {
                "first": group[:1],
                "middle": group[(len(group) - 1) // 2 : (len(group) - 1) // 2 + 1],
                "mean": group,
            }[shared_init]
            for ours, theirs in (
                (block.qkv, lambda b: b.attn.qkv),
                (block.proj, lambda b: b.attn.proj),
                (block.mlp.fc1, lambda b: b.mlp.fc1),
                (block.mlp.fc2, lambda b: b.mlp.fc2),
            ):
                ours.weight.copy_(torch.stack([theirs(b).weight for b in sources]).mean(0))
                if ours.bias is not None:
                    ours.bias.copy_(torch.stack([theirs(b).bias for b in sources]).mean(0))
            for layer, teacher_block in zip(block.layers, group, strict=True):
                layer.norm1.load_state_dict(teacher_block.norm1.state_dict())
                layer.norm2.load_state_dict(teacher_block.norm2.state_dict())


def _copy(student: Any, teacher: Any, key: str) -> None:
    ours, theirs = student.get_parameter(key), teacher.get_parameter(key)
    if ours.shape != theirs.shape:
        raise ConfigError(
            f"cannot initialise {key} from the teacher: shape {tuple(theirs.shape)} != {tuple(ours.shape)}"
        )
    ours.copy_(theirs)


MINIVIT_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "lr": 5e-4,
    "batch_size": 64,
    "warmup_epochs": 1,
    "label_smoothing": 0.0,
    "share": 2,
    "attn_transform": True,
    "mlp_transform": True,
    "shared_init": "first",
    "alpha": 0.5,
    "tau": 1.0,
    "beta": 1.0,
    "gamma": 1.0,
    "relation_heads": None,
    "name": None,
    "grad_clip": 5.0,
}


def compress_minivit(
    teacher: ZooModel, train_ds: ImageDataset, val_ds: ImageDataset | None = None, **hyperparams: Any
) -> tuple[ZooModel, dict[str, Any]]:
    """Weight-multiplex `teacher` (a timm ViT) and distil it into the MiniViT; (student, report).

    Hyper-parameters: TrainConfig's (`epochs`, `lr`, ...), `share` (blocks per shared group, must
    divide the depth), `attn_transform` / `mlp_transform` (per-layer transformations on/off),
    `shared_init` ("first" | "middle" | "mean" teacher block of each group), `alpha` and `tau`
    (logit distillation), `beta` (self-attention relation KL), `gamma` (hidden-state relation MSE),
    `relation_heads` (default: the teacher's heads), `name`, `grad_clip`, `max_steps`.
    """
    config, params = parse_hyperparams("minivit", hyperparams, MINIVIT_DEFAULTS)
    check_teacher(teacher, train_ds, val_ds)
    for key in ("alpha",):
        if not 0.0 <= float(params[key]) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {params[key]}")
    if float(params["tau"]) <= 0 or float(params["beta"]) < 0 or float(params["gamma"]) < 0:
        raise ConfigError("tau must be positive, beta and gamma non-negative")
    arch = vit_arch(teacher.net)
    share = int(params["share"])
    student = ZooModel(
        _build_student(teacher, arch, params, config.seed),
        dataclasses.replace(teacher.config, family="minivit"),
        params["name"] or _student_name(teacher, arch, params),
    )
    init_from_teacher(student.net, teacher.net, params["shared_init"])
    heads = int(params["relation_heads"] or arch["num_heads"])
    if arch["embed_dim"] % heads:
        raise ConfigError(f"relation_heads {heads} does not divide the width {arch['embed_dim']}")
    s_tap, t_tap = LastLayerTap(student.net), LastLayerTap(teacher.net)
    alpha, tau, beta, gamma = (float(params[k]) for k in ("alpha", "tau", "beta", "gamma"))

    def loss_fn(student_out: Any, teacher_logits: Any, labels: Any) -> tuple[Any, dict[str, Any]]:
        ce = F.cross_entropy(student_out, labels, label_smoothing=config.label_smoothing)
        kd = soft_kd_loss(student_out, teacher_logits, tau)
        attn = relation_kl(s_tap.tokens(s_tap.qkv), t_tap.tokens(t_tap.qkv), heads)
        hidden = hidden_relation_mse(s_tap.tokens(s_tap.hidden), t_tap.tokens(t_tap.hidden))
        loss = (1 - alpha) * ce + alpha * kd + beta * attn + gamma * hidden
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "attn": attn.detach(), "hidden": hidden.detach()}

    try:
        fit = fit_student(
            student,
            teacher,
            train_ds,
            val_ds,
            loss_fn,
            config,
            max_steps=params["max_steps"],
            grad_clip=params["grad_clip"],
        )
    finally:
        s_tap.remove()
        t_tap.remove()
    teacher_blocks = sum(p.numel() for p in teacher.net.blocks.parameters())
    student_blocks = sum(p.numel() for p in student.net.blocks.parameters())
    report = finish_report(
        "minivit",
        student,
        teacher,
        fit,
        val_ds,
        {**dataclasses.asdict(config), **params},
        share=share,
        block_params=student_blocks,
        teacher_block_params=teacher_blocks,
        block_params_ratio=student_blocks / teacher_blocks,
        params_ratio=count_parameters(student) / count_parameters(teacher),
    )
    return student, report


def _build_student(teacher: ZooModel, arch: dict[str, Any], params: dict[str, Any], seed: int) -> Any:
    torch.manual_seed(seed)
    return build_minivit(
        teacher.config,
        arch,
        share=int(params["share"]),
        attn_transform=bool(params["attn_transform"]),
        mlp_transform=bool(params["mlp_transform"]),
    )


def _student_name(teacher: ZooModel, arch: dict[str, Any], params: dict[str, Any]) -> str:
    from edgeattack.zoo.catalog import DIGITS_CONFIG
    from edgeattack.zoo.vit import DIGITS_VIT_ARGS

    default_options = all(params[k] == MINIVIT_DEFAULTS[k] for k in ("share", "attn_transform", "mlp_transform"))
    config = teacher.config
    if (
        default_options
        and arch == DIGITS_VIT_ARGS
        and (config.input_size, config.num_classes, config.dataset)
        == (DIGITS_CONFIG.input_size, DIGITS_CONFIG.num_classes, DIGITS_CONFIG.dataset)
    ):
        return DIGITS_MINIVIT_NAME
    deit = {f"deit_{size}_patch16_224": f"mini_deit_{size}_patch16_224" for size in ("tiny", "small", "base")}
    if default_options and teacher.model_name in deit:
        logger.info(
            "%s is the class-token MiniViT: load its weights with variant=class-token "
            "(--model-arg variant=class-token); the name's default is Cream's Mini-DeiT",
            deit[teacher.model_name],
        )
        return deit[teacher.model_name]
    return f"{teacher.model_name}_minivit{int(params['share'])}"
