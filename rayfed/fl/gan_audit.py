"""Phases 2 and 3: the server's generative audit and the bias of the global and hypothetical models.

Phase 2 trains G and D on the server's audit split with
    L_G = -||Theta(x) - Theta(x')||^2 + lambda1 ||x - x'||^2 + lambda2 L_realism,
the first term's gradient reaching G through the frozen classifier Theta (notebook defect 1), and every
image fed to Theta mapped into Theta's input space first (defect 3).
Phase 3 measures B = (1/|P|) sum_{(x,x') in P} |Theta(x) - Theta(x')| (L1 over classes) for Theta_old and for
every Theta_old + dw_i, each weight set swapped into one BN-folded template (`FoldedEvaluator`),
so no model is copied or loaded; `audit.score: decisions` counts instead the pairs whose predicted class
differs, (1/|P|) sum_P 1[argmax Theta(x) != argmax Theta(x')] (`pair_bias`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from rayfed.config import BIAS_SCORES
from rayfed.data.datasets import PerChannel, denormalise, normalise
from rayfed.fl.state import StateDict, apply_update
from rayfed.models.gan import Discriminator, FairnessGenerator
from rayfed.training import autocast, grad_scaler, minibatches


@dataclass
class PixelSpace:
    """The classifier's input normalisation, to move images between GAN space [-1, 1] and classifier space."""

    mean: PerChannel
    std: PerChannel

    def on(self, device: torch.device) -> PixelSpace:
        """This space with mean and std as fp32 (1, C, 1, 1) tensors on `device`, made once: on a GPU a tensor
        built from Python numbers is a host-to-device copy that waits for the GPU, four of them a G step."""
        mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (self.mean, self.std))
        return PixelSpace(mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1))

    def to_classifier(self, x_gan: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1] pixels -> (pixel - mean) / std."""
        return normalise((x_gan + 1) / 2, self.mean, self.std)

    def to_gan(self, x_classifier: torch.Tensor) -> torch.Tensor:
        """(pixel - mean) / std -> [0, 1] pixels -> [-1, 1]."""
        return denormalise(x_classifier, self.mean, self.std) * 2 - 1


@dataclass
class GeneratorLoss:
    total: torch.Tensor
    prediction_gap: torch.Tensor
    """-||Theta(x) - Theta(x')||^2, batch mean."""
    closeness: torch.Tensor
    """lambda1 ||x - x'||^2, batch mean."""
    realism: torch.Tensor
    """lambda2 L_realism."""


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, parameters without gradients: inputs stay differentiable through it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def generator_loss(
    G: FairnessGenerator,
    D: Discriminator,
    classifier: nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor,
    lambda1: float,
    lambda2: float,
    space: PixelSpace,
) -> GeneratorLoss:
    """L_G = -||Theta(x) - Theta(x')||^2 + lambda1 ||x - x'||^2 + lambda2 L_realism for one batch.

    The classifier is called without `no_grad`, so the first term's gradient reaches G (defect 1);
    it must be frozen (see `freeze`) so that its own weights are not trained.
    """
    x, x_prime = G(z, labels)
    logits_gap = classifier(space.to_classifier(x)) - classifier(space.to_classifier(x_prime))
    prediction_gap = -logits_gap.pow(2).sum(dim=1).mean()  # -||Theta(x) - Theta(x')||^2
    closeness = lambda1 * (x - x_prime).pow(2).flatten(1).sum(dim=1).mean()  # lambda1 ||x - x'||^2
    real = torch.ones(len(z), 1, device=z.device)
    realism = (
        lambda2
        * (  # L_realism: D should take x and x' for real images of their label
            F.binary_cross_entropy_with_logits(D(x, labels), real)
            + F.binary_cross_entropy_with_logits(D(x_prime, labels), real)
        )
        / 2
    )
    return GeneratorLoss(prediction_gap + closeness + realism, prediction_gap, closeness, realism)


@dataclass
class AuditGan:
    """G, D and their Adam optimizers (kept together so a warm start continues all four)."""

    G: FairnessGenerator
    D: Discriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer

    @classmethod
    def create(
        cls,
        latent_dim: int,
        num_classes: int,
        img_shape: tuple[int, int, int],
        delta_scale: float,
        lr: float,
        device: torch.device,
        seed: int,
    ) -> AuditGan:
        """A fresh G and D (initialised from `seed`) with Adam(lr, betas=(0.5, 0.999)) as the notebook. On a GPU
        both run channels-last with fused Adam (one kernel per step instead of one per tensor)."""
        torch.manual_seed(seed)
        G = FairnessGenerator(latent_dim, num_classes, img_shape, delta_scale).to(device)
        D = Discriminator(num_classes, img_shape).to(device)
        fused = True if device.type == "cuda" else None
        if device.type == "cuda":
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        return cls(
            G,
            D,
            torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999), fused=fused),
            torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999), fused=fused),
        )

    def state_dict(self) -> dict[str, dict]:
        """A snapshot of G, D and both optimizers' states (what a warm start carries to the next round): copied,
        since an optimizer's state_dict shares its tensors, which later steps update in place."""
        return copy.deepcopy({name: getattr(self, name).state_dict() for name in ("G", "D", "opt_G", "opt_D")})

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Continue from a `state_dict` snapshot, copied into these modules' and optimizers' tensors in place, so
        a compiled step keeps its graphs (a replaced optimizer state tensor would make torch.compile recompile)."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        for optimizer, saved in ((self.opt_G, state["opt_G"]), (self.opt_D, state["opt_D"])):
            if not optimizer.state:  # never stepped: no tensors to keep, the optimizer makes them
                optimizer.load_state_dict(copy.deepcopy(saved))
                continue
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for index, values in saved["state"].items():
                for key, value in values.items():
                    optimizer.state[params[index]][key].copy_(value)

    def restart(self, seed: int) -> None:
        """Re-initialise in place to what `create` gives with `seed`: G's and D's initial weights from `seed`
        and zero Adam moments and step counts (how Adam starts), so a compiled step keeps its graphs."""
        G, lr = self.G, self.opt_G.param_groups[0]["lr"]
        device = next(G.parameters()).device
        fresh = AuditGan.create(G.latent_dim, G.num_classes, G.img_shape, G.delta_scale, lr, device, seed)
        self.G.load_state_dict(fresh.G.state_dict())
        self.D.load_state_dict(fresh.D.state_dict())
        for optimizer in (self.opt_G, self.opt_D):
            for values in optimizer.state.values():
                for value in values.values():
                    value.zero_()


