"""2:4 structured sparsity of Linear weights (NVIDIA Ampere+ sparse tensor cores), with fine-tuning.

In every group of 4 consecutive weights along the input (reduction) dimension of a row, the 2 of
largest magnitude are kept and the other 2 set to zero (Mishra et al. 2021, "Accelerating Sparse
Deep Neural Networks"; NVIDIA ASP). The masks are fixed at pruning time; fine-tuning (with
distillation from the dense model) re-applies them after every optimizer step, so the weights stay
2:4 and the module keeps its plain `nn.Linear` layout: the result loads into the dense architecture,
exports to ordinary ONNX, and TensorRT builds sparse kernels from it with `SPARSE_WEIGHTS`.

`is_2to4_sparse` and `mask_2to4_numpy` need only numpy (an engine builder on a device checks ONNX
initializers with them); everything else imports torch when called.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgeattack.errors import ConfigError

DIGITS_SPARSE24_NAME = "vit_tiny_digits_sparse24"
GROUP = 4
KEEP = 2


def _as_numpy(weight: Any) -> np.ndarray:
    if isinstance(weight, np.ndarray):
        return weight
    detach = getattr(weight, "detach", None)
    if detach is not None:  # a torch tensor
        return detach().cpu().float().numpy()
    return np.asarray(weight)


def is_2to4_sparse(weight: Any, *, axis: int = -1) -> bool:
    """Whether every group of 4 consecutive elements along `axis` has at most 2 non-zeros.

    `axis` is the reduction dimension: -1 (in_features) for a torch `nn.Linear` weight [out, in],
    0 for an ONNX MatMul initializer [in, out]. A 2-D weight whose `axis` is not a multiple of 4
    is not 2:4 sparse. Accepts numpy arrays and torch tensors.
    """
    w = _as_numpy(weight)
    if w.ndim != 2 or w.shape[axis] % GROUP or w.shape[axis] == 0:
        return False
    w = np.moveaxis(w, axis, -1)
    groups = (w != 0).reshape(w.shape[0], -1, GROUP)
    return bool((groups.sum(-1) <= KEEP).all())


def mask_2to4_numpy(weight: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Boolean mask keeping the 2 largest |w| of every 4 consecutive weights along `axis`."""
    w = np.moveaxis(np.asarray(weight), axis, -1)
    if w.ndim != 2 or w.shape[-1] % GROUP:
        raise ConfigError(
            f"2:4 sparsity needs a 2-D weight whose reduction dimension is a multiple of 4, got {w.shape}"
        )
    groups = np.abs(w).reshape(w.shape[0], -1, GROUP)
    order = np.argsort(-groups, axis=-1, kind="stable")[..., :KEEP]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return np.moveaxis(mask.reshape(w.shape), -1, axis)


