"""MiniViT's distillation losses (Zhang et al. 2022, after MiniLMv2): what `compress_minivit` trains with.

- self-attention distillation: KL between the relation matrices softmax(M_i M_j^T / √d) of the last
  layer's queries, keys and values (i, j ∈ {Q, K, V}, per relation head; Q-K is the attention map),
  student against teacher, averaged over the nine pairs;
- hidden-state distillation: MSE between the token-relation matrices of the last layer's
  L2-normalised hidden states, H H^T.

`LastLayerTap` hooks a ViT's last block to capture both.
"""

from __future__ import annotations

import math
from typing import Any

from edgeattack._lazy import require

torch = require("torch", feature="MiniViT")
F = torch.nn.functional

__all__ = ["LastLayerTap", "hidden_relation_mse", "relation_kl"]


class LastLayerTap:
    """Forward hooks keeping the last call's qkv output and hidden state of a ViT's last block."""

    def __init__(self, net: Any) -> None:
        last = net.blocks[-1]
        qkv = last.qkv if hasattr(last, "qkv") else last.attn.qkv
        self.qkv: Any = None
        self.hidden: Any = None
        self._handles = [
            qkv.register_forward_hook(lambda _m, _i, out: setattr(self, "qkv", out)),
            last.register_forward_hook(lambda _m, _i, out: setattr(self, "hidden", out)),
        ]
        self.prefix = int(getattr(net, "num_prefix_tokens", 1))
        self.patches = int(net.patch_embed.num_patches)

    def tokens(self, x: Any) -> Any:
        """The class token and the patch tokens (a distillation token is dropped, so tokens align)."""
        return torch.cat([x[:, :1], x[:, x.shape[1] - self.patches :]], dim=1) if self.prefix != 1 else x

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def relation_kl(student_qkv: Any, teacher_qkv: Any, heads: int) -> Any:
    """Mean over the 9 (Q,K,V) pairs of KL(teacher relation ‖ student relation), per relation head."""
    total = 0.0
    s_parts, t_parts = student_qkv.chunk(3, dim=-1), teacher_qkv.chunk(3, dim=-1)
    for i in range(3):
        for j in range(3):
            s = _relation_logits(s_parts[i], s_parts[j], heads)
            t = _relation_logits(t_parts[i], t_parts[j], heads)
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True)
            total = total + kl.sum(-1).mean()
    return total / 9.0


def _relation_logits(a: Any, b: Any, heads: int) -> Any:
    batch, tokens, dim = a.shape
    a = a.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)
    b = b.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)
    return a @ b.transpose(-2, -1) / math.sqrt(dim / heads)


def hidden_relation_mse(student_hidden: Any, teacher_hidden: Any) -> Any:
    """MSE between token-relation matrices of L2-normalised hidden states, times the token count."""
    s = F.normalize(student_hidden, dim=-1)
    t = F.normalize(teacher_hidden, dim=-1)
    s_rel, t_rel = s @ s.transpose(-1, -2), t @ t.transpose(-1, -2)
    return F.mse_loss(s_rel, t_rel) * s_rel.shape[-1]