@dataclass
class GanLosses:
    """One step's losses, detached (read them before the next step: a CUDA-graph replay overwrites them)."""

    generator: torch.Tensor
    discriminator: torch.Tensor


def gan_step(
    gan: AuditGan,
    classifier: nn.Module,
    z: torch.Tensor,
    gen_labels: torch.Tensor,
    real_gan: torch.Tensor,
    real_y: torch.Tensor,
    batch: torch.Tensor,
    *,
    lambda1: float,
    lambda2: float,
    space: PixelSpace,
    scaler: torch.amp.GradScaler,
) -> GanLosses:
    """One G update on L_G, then one D update on (BCE(D(real), 1) + (BCE(D(x), 0) + BCE(D(x'), 0)) / 2) / 2, for
    the noise z, labels and real images real_gan[batch] (GAN space). Plain torch, so `torch.compile` can take it
    whole (see `compiled_gan_step`)."""
    device, n = z.device, len(z)
    G, D = gan.G, gan.D
    gan.opt_G.zero_grad(set_to_none=True)
    D.requires_grad_(False)  # the G step needs dL_G/dx through D, not D's weight gradients
    with autocast(device):
        g_loss = generator_loss(G, D, classifier, z, gen_labels, lambda1, lambda2, space).total
    scaler.scale(g_loss).backward()
    scaler.step(gan.opt_G)
    D.requires_grad_(True)

    gan.opt_D.zero_grad(set_to_none=True)
    with autocast(device):
        with torch.no_grad():
            x, x_prime = G(z, gen_labels)
        real_t = torch.ones(n, 1, device=device)
        fake_t = torch.zeros(n, 1, device=device)
        d_real = F.binary_cross_entropy_with_logits(D(real_gan[batch], real_y[batch]), real_t)
        d_fake = (
            F.binary_cross_entropy_with_logits(D(x, gen_labels), fake_t)
            + F.binary_cross_entropy_with_logits(D(x_prime, gen_labels), fake_t)
        ) / 2
        d_loss = (d_real + d_fake) / 2
    scaler.scale(d_loss).backward()
    scaler.step(gan.opt_D)
    scaler.update()
    return GanLosses(g_loss.detach(), d_loss.detach())


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot build the GAN step on `device` here, or None when it can: inductor needs triton
    on a GPU and a C++ compiler (`$CXX`, else g++ / clang++ on macOS) on a CPU."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} here"
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    return None if shutil.which(compiler) else f"no C++ compiler {compiler!r} on PATH (set CXX)"