def mask_2to4(weight: Any) -> Any:
    """torch: boolean mask of a Linear weight [out, in] keeping the 2 largest |w| of every 4 inputs."""
    import torch

    out_features, in_features = weight.shape
    if in_features % GROUP:
        raise ConfigError(f"2:4 sparsity needs in_features divisible by 4, got {in_features}")
    groups = weight.detach().abs().reshape(out_features, in_features // GROUP, GROUP)
    keep = groups.topk(KEEP, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_features, in_features)


@dataclasses.dataclass
class SparseMasks:
    """Fixed 2:4 masks of some Linear layers; `apply()` re-zeroes the pruned weights."""

    masks: dict[str, Any]  # module name -> bool mask of its weight
    modules: dict[str, Any]  # module name -> nn.Linear
    skipped: dict[str, str]  # module name -> why it was left dense

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, mask in self.masks.items():
                self.modules[name].weight.mul_(mask)

    def __call__(self) -> None:
        self.apply()


def prune_2to4(model: Any, *, include_head: bool = False, exclude: tuple[str, ...] = ()) -> SparseMasks:
    """Prune every `nn.Linear` of `model` to 2:4 in place (magnitude); the masks, to keep fixed.

    Classifier heads (`head`, `head_dist`) stay dense unless `include_head`; layers whose
    in_features is not a multiple of 4, and names containing any of `exclude`, are skipped.
    """
    import torch

    masks, modules, skipped = {}, {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if not include_head and leaf in ("head", "head_dist"):
            skipped[name] = "classifier head"
        elif any(part in name for part in exclude):
            skipped[name] = "excluded"
        elif module.in_features % GROUP:
            skipped[name] = f"in_features {module.in_features} is not a multiple of 4"
        else:
            masks[name] = mask_2to4(module.weight)
            modules[name] = module
    result = SparseMasks(masks=masks, modules=modules, skipped=skipped)
    result.apply()
    return result


def sparsity_report(model: Any) -> dict[str, Any]:
    """Per-Linear-layer zero fraction and 2:4 status, and the totals over the Linear weights."""
    import torch

    layers = {}
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach()
            n_zero = int((w == 0).sum())
            layers[name] = {"zero_fraction": n_zero / w.numel(), "is_2to4": is_2to4_sparse(w)}
            zeros += n_zero
            total += w.numel()
    return {
        "layers": layers,
        "linear_zero_fraction": zeros / max(total, 1),
        "sparse_layers": sum(v["is_2to4"] for v in layers.values()),
        "linear_layers": len(layers),
    }


SPARSE24_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "lr": 5e-4,
    "batch_size": 64,
    "warmup_epochs": 1,
    "label_smoothing": 0.0,
    "alpha": 0.5,
    "tau": 1.0,
    "include_head": False,
    "name": None,
    "grad_clip": 5.0,
}


def compress_sparse24(
    teacher: Any, train_ds: Any, val_ds: Any = None, **hyperparams: Any
) -> tuple[Any, dict[str, Any]]:
    """Prune a copy of `teacher` to 2:4 and fine-tune it with fixed masks; (model, report).

    The loss distils the dense teacher into its pruned copy: (1 - α) CE(y) + α τ² KL(teacher ‖ student);
    `alpha=0` fine-tunes on the labels only. Hyper-parameters: TrainConfig's (`epochs`, `lr`, ...),
    `alpha`, `tau`, `include_head` (prune the classifier too), `name`, `grad_clip`, `max_steps`
    (`epochs=0` is not allowed; prune without fine-tuning with `prune_2to4` on a copy).
    """
    import copy

    import torch.nn.functional as F

    from edgeattack.compress.distill import check_teacher, finish_report, fit_student, parse_hyperparams, soft_kd_loss
    from edgeattack.zoo.train import evaluate_accuracy

    config, params = parse_hyperparams("sparse24", hyperparams, SPARSE24_DEFAULTS)
    check_teacher(teacher, train_ds, val_ds)
    alpha, tau = float(params["alpha"]), float(params["tau"])
    if not 0.0 <= alpha <= 1.0 or tau <= 0:
        raise ConfigError("alpha must be in [0, 1] and tau positive")
    student = copy.deepcopy(teacher)
    student.config = dataclasses.replace(teacher.config, family="sparse24")
    student.model_name = params["name"] or _student_name(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    masks = prune_2to4(student.net, include_head=bool(params["include_head"]))
    if not masks.masks:
        raise ConfigError(f"{teacher.model_name} has no Linear layer that can be made 2:4 sparse")
    pruned_acc = evaluate_accuracy(student, val_ds) if val_ds is not None else None

    def loss_fn(student_out: Any, teacher_logits: Any, labels: Any) -> tuple[Any, dict[str, Any]]:
        ce = F.cross_entropy(student_out, labels, label_smoothing=config.label_smoothing)
        kd = soft_kd_loss(student_out, teacher_logits, tau)
        return (1 - alpha) * ce + alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}

    fit = fit_student(
        student,
        teacher,
        train_ds,
        val_ds,
        loss_fn,
        config,
        max_steps=params["max_steps"],
        after_step=masks.apply,
        grad_clip=params["grad_clip"],
    )
    sparsity = sparsity_report(student.net)
    not_sparse = [n for n in masks.masks if not sparsity["layers"][n]["is_2to4"]]
    if not_sparse:  # cannot happen while masks re-apply after each step; guard the invariant anyway
        raise ConfigError(f"layers lost their 2:4 pattern during fine-tuning: {not_sparse[:4]}")
    report = finish_report(
        "sparse24",
        student,
        teacher,
        fit,
        val_ds,
        {**dataclasses.asdict(config), **params},
        pruned_val_acc_before_finetune=pruned_acc,
        pruned_layers=sorted(masks.masks),
        dense_layers=masks.skipped,
        linear_zero_fraction=sparsity["linear_zero_fraction"],
    )
    return student, report


def _student_name(teacher: Any) -> str:
    return DIGITS_SPARSE24_NAME if teacher.model_name == "vit_tiny_digits" else f"{teacher.model_name}_sparse24"


def build_digits_vit_sparse24(name: str, config: Any, **overrides: Any) -> Any:
    """Zoo builder: the dense digits ViT architecture (2:4 sparsity lives in its weights)."""
    from edgeattack.zoo.vit import build_digits_vit

    return build_digits_vit(name, config, **overrides)
