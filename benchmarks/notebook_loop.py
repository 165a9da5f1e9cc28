"""The Fed-AuditGAN notebook's round (`run_strict_fed_audit_gan`, `train_fairness_gan`, `compute_bias`) and the
SISA notebook's `sisa_training`, ported to plain single-process torch as the baseline of the round-time benchmarks.

The port keeps the notebook's structure and cost: a loop over clients, each training a `copy.deepcopy` of the
global model from a `DataLoader(Subset(TensorDataset))` with the configured batch size and shuffling; a fresh G
and D per round trained for `gan_epochs` over a DataLoader of the audit images with the notebook's loop body
(G recomputed for the D step, `x.detach()`); per-model deep copies scored by `compute_bias`; state-dict
aggregation; the notebook's plain layers (nearest Upsample + full 3x3 convolutions: `use_reference_ops`, where
rayfed computes the same functions with `rayfed.models.layers`' shortcuts). It runs on the same model, data,
partition and hyperparameters as rayfed (built from the same Config and `build_federation`).

Departures from the notebook's code, all on purpose:
- the specification's fixes that change results, applied as in rayfed so that both compute the same thing:
  the generator's first term reaches G through the frozen classifier (defect 1; the classifier's parameters
  are frozen while G trains); the GAN trains on the server's held-out audit split (defect 2); images are mapped
  from GAN space [-1, 1] into the classifier's input space before the classifier sees them (defect 3); integer
  buffers are aggregated in float64 and rounded (defect 5); the norms of L_G are per-sample squared norms
  (sum over classes / pixels, batch mean), the specification's ||.||^2, as in `rayfed.fl.gan_audit.generator_loss`;
- seeds: each loader shuffles with a torch.Generator seeded from (seed, round, client), the GAN's z and labels
  and the probes are drawn from seeded generators and moved to the device (as rayfed does), so that on CPU
  the port reproduces rayfed's numbers and `tests/test_benchmarks.py` can compare them;
- a trailing minibatch of one image joins the one before it, and one under an eighth of the batch size shares
  the last two batches evenly with it (rayfed's guards, `rayfed.training.minibatches`: BatchNorm cannot train
  on one sample once the feature map is 1x1, and a few samples skew its running statistics); the clients' and
  SISA's training both;
- augmentation (when the dataset has it) is rayfed's crop + flip on tensors, applied per sample in the
  dataset (cheaper than the notebook's PIL transforms, so the baseline is, if anything, flattered).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from rayfed.config import Config
from rayfed.data.datasets import augment_batch
from rayfed.fl.setup import Federation, initial_model_state, select_clients
from rayfed.models import Discriminator, FairnessGenerator, build_classifier
from rayfed.models.layers import use_reference_ops
from rayfed.seeds import Stream, stream_seed
from rayfed.training import classifier_smallest_batch, steps_per_epoch

PHASES = ("local training", "GAN training", "probe generation", "scoring", "aggregation", "evaluation")


# --------------------------------------------------------------------------------------------- helpers


class PhaseTimer:
    """Seconds per phase (with a CUDA sync at each boundary when `sync` is set, so GPU work is attributed)."""

    def __init__(self, device: torch.device, sync: bool = True):
        self.device, self.sync = torch.device(device), sync
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start


class AugmentedTensorDataset(Dataset):
    """TensorDataset whose images go through the training transform one sample at a time, as torchvision's
    RandomCrop + RandomHorizontalFlip do in the notebook's TRAIN_DATA (rayfed's crop + flip on tensors)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: torch.Tensor | None, seed: int):
        self.x, self.y, self.pad = x, y, pad
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.pad is not None:
            x = augment_batch(x[None], self.pad, self.generator)[0]
        return x, self.y[i]