@functools.cache
def compiled_gan_step(device_type: str) -> Callable[..., GanLosses]:
    """`gan_step` through torch.compile: one static-shape graph per batch size, CUDA graphs on a GPU
    (mode reduce-overhead: no per-kernel launch cost). Guards hold while the same `AuditGan` (kept and
    re-initialised in place with `restart` / `load_state_dict`) and classifier are passed each round."""
    return torch.compile(gan_step, mode="reduce-overhead" if device_type == "cuda" else None, dynamic=False)


def train_fairness_gan(
    gan: AuditGan,
    classifier: nn.Module,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    *,
    epochs: int,
    lambda1: float,
    lambda2: float,
    batch_size: int,
    space: PixelSpace,
    seed: int,
    compiled: bool = False,
) -> None:
    """Phase 2: alternate G and D steps (`gan_step`) over the audit split (real_x in classifier space) for
    `epochs` epochs.

    The classifier is frozen for the duration; G learns where it treats near-identical inputs differently.
    Noise, labels and batch order are drawn on the device from a generator seeded with `seed` (no per-step
    host work; on CPU the same draws as a CPU generator). `compiled` runs each step through
    `compiled_gan_step`, or eagerly with a warning where `compile_unavailable` says it cannot be built.
    """
    device = real_x.device
    step: Callable[..., GanLosses] = gan_step
    if compiled:
        reason = compile_unavailable(device)
        if reason is None:
            step = compiled_gan_step(device.type)
        else:
            warnings.warn(f"audit.gan_step=compiled: {reason}; the GAN steps run eagerly", RuntimeWarning, stacklevel=2)
    freeze(classifier)
    space = space.on(device)
    real_gan = space.to_gan(real_x)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    scaler = grad_scaler(device)
    gan.G.train()
    gan.D.train()
    for _ in range(epochs):
        for batch in minibatches(len(real_y), batch_size, generator, device):  # a last single image joins
            n = len(batch)
            z = torch.randn(n, gan.G.latent_dim, generator=generator, device=device)
            gen_labels = torch.randint(0, gan.G.num_classes, (n,), generator=generator, device=device)
            if step is not gan_step and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
            step(
                gan,
                classifier,
                z,
                gen_labels,
                real_gan,
                real_y,
                batch,
                lambda1=lambda1,
                lambda2=lambda2,
                space=space,
                scaler=scaler,
            )


def pair_bias(logits: torch.Tensor, logits_prime: torch.Tensor, score: str = "logits") -> torch.Tensor:
    """The summed bias of a batch of pairs from their logits Theta(x), Theta(x'), as a float64 scalar:
    sum |Theta(x) - Theta(x')|_1 for `logits` (the specification), the number of pairs whose predicted class
    differs for `decisions`."""
    if score == "logits":
        return (logits.float() - logits_prime.float()).abs().sum(dtype=torch.float64)
    if score == "decisions":
        return (logits.argmax(1) != logits_prime.argmax(1)).sum().double()
    raise ValueError(f"audit.score: unknown value {score!r} (choose from {', '.join(BIAS_SCORES)})")


@torch.no_grad()
def generate_probes(
    G: FairnessGenerator, n: int, space: PixelSpace, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe set P: n counterfactual pairs (x, x') with random labels, in the classifier's input space."""
    G.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, G.latent_dim, generator=generator, device=device)
    labels = torch.randint(0, G.num_classes, (n,), generator=generator, device=device)
    x, x_prime = G(z, labels)
    space = space.on(device)
    return space.to_classifier(x).float(), space.to_classifier(x_prime).float()


class _ConvLeafTracer(fx.Tracer):
    """torch.fx's tracer, with every Conv2d (rayfed's shortcut subclasses too) kept as one module call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, module_qualified_name)


class FoldedEvaluator:
    """An eval-only twin of a classifier for scoring many weight sets fast, without copying the model.

    Built once per architecture: the model is traced with torch.fx, every BatchNorm that directly follows a
    convolution is folded into it (W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta),
    and the result runs channels-last. `logits(state, x)` evaluates any state dict of the original model
    through this one template with `functional_call`. On this project's CPUs this is measured ~2x faster
    per model than the plain module and 2.5x faster than `vmap` over stacked models (see BENCHMARKS.md).
    """

    def __init__(self, model: nn.Module):
        model = copy.deepcopy(model).eval()
        traced = fx.GraphModule(model, _ConvLeafTracer().trace(model))
        modules = dict(traced.named_modules())
        self.folds: list[tuple[str, str, float]] = []
        for node in list(traced.graph.nodes):
            source = node.args[0] if node.args else None
            if (
                node.op == "call_module"
                and isinstance(modules.get(node.target), nn.BatchNorm2d)
                and isinstance(source, fx.Node)
                and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d)
                and len(source.users) == 1
            ):
                conv = modules[source.target]
                if conv.bias is None:  # the folded conv needs a bias slot for b'
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                self.folds.append((source.target, node.target, modules[node.target].eps))
                node.replace_all_uses_with(source)
                traced.graph.erase_node(node)
        # Keep activations channels-last: on a 1-channel input the first convolution's output would be NCHW
        # (its strides are ambiguous), and NCHW max-pooling then cost as much as a convolution when profiled.
        for node in list(traced.graph.nodes):
            if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d):
                with traced.graph.inserting_after(node):
                    channels_last = traced.graph.call_method(
                        "contiguous", (node,), {"memory_format": torch.channels_last}
                    )
                node.replace_all_uses_with(
                    channels_last, delete_user_cb=lambda user, new=channels_last: user is not new
                )
        traced.delete_all_unused_submodules()
        traced.recompile()
        self.module = traced.to(memory_format=torch.channels_last)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def fold(self, state: StateDict) -> StateDict:
        """The template's weights for `state` (a state dict of the original model)."""
        out = dict(state)
        for conv, bn, eps in self.folds:
            scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + eps)
            weight = state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1)
            out[f"{conv}.weight"] = weight.contiguous(memory_format=torch.channels_last)
            bias = state.get(f"{conv}.bias", 0.0)
            out[f"{conv}.bias"] = (bias - state[f"{bn}.running_mean"]) * scale + state[f"{bn}.bias"]
            for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out.pop(f"{bn}.{suffix}", None)
        return out

    @torch.no_grad()
    def bias(
        self, state: StateDict, x: torch.Tensor, x_prime: torch.Tensor, chunk: int = 512, score: str = "logits"
    ) -> float:
        """B = (1/|P|) sum_P |Theta(x) - Theta(x')|_1 for the model with weights `state` (or the share of pairs
        whose predicted class differs, as `score` says: `pair_bias`)."""
        weights = self.fold(state)
        total = torch.zeros((), dtype=torch.float64, device=x.device)  # summed on the device: one sync per model
        with autocast(x.device):
            for start in range(0, len(x), chunk):
                pair = torch.cat([x[start : start + chunk], x_prime[start : start + chunk]])
                logits = functional_call(self.module, weights, (pair.contiguous(memory_format=torch.channels_last),))
                half = len(logits) // 2
                total += pair_bias(logits[:half], logits[half:], score)
        return float(total) / len(x)


@torch.no_grad()
def compute_bias(
    model: nn.Module, x: torch.Tensor, x_prime: torch.Tensor, chunk: int = 512, score: str = "logits"
) -> float:
    """B = (1/|P|) sum_P |Theta(x) - Theta(x')|_1 for one model, evaluated directly (the reference; `score`
    as in `pair_bias`)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with autocast(x.device):
        for start in range(0, len(x), chunk):
            total += pair_bias(model(x[start : start + chunk]), model(x_prime[start : start + chunk]), score)
    return float(total) / len(x)


@torch.no_grad()
def hypothetical_biases(
    evaluator: FoldedEvaluator,
    global_state: StateDict,
    updates: Sequence[StateDict],
    x: torch.Tensor,
    x_prime: torch.Tensor,
    chunk: int = 512,
    score: str = "logits",
) -> tuple[float, list[float]]:
    """B_base for Theta_old and B_i for every Theta_test_i = Theta_old + dw_i, through one folded template:
    no model is deep-copied or loaded; each weight set is swapped in with `functional_call`. `score`: what B
    counts (`pair_bias`)."""
    base = evaluator.bias(global_state, x, x_prime, chunk, score)
    return base, [evaluator.bias(apply_update(global_state, u), x, x_prime, chunk, score) for u in updates]


__all__ = [
    "AuditGan",
    "GanLosses",
    "GeneratorLoss",
    "PixelSpace",
    "FoldedEvaluator",
    "compile_unavailable",
    "compiled_gan_step",
    "compute_bias",
    "freeze",
    "gan_step",
    "generate_probes",
    "generator_loss",
    "hypothetical_biases",
    "pair_bias",
    "train_fairness_gan",
]