class ShuffledBatches(Sampler[list[int]]):
    """shuffle=True + batch_size as a batch sampler: torch.randperm(n, generator) (what RandomSampler draws),
    cut into batches; a trailing batch of one is kept (`single="keep"`), dropped (`"drop"`) or joins the one
    before (`"merge"`, which also shares the last two batches evenly where the last has fewer than `smallest`),
    as in `rayfed.training.minibatches`."""

    def __init__(
        self, n: int, batch_size: int, generator: torch.Generator, single: str = "merge", smallest: int = 2
    ) -> None:
        self.n, self.batch_size, self.generator, self.single = n, batch_size, generator, single
        self.smallest = smallest if single == "merge" else 2

    def _batches(self) -> list[list[int]]:
        batches = [b.tolist() for b in torch.randperm(self.n, generator=self.generator).split(self.batch_size)]
        tail = batches[-2] + batches[-1] if len(batches) > 1 else []
        if self.single == "merge" and len(batches[-1]) == 1 and tail:
            batches[-2:] = [tail]
        elif self.single == "merge" and len(batches[-1]) < self.smallest and tail:
            half = (len(tail) + 1) // 2  # torch.tensor_split's halves: the first takes the odd sample
            batches[-2:] = [tail[:half], tail[half:]]
        elif self.single == "drop" and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        if self.single == "merge":
            return steps_per_epoch(self.n, self.batch_size)
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 1 or (rest == 1 and self.single == "keep") or (full == 0 and rest == 1))


def loader_kwargs(device: torch.device, workers: int | None) -> dict:
    """The notebook's: NUM_WORKERS = 4 on GPU (persistent, prefetch 4, pinned memory), 0 on CPU."""
    workers = (4 if device.type == "cuda" else 0) if workers is None else workers
    kwargs = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "generator": torch.Generator(),
    }  # the loader's own base-seed draw stays off the global RNG
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return kwargs


def amp(device: torch.device):
    return torch.amp.autocast(device_type=device.type, enabled=device.type == "cuda")


# -------------------------------------------------------------------------------------- Fed-AuditGAN


class NotebookFedAuditGan:
    """The notebook's globals (TRAIN_DATA, CLIENT_LOADERS, VAL_LOADER, TEST_LOADER, CLIENT_EVAL_LOADERS) and
    one round of `run_strict_fed_audit_gan` (or `run_fedavg`), built from a rayfed Config and Federation."""

    def __init__(
        self, config: Config, federation: Federation, device: str | torch.device = "cpu", workers: int | None = None
    ):
        self.config, self.federation = config, federation
        self.DEVICE = torch.device(device)
        data, split, a = federation.data, federation.split, config.audit
        self.IMG_SHAPE, self.NUM_CLASSES = data.shape, data.num_classes
        self.N_CLIENTS = config.data.num_clients
        self.CLIENT_IDX = [np.asarray(idx) for idx in split.clients]
        pad = federation.augment_pad
        kwargs = loader_kwargs(self.DEVICE, workers)
        self.TRAIN_DATA = AugmentedTensorDataset(data.train_x, data.train_y, pad, config.seed)
        self.TEST_DATA = TensorDataset(data.test_x, data.test_y)
        # Defect 2: the GAN's images are the server's audit split, in GAN space [-1, 1] (transform_gan).
        self.GAN_TRAIN_DATA = TensorDataset(
            federation.space.to_gan(data.train_x[split.audit]), data.train_y[split.audit]
        )
        self.client_generators = [torch.Generator() for _ in range(self.N_CLIENTS)]
        self.CLIENT_LOADERS = [
            DataLoader(
                Subset(self.TRAIN_DATA, self.CLIENT_IDX[cid]),
                batch_sampler=ShuffledBatches(
                    len(self.CLIENT_IDX[cid]),
                    config.data.batch_size,
                    self.client_generators[cid],
                    smallest=classifier_smallest_batch(config.data.batch_size),
                ),
                **kwargs,
            )
            for cid in range(self.N_CLIENTS)
        ]
        self.CLIENT_EVAL_LOADERS = [
            DataLoader(
                Subset(self.TRAIN_DATA, self.CLIENT_IDX[cid]),
                batch_size=config.data.eval_batch_size,
                shuffle=False,
                **kwargs,
            )
            for cid in range(self.N_CLIENTS)
        ]
        self.TEST_LOADER = DataLoader(self.TEST_DATA, batch_size=config.data.eval_batch_size, shuffle=False, **kwargs)
        self.val_generator = torch.Generator()
        self.VAL_LOADER = DataLoader(
            self.GAN_TRAIN_DATA,
            batch_sampler=ShuffledBatches(
                len(self.GAN_TRAIN_DATA), a.gan_batch_size, self.val_generator, single="keep"
            ),
            **kwargs,
        )
        self.global_model = use_reference_ops(build_classifier(config.model.name, self.IMG_SHAPE, self.NUM_CLASSES)).to(
            self.DEVICE
        )
        self.global_model.load_state_dict(initial_model_state(config, federation, config.seed))
        self.scaler = torch.amp.GradScaler(device=self.DEVICE.type, enabled=self.DEVICE.type == "cuda")
        space = federation.space
        self.mean = torch.tensor(space.mean, device=self.DEVICE).view(1, -1, 1, 1)
        self.std = torch.tensor(space.std, device=self.DEVICE).view(1, -1, 1, 1)

    def to_classifier(self, x_gan: torch.Tensor) -> torch.Tensor:
        """Defect 3: GAN space [-1, 1] -> [0, 1] pixels -> the classifier's (pixel - mean) / std."""
        return ((x_gan + 1) / 2 - self.mean) / self.std

    # ---- Phase 1

    def local_training(self, rnd: int, cid: int) -> dict[str, torch.Tensor]:
        c, DEVICE = self.config, self.DEVICE
        seed = stream_seed(c.seed, Stream.CLIENT_TRAINING, rnd, cid)
        self.client_generators[cid].manual_seed(seed)  # minibatch order (the notebook: the global RNG)
        torch.manual_seed(seed)  # dropout
        local = copy.deepcopy(self.global_model).to(DEVICE)
        before = {k: v.clone() for k, v in self.global_model.state_dict().items()}
        opt = optim.SGD(local.parameters(), lr=c.fl.lr, momentum=c.fl.momentum, weight_decay=c.fl.weight_decay)
        local.train()
        for _ in range(c.fl.local_epochs):
            for d, t in self.CLIENT_LOADERS[cid]:
                d, t = d.to(DEVICE, non_blocking=True), t.to(DEVICE, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with amp(DEVICE):
                    loss = F.cross_entropy(local(d), t)
                self.scaler.scale(loss).backward()
                self.scaler.step(opt)
                self.scaler.update()
        after = local.state_dict()
        update = {k: after[k] - before[k] for k in before}
        del local
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        return update

    # ---- Phase 2

    def train_fairness_gan(
        self,
        G: nn.Module,
        D: nn.Module,
        model: nn.Module,
        loader: DataLoader,
        epochs: int,
        lambda1: float,
        lambda2: float,
        seed: int,
    ) -> tuple[nn.Module, nn.Module]:
        DEVICE, a = self.DEVICE, self.config.audit
        model.eval()
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:  # defect 1: the classifier is frozen, its inputs stay differentiable
            p.requires_grad_(False)
        opt_G = optim.Adam(G.parameters(), lr=a.gan_lr, betas=(0.5, 0.999))
        opt_D = optim.Adam(D.parameters(), lr=a.gan_lr, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        scaler = torch.amp.GradScaler(device=DEVICE.type, enabled=DEVICE.type == "cuda")
        latent_dim, num_classes = G.latent_dim, G.num_classes
        generator = self.val_generator.manual_seed(seed)  # VAL_LOADER's shuffle, z and labels
        torch.manual_seed(seed)
        G.train()
        D.train()
        for _epoch in range(epochs):
            for imgs, labels in loader:
                batch_size = imgs.size(0)
                real_t = torch.ones(batch_size, 1, device=DEVICE)
                fake_t = torch.zeros(batch_size, 1, device=DEVICE)
                imgs = imgs.to(DEVICE, non_blocking=True)
                labels = labels.to(DEVICE, non_blocking=True)
                z = torch.randn(batch_size, latent_dim, generator=generator).to(DEVICE)
                gen_labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(DEVICE)

                # Generator: L_G = -||Theta(x)-Theta(x')||^2 + lambda1*||x-x'||^2 + lambda2*L_realism
                opt_G.zero_grad(set_to_none=True)
                with amp(DEVICE):
                    x, x_prime = G(z, gen_labels)
                    pred_x, pred_xp = model(self.to_classifier(x)), model(self.to_classifier(x_prime))  # no no_grad
                    pred_diff = -((pred_x - pred_xp) ** 2).sum(dim=1).mean()
                    feature_diff = lambda1 * ((x - x_prime) ** 2).flatten(1).sum(dim=1).mean()
                    gan_loss = lambda2 * (bce(D(x, gen_labels), real_t) + bce(D(x_prime, gen_labels), real_t)) / 2
                    g_loss = pred_diff + feature_diff + gan_loss
                scaler.scale(g_loss).backward()
                scaler.step(opt_G)

                # Discriminator
                opt_D.zero_grad(set_to_none=True)
                with amp(DEVICE):
                    x, x_prime = G(z, gen_labels)
                    d_real = bce(D(imgs, labels), real_t)
                    d_fake = (bce(D(x.detach(), gen_labels), fake_t) + bce(D(x_prime.detach(), gen_labels), fake_t)) / 2
                    d_loss = (d_real + d_fake) / 2
                scaler.scale(d_loss).backward()
                scaler.step(opt_D)
                scaler.update()
        for p in frozen:
            p.requires_grad_(True)
        return G, D

    def new_gan(self, seed: int) -> tuple[nn.Module, nn.Module]:
        a = self.config.audit
        torch.manual_seed(seed)
        G = use_reference_ops(FairnessGenerator(a.latent_dim, self.NUM_CLASSES, self.IMG_SHAPE, a.delta_scale))
        D = use_reference_ops(Discriminator(self.NUM_CLASSES, self.IMG_SHAPE))
        G, D = G.to(self.DEVICE), D.to(self.DEVICE)
        return G, D

    @torch.no_grad()
    def generate_probes(self, G: nn.Module, n_probes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        G.eval()
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n_probes, G.latent_dim, generator=generator).to(self.DEVICE)
        lbls = torch.randint(0, self.NUM_CLASSES, (n_probes,), generator=generator).to(self.DEVICE)
        with amp(self.DEVICE):
            x_p, xp_p = G(z, lbls)
        return self.to_classifier(x_p).float(), self.to_classifier(xp_p).float()  # defect 3

    # ---- Phase 3

    @staticmethod
    @torch.no_grad()
    def compute_bias(model: nn.Module, x: torch.Tensor, x_prime: torch.Tensor) -> float:
        """B = (1/|P|) * sum |Theta(x) - Theta(x')| (the notebook's: all probes in one forward)."""
        model.eval()
        with amp(x.device):
            pred_x = model(x)
            pred_xp = model(x_prime)
        return torch.abs(pred_x.float() - pred_xp.float()).sum(dim=1).mean().item()

    def score(
        self, updates: list[dict], x_p: torch.Tensor, xp_p: torch.Tensor
    ) -> tuple[float, list[float], list[float]]:
        B_base = self.compute_bias(self.global_model, x_p, xp_p)
        B_list, S_list = [], []
        for upd in updates:
            hyp = copy.deepcopy(self.global_model).to(self.DEVICE)  # Theta_test_i = Theta_old + delta_w_i
            sd = hyp.state_dict()
            for k in sd:
                if k in upd:
                    sd[k] = sd[k] + upd[k]
            hyp.load_state_dict(sd)
            B_i = self.compute_bias(hyp, x_p, xp_p)
            B_list.append(B_i)
            S_list.append(B_base - B_i)  # S_i = B_base - B_i
            del hyp
        return B_base, B_list, S_list

    # ---- Phase 4

    @staticmethod
    def compute_softmax_weights(S_list: list[float], gamma: float) -> list[float]:
        return F.softmax(gamma * torch.tensor(S_list, dtype=torch.float32), dim=0).tolist()

    def aggregate(self, updates: list[dict], alphas: list[float]) -> None:
        """Theta_new = Theta_old + sum alpha_i * delta_w_i; integer buffers summed in float64 and rounded
        (defect 5; the notebook adds them as floats and load_state_dict truncates)."""
        sd = self.global_model.state_dict()
        for k in sd:
            if sd[k].is_floating_point():
                sd[k] = sd[k] + sum(alphas[i] * updates[i][k] for i in range(len(updates)))
            else:
                total = sum(float(alphas[i]) * updates[i][k].to(torch.float64) for i in range(len(updates)))
                sd[k] = sd[k] + torch.round(total).to(sd[k].dtype)
        self.global_model.load_state_dict(sd)

    # ---- evaluation

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> float:
        model.eval()
        correct, total = 0, 0
        with amp(self.DEVICE):
            for d, t in loader:
                d, t = d.to(self.DEVICE, non_blocking=True), t.to(self.DEVICE, non_blocking=True)
                correct += (model(d).argmax(1) == t).sum().item()
                total += len(t)
        return 100 * correct / total if total > 0 else 0

    def evaluate_per_client(self, model: nn.Module) -> list[float]:
        return [self.evaluate(model, loader) for loader in self.CLIENT_EVAL_LOADERS]

    # ---- one round

    def round(self, rnd: int, method: str = "fedauditgan", gamma: float = 2.0, timer: PhaseTimer | None = None) -> dict:
        """One round of run_strict_fed_audit_gan (or run_fedavg); returns what the notebook records."""
        c, a = self.config, self.config.audit
        timer = timer or PhaseTimer(self.DEVICE, sync=False)
        selected = select_clients(self.N_CLIENTS, c.fl.clients_per_round, c.fl.client_fraction, c.seed, rnd)
        out: dict = {"clients": selected}
        # ===== PHASE 1: Local Training =====
        with timer.phase("local training"):
            updates = [self.local_training(rnd, cid) for cid in selected]
        if method == "fedauditgan":
            # ===== PHASE 2: Server-Side GAN Auditing =====
            with timer.phase("GAN training"):
                G, D = self.new_gan(stream_seed(c.seed, Stream.GAN_INIT, rnd))
                G, D = self.train_fairness_gan(
                    G,
                    D,
                    self.global_model,
                    self.VAL_LOADER,
                    a.gan_epochs,
                    a.lambda1,
                    a.lambda2,
                    stream_seed(c.seed, Stream.GAN_TRAINING, rnd),
                )
            with timer.phase("probe generation"):
                x_p, xp_p = self.generate_probes(G, a.n_probes, stream_seed(c.seed, Stream.PROBES, rnd))
            # ===== PHASE 3: Fairness Contribution Scoring =====
            with timer.phase("scoring"):
                B_base, B_list, S_list = self.score(updates, x_p, xp_p)
                del G, D, x_p, xp_p
                if self.DEVICE.type == "cuda":
                    torch.cuda.empty_cache()
            alphas = self.compute_softmax_weights(S_list, gamma)
            out.update(bias=B_base, B_list=B_list, S_list=S_list)
        else:
            sizes = [len(self.CLIENT_IDX[cid]) for cid in selected]
            alphas = [s / sum(sizes) for s in sizes]
        # ===== PHASE 4: Rewards & Aggregation =====
        with timer.phase("aggregation"):
            self.aggregate(updates, alphas)
        with timer.phase("evaluation"):
            out["accuracy"] = self.evaluate(self.global_model, self.TEST_LOADER)
            out["client_accs"] = self.evaluate_per_client(self.global_model)
        out.update(alphas=alphas, updates=updates)
        return out


# ----------------------------------------------------------------------------------------------- SISA


def train_model(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: optim.Optimizer,
    num_epochs: int,
    device: torch.device,
) -> nn.Module:
    """The SISA notebook's train_model (its per-epoch print left out; its per-step loss.item() kept)."""
    for _epoch in range(num_epochs):
        model.train()
        running_loss = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            with amp(device):
                outputs = model(inputs)
                loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
    return model


def sisa_training(
    trainset: Dataset,
    slices: list[list[np.ndarray]],
    epochs: list[int],
    config: Config,
    device: torch.device,
    workers: int = 0,
) -> list[nn.Module]:
    """The notebook's sequential sisa_training: for each shard a fresh model, then for r = 0..R-1 a DataLoader
    over the union of slices 0..r trained `epochs[r]` epochs (the notebook: num_epochs every stage, i.e. the
    `union` schedule). `slices[s][r]` are rayfed's layout (same points per shard and slice); each model starts
    from rayfed's per-shard seed. No checkpoints are kept (the notebook keeps none; rayfed writes one per slice).
    """
    from rayfed.sisa.train import stage_seed

    s_cfg, shape = config.sisa, trainset.x.shape[1:]
    num_classes = int(trainset.y.max()) + 1
    all_models = []
    for s, shard_slices in enumerate(slices):
        torch.manual_seed(stream_seed(config.seed, Stream.SISA_INIT, s))
        model = use_reference_ops(build_classifier(config.model.name, tuple(shape), num_classes)).to(device)
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.SGD(model.parameters(), lr=s_cfg.lr, momentum=s_cfg.momentum)
        for r in range(len(shard_slices)):
            union_indices = np.concatenate(shard_slices[: r + 1])
            generator = torch.Generator().manual_seed(stage_seed(config.seed, s, r))
            loader = DataLoader(
                Subset(trainset, union_indices),
                batch_sampler=ShuffledBatches(
                    len(union_indices),
                    s_cfg.batch_size,
                    generator,
                    smallest=classifier_smallest_batch(s_cfg.batch_size),
                ),
                **loader_kwargs(device, workers),
            )
            model = train_model(model, loader, criterion, optimizer, epochs[r], device)
        all_models.append(model)
    return all_models
