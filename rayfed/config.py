"""Every hyperparameter of rayfed, one dataclass per config section, one docstring per field.

A config is built from the defaults below, then a YAML file (`--config`), then `--set dotted.key=value`
overrides (the value parsed as YAML). Unknown keys, wrong types and impossible values raise `UserError`
naming the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import yaml

from rayfed.errors import UserError

if TYPE_CHECKING:
    from rayfed.fl.strategies import Strategy

DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist")
PARTITIONS = ("extreme", "dirichlet", "iid", "shards")
MODELS = ("cnn", "resnet18")
SISA_AGGREGATIONS = ("mean", "vote")
SISA_SCHEDULES = ("union", "distributed")
BIAS_SCORES = ("logits", "decisions")
BACKDOOR_MODES = ("badnets", "clean_label")
UNLEARN_BASELINES = ("finetune", "neggrad", "scrub", "random_label")
TRIGGER_POSITIONS = ("bottom_right", "random")
WANDB_MODES = ("disabled", "offline", "online")
CLIENT_ACCURACY_BASES = ("test", "train")
CORRECTIONS = ("holm", "none")
FAILURE_POLICIES = ("retry", "drop")
MAX_SEED = 2**32 - 1
"""The largest seed numpy's RandomState (the partitions, the audit split) accepts; seeds run from 0 to it."""
EACH_SEED = "each"
"""data.partition_seed's word for a federation drawn per seed."""
CLIENT_ACTORS_PER_GPU = 4
"""Client actors per GPU under `resources.clients_per_actor: auto`. Measured on one H100 (bench_round.py
--preset notebook, 20 clients, rayfed strict): 4 actors of 5 clients 8.4 s a round, 20 actors of one 9.7 s;
and every actor process holds a CUDA context of its own, which a 1,000-client run cannot afford per client."""


@dataclass
class DataConfig:
    dataset: str = "digits"
    """`digits` (scikit-learn's bundled 8x8 digits, no download), `cifar10`, `mnist` or `fashion_mnist`."""
    root: str = "data"
    """Where torchvision datasets live (downloaded there when `download` is true)."""
    download: bool = True
    """Let torchvision download a dataset that is not under `root`."""
    num_clients: int = 10
    """Number of federated clients K."""
    partition: str = "extreme"
    """`extreme` (the notebook's 1..classes_per_client classes per client, windows may overlap),
    `dirichlet`, `iid` or `shards` (disjoint)."""
    classes_per_client: int = 2
    """`extreme`: each client draws 1..classes_per_client classes."""
    dirichlet_alpha: float = 0.5
    """`dirichlet`: concentration of the per-class client proportions (smaller = more skewed)."""
    shards_per_client: int = 2
    """`shards`: label-sorted shards per client (McMahan et al. 2017)."""
    audit_fraction: float = 0.1
    """Share of the training set held by the server for the audit GAN, disjoint from every client."""
    validation_fraction: float = 0.0
    """Share of the training set held out to choose settings on, so that the test figures stay unseen by the
    choice. fl: carved before the clients are dealt theirs (apart from the audit split), each client a
    validation subset with its label mix (sized as client_test_size); rounds.parquet gains `val_*`. sisa: drawn
    per seed and held out of every shard (forget indices then count the remaining images); validation.parquet
    and the `val_*accuracy` figures. A sweep's `val_*` metric needs it. 0 = none (every draw as without it)."""
    client_test_size: int | str = "max"
    """Held-out test samples per client, drawn from the test set with the client's label mix: a count, or
    `max` = the largest subset with that mix the test set holds without repeating an image."""
    partition_seed: int | str | None = None
    """Seed of the federation (`rayfed fl`; `rayfed sisa` draws its validation split from `seed`): the partition,
    the audit and validation splits, the clients' test subsets; null = `seed`. A number or null keeps one
    federation for every seed of a run, so an interval over `seeds` measures the training's randomness on that
    federation. `each`: every seed draws its own federation from itself, so the interval also covers the
    federation's draw (methods stay paired within a seed)."""
    augment: bool | None = None
    """Training-time augmentation (random crop + flip); null = the dataset's default (on for cifar10)."""
    batch_size: int = 16
    """Minibatch size of local training, at least 2 (BatchNorm needs two values a channel; the notebook uses 512
    on CIFAR-10's 450-900-image clients, 1-2 steps an epoch; 16 gives digits' 24-48-image clients 2-3)."""
    eval_batch_size: int = 1024
    """Minibatch size of evaluation."""


@dataclass
class ModelConfig:
    name: str = "cnn"
    """`cnn` (the notebook's CNN, shape-generic) or `resnet18` (torchvision, CIFAR-style stem, notebook head)."""
    pretrained: bool = False
    """`resnet18`: start from torchvision's ImageNet weights, which must already be in torch's hub cache."""


@dataclass
class FLConfig:
    rounds: int = 20
    """Federated rounds per method (the notebook: 50)."""
    local_epochs: int = 3
    """Epochs of local SGD per client and round (Phase 1)."""
    lr: float = 0.01
    """Local SGD learning rate."""
    momentum: float = 0.9
    """Local SGD momentum."""
    weight_decay: float = 1e-4
    """Local SGD weight decay."""
    methods: list[str] = field(default_factory=lambda: ["fedavg", "uniform", "fedauditgan"])
    """Methods to run, in order (`rayfed.fl.strategies`): `fedavg` (size weights), `uniform` (1/K),
    `fedauditgan` (one run per value of audit.gamma), `qffl` (q-FedAvg, one run per value of qffl.q), `term`
    (client-level tilted averaging, one run per value of term.tilt), `afl` (agnostic federated learning, one run
    per value of afl.lambda_lr)."""
    clients_per_round: int | None = None
    """Clients sampled per round: a count (1 = one client), or null for all (see also client_fraction)."""
    client_fraction: float | None = None
    """Clients sampled per round as a fraction in (0, 1] of data.num_clients; not together with
    clients_per_round."""
    on_client_failure: str = "retry"
    """A client actor that dies mid-round: `retry` (restart it, recompute) or `drop` (aggregate the others)."""
    max_retries: int = 3
    """Restarts allowed per actor under `retry`."""


@dataclass
class AuditConfig:
    gamma: float | list[float] = field(default_factory=lambda: [2.0, 8.0])
    """Inverse softmax temperature of alpha = softmax(gamma * S) (larger: sharper weights); a list runs
    fedauditgan once per value."""
    lambda1: float = 1.0
    """Weight of ||x - x'||^2 in the generator loss (keeps counterfactual pairs close)."""
    lambda2: float = 1.0
    """Weight of the realism (adversarial) term in the generator loss."""
    gan_epochs: int = 10
    """Epochs of GAN training on the audit split per round (Phase 2; the notebook uses 20)."""
    n_probes: int = 1000
    """Counterfactual pairs |P| generated for scoring (Phase 3; the notebook uses 2000)."""
    latent_dim: int = 128
    """Generator latent size."""
    gan_lr: float = 2e-4
    """Adam learning rate of G and D (betas 0.5, 0.999)."""
    gan_batch_size: int = 512
    """Minibatch size of GAN training."""
    delta_scale: float = 0.1
    """Largest per-pixel perturbation x' - x, in the GAN's [-1, 1] pixel space."""
    score: str = "logits"
    """What B counts over the probe pairs (x, x'), for B_base, every B_i and so S_i = B_base - B_i: `logits`,
    the specification's mean L1 distance |Theta(x) - Theta(x')|, which also grows and shrinks with the logits'
    scale (an update that only shrinks them scores as removing bias), or `decisions`, the share of pairs whose
    predicted class differs, which rescaling the logits leaves unchanged (what the held-out audit's flip rate
    counts). Its S_i are multiples of 1/n_probes, so pair it with `normalize_scores` or a large gamma."""
    normalize_scores: bool = False
    """Divide S_i by their standard deviation over the round's clients before the softmax, so that a gamma
    means the same in every round and run (off: the specification's softmax(gamma * S))."""
    warm_start: bool = False
    """Continue G and D from the previous round instead of training fresh ones each round."""
    gan_epochs_warm: int = 1
    """GAN epochs per round after the first when warm_start is on."""
    gan_step: str = "eager"
    """How the G and D steps run: `eager`, or `compiled`: through torch.compile, with CUDA graphs on a GPU.
    Compilation costs the first round minutes on a CPU (cached on disk for later processes); where it cannot
    build (no C++ compiler on a CPU, no triton on a GPU) the steps run eagerly with a warning."""
    score_chunk: int = 512
    """Probes per chunk of the batched scoring of the K hypothetical models (bounds memory)."""


@dataclass
class QFFLConfig:
    q: float | list[float] = field(default_factory=lambda: [1.0])
    """q-FedAvg's fairness exponent (0 = uniform averaging; larger = more weight on high-loss clients); a list
    runs qffl once per value."""
    lipschitz: float | str | None = "auto"
    """L of q-FedAvg's step (dW_k = L (w^t - w_k)): `auto` = 1 / (fl.lr * mean_k m(tau_k)), the L at which dW_k
    is client k's gradient when it holds through its tau_k local steps of momentum SGD (m: how far they move the
    weights per unit of gradient; `rayfed.fl.strategies.qffl`); null = 1 / fl.lr, the paper's choice, which is
    that L for one local step of plain SGD; or a number."""


@dataclass
class TermConfig:
    tilt: float | list[float] = field(default_factory=lambda: [1.0])
    """TERM's tilt t: client k weighs exp(t F_k) / sum_j exp(t F_j), F_k its loss at the global model (0 =
    uniform averaging; larger = more weight on high-loss clients; `rayfed.fl.strategies.term`); a list runs term
    once per value."""


@dataclass
class AFLConfig:
    lambda_lr: float | list[float] = field(default_factory=lambda: [0.03])
    """AFL's step eta for the mixture lambda over the clients, which ascends their losses each round: lambda <-
    Proj_simplex(lambda + eta (N/m) F), F the losses of the round's m clients (0 = uniform averaging throughout;
    larger = lambda moves to the high-loss clients faster, and the more so the more clients share lambda;
    `rayfed.fl.strategies.afl`); a list runs afl once per value. The default is what a sweep on digits'
    validation split chose (README, "AFL")."""


@dataclass
class SisaConfig:
    shards: int = 5
    """Number of shards S, each with its own model."""
    slices: int = 5
    """Number of slices R per shard, with a checkpoint after each."""
    epochs: int = 5
    """Epochs e (see `schedule`)."""
    schedule: str = "distributed"
    """`union`: e epochs on every union of slices 1..r (the notebook); `distributed`: the paper's,
    stage r trains int((r+1)a) - int(ra) epochs with a = 2e/(R+1), e epochs in all."""
    aggregation: list[str] = field(default_factory=lambda: ["mean", "vote"])
    """Ensemble aggregations to report: `mean` (mean softmax) and/or `vote` (majority vote)."""
    lr: float = 0.01
    """SGD learning rate of shard training."""
    momentum: float = 0.9
    """SGD momentum of shard training."""
    batch_size: int = 64
    """Minibatch size of shard training."""
    deterministic: bool = True
    """Deterministic kernels in every shard actor (cuDNN autotuning off, `cudnn.deterministic`,
    `torch.use_deterministic_algorithms(warn_only)`, CUBLAS_WORKSPACE_CONFIG): what makes unlearning equal
    retraining bit for bit on a GPU. `false` trades that for speed (CPU is deterministic either way)."""


@dataclass
class UnlearnConfig:
    forget: int | str | None = 20
    """Points to forget: a count drawn once with the seed (saved as forget.txt), or a file of indices."""
    requests: int = 1
    """Forget the points in this many requests, one after another (the forget set cut in order into near-equal
    parts); each retrains only the shards it touches, from the checkpoints the previous request left."""
    verify: bool = True
    """Train a fresh ensemble from scratch without the forgotten points and compare predictions."""
    membership_size: int | None = None
    """Points per side (member vs non-member) of the membership-inference audit; null = as many as the data
    allow (every test point as a non-member)."""
    baselines: list[str] = field(default_factory=list)
    """Approximate unlearning on one unsharded model, compared with SISA (`baselines.parquet`): any of
    `finetune` (train on the retained data), `neggrad` (NegGrad+: descent on the retained, ascent on the
    forgotten), `scrub` (SCRUB: a student of the trained model, away from it on the forgotten, with it on the
    retained) and `random_label` (train on the retained data and the forgotten points relabelled wrongly)."""
    baseline_epochs: int = 1
    """Epochs over the retained data of `finetune`, `neggrad` and `random_label` (SCRUB has `scrub_epochs`)."""
    neggrad_alpha: float = 0.9
    """NegGrad+ loss alpha L(retained batch) - (1 - alpha) L(forgotten batch), in (0, 1)."""
    scrub_epochs: int = 3
    """SCRUB's epochs, each a min-step pass over the retained data (the authors' 3; its own count: its first
    max-step meets a student equal to the teacher, where the KL's gradient is nil, so one epoch forgets little)."""
    scrub_max_epochs: int = 2
    """How many of SCRUB's epochs (the first ones) open with a max-step pass, ascent on the KL to the teacher
    over the forget set (the authors' 2); 0 leaves only the min-steps (distillation on the retained data)."""
    scrub_alpha: float = 0.001
    """SCRUB's weight alpha of the KL to the teacher in a min-step, alpha d + gamma CE (the authors' 0.001)."""
    scrub_gamma: float = 0.99
    """SCRUB's weight gamma of the cross-entropy in a min-step (the authors' 0.99)."""
    scrub_temperature: float = 4.0
    """SCRUB's distillation temperature T of d = KL(softmax(t/T) || softmax(s/T)) T^2 (the authors' 4)."""


@dataclass
class BackdoorConfig:
    enabled: bool = True
    """Run the backdoor audit: train with poison, unlearn exactly the poisoned points, measure again."""
    mode: str = "badnets"
    """`badnets` (non-target images stamped and relabelled) or `clean_label` (the notebook's)."""
    target_class: int = 0
    """Class the trigger should force."""
    poison: int | None = None
    """Poisoned training points as a count; null = `poison_fraction` of the candidates."""
    poison_fraction: float = 0.1
    """Share of the candidates poisoned when `poison` is null: the non-target images (badnets) or the
    target-class images (clean_label)."""
    trigger_size: int = 3
    """Side of the square trigger, in pixels."""
    trigger_position: str = "bottom_right"
    """`bottom_right` (BadNets convention) or `random` (the notebook's)."""
    trigger_value: float = 1.0
    """Pixel value of the trigger in [0, 1] pixel space (1 = white)."""


@dataclass
class ResourcesConfig:
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:port`, ...); null starts a local Ray unless RAY_ADDRESS is set."""
    gpus_per_client: float | str = "auto"
    """GPU fraction per client actor; `auto`: the largest fraction (at most 1) with which the client actors and
    the server all fit on the cluster's nodes at once, packed node by node (0 without GPUs). A number that
    cannot place them all is an error."""
    cpus_per_client: float | str = "auto"
    """CPU fraction per client actor; `auto`: the largest fraction (at most 1) with which the client actors and
    the server all fit on the nodes next to their GPU fractions, so every actor of a run runs at once."""
    clients_per_actor: int | str = "auto"
    """Virtual clients hosted by one client actor (1 = one actor per client). `auto`: the clients spread evenly
    over one actor per CPU (a CPU trains one client at a time anyway, and every actor process costs memory and
    idle CPU), and where the cluster has GPUs over at most CLIENT_ACTORS_PER_GPU actors per GPU (every actor
    is one more CUDA context time-slicing its GPU); never more actors than clients."""
    audit_servers: int | str = "auto"
    """Audit server actors; each trains the audit GANs of, and scores and aggregates the updates of, the seeded
    runs assigned to it. `auto`: one per audited run of a round (fedauditgan runs x seeds), at most one per GPU
    of the cluster, or one per CPU where it has no GPU (the GANs then train side by side, one thread each,
    instead of one after the other); at least one."""
    server_gpus: float | str = "auto"
    """GPU fraction of each audit server actor; `auto` = the same share as a client."""
    server_cpus: float | str = "auto"
    """CPU fraction of each audit server actor; `auto` = the same share as a client."""
    gpus_per_shard: float | str = "auto"
    """GPU fraction per SISA shard actor; `auto`: the largest fraction (at most 1) with which all the shards
    fit on the cluster's nodes at once, packed node by node. A number that cannot place them all is an error."""
    cpus_per_shard: float | str = "auto"
    """CPU fraction per SISA shard actor; `auto`: the largest fraction (at most 1) with which all the shards fit
    on the nodes next to their GPU fractions."""
    stall_timeout: float = 1800.0
    """Seconds any one wait of a federated round, or a SISA step in which no shard finishes a slice stage, may
    take before the run stops with an `error:` line naming what it waited for (exit status 3; the run
    directory stays for --resume)."""
    torch_threads: int = 1
    """torch intra-op threads per client or shard actor (keeps many actors on few cores from thrashing)."""
    server_threads: int | None = None
    """torch intra-op threads of each audit server; null = its node's cores divided by the number of audit
    servers (at least one): a lone server uses every core while the clients wait for it."""

    def actor_capacity(self, num_clients: int, cpus: float, gpus: float) -> int:
        """clients_per_actor resolved for a cluster (or trial budget) of `cpus` CPUs and `gpus` GPUs."""
        if self.clients_per_actor != "auto":
            return int(self.clients_per_actor)
        actors = max(1, int(cpus))
        if gpus > 0:
            actors = min(actors, math.ceil(CLIENT_ACTORS_PER_GPU * gpus))
        return math.ceil(num_clients / min(num_clients, actors))

    def server_count(self, audited_runs: int, cpus: float, gpus: float) -> int:
        """audit_servers resolved for `audited_runs` audited seeded runs per round on a cluster (or trial budget)
        of `cpus` CPUs and `gpus` GPUs."""
        if self.audit_servers != "auto":
            return int(self.audit_servers)
        return max(1, min(audited_runs, math.ceil(gpus) if gpus > 0 else int(cpus)))


@dataclass
class MetricsConfig:
    client_accuracy: str = "test"
    """What the fairness figures (jfi, max_min, variance, min/max/mean_accuracy, gap) are computed over:
    `test` = each client's accuracy on its held-out test subset; `train` = on its own training images (the
    notebook's figure, near 100% for clients that memorise their data)."""
    correction: str = "holm"
    """How `rayfed fl`'s verdicts test the paired differences of a summary table: `holm` = Holm-adjusted
    p-values over every figure the table tests (the chance of any false effect held at 5%); `none` = each
    figure on its own (its 95% interval excludes 0)."""
    held_out_audit: bool = True
    """After the last round, audit every method run's final model (FedAvg's too) with one auditor: a fresh
    audit GAN (the `audit.*` settings) trained against the model on the held-out test split, with the same
    seeds for every method of a seed; its learned perturbations (at most `audit.delta_scale` per pixel in
    [-1, 1]) are applied to every test image, and `audit.parquet` records the bias B over those real pairs and
    the share of images whose predicted class they change (`flip_rate`). summary.md compares the methods on
    both."""
    audit_epochs: int = 5
    """Epochs of the held-out auditor's GAN training over the test split."""
    audit_batch_size: int = 64
    """Batch size of the held-out auditor's GAN training."""


@dataclass
class TrackingConfig:
    wandb: str = "disabled"
    """Weights & Biases: `disabled`, `offline` or `online`."""
    project: str = "rayfed"
    """wandb project."""
    entity: str | None = None
    """wandb entity (user or team); null = your default."""


@dataclass
class Config:
    seed: int = 42
    """Seed of every random draw: partitions, initial weights, minibatches, GANs, forget sets."""
    seeds: int | list[int] = 1
    """Run once per seed: a count n (seeds seed, seed+1, ..., seed+n-1) or a list. `rayfed fl`: every method
    per seed, each with its own initial weights, SGD order and GANs; the federation stays unless
    data.partition_seed is `each`.
    `rayfed sisa`: one whole run per seed in `seed<k>/` (its own layout, forget set, weights, poison and
    audits), summarised over the seeds."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    qffl: QFFLConfig = field(default_factory=QFFLConfig)
    term: TermConfig = field(default_factory=TermConfig)
    afl: AFLConfig = field(default_factory=AFLConfig)
    sisa: SisaConfig = field(default_factory=SisaConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def seed_list(self) -> list[int]:
        """`seeds` as the list of run seeds."""
        return list(self.seeds) if isinstance(self.seeds, list) else [self.seed + i for i in range(self.seeds)]

    @property
    def partition_seeds(self) -> list[int]:
        """The seeds of the distinct federations the run's seeds train on (one unless data.partition_seed is
        `each`), in seed order."""
        return list(dict.fromkeys(self.partition_seed_of(seed) for seed in self.seed_list))

    def partition_seed_of(self, seed: int) -> int:
        """The seed of the federation that the run seeded `seed` trains on (data.partition_seed)."""
        if self.data.partition_seed == EACH_SEED:
            return seed
        return self.seed if self.data.partition_seed is None else self.data.partition_seed

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (what config.yaml holds)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


PLAIN_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A decimal number with an optional exponent: YAML 1.1 (PyYAML) reads `1e-3`, which has no dot, as a string."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return value checked against the annotation tp (ints are accepted where numbers are, and so are strings
    such as `1e-3` that write a plain number)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, get_args(tp)[0], key) for v in value]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and PLAIN_NUMBER.fullmatch(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _merge(obj: Any, updates: dict[str, Any], prefix: str) -> None:
    """Set fields of the dataclass obj from a nested mapping, checking names and types."""
    hints = get_type_hints(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in hints:
            raise UserError(f"unknown config key '{key}'")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{key}: expected a mapping of keys, got {value!r}")
            _merge(current, value, f"{key}.")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_override(text: str) -> tuple[str, Any]:
    """Split `dotted.key=value` and parse the value as YAML."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML ({_first_line(exc)})") from None
    return key.strip(), value


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def nest(key: str, value: Any) -> dict[str, Any]:
    """`a.b.c`, v -> {'a': {'b': {'c': v}}}."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; UserError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {_first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def build_config(mappings: list[dict[str, Any]], overrides: list[str] = ()) -> Config:
    """Defaults, then each mapping in order, then `--set` overrides; validated."""
    config = Config()
    for mapping in mappings:
        _merge(config, mapping, "")
    for text in overrides:
        key, value = parse_override(text)
        _merge(config, nest(key, value), "")
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config of a run: defaults < YAML file < `--set` overrides."""
    mappings = [read_yaml_mapping(path)] if path is not None else []
    return build_config(mappings, overrides)


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key whose value differs between two `Config.to_dict()` mappings, in their order."""
    keys = []
    for key in a:
        if isinstance(a[key], dict):
            keys += differences(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b[key]:
            keys.append(f"{prefix}{key}")
    return keys


RESUME_MAY_CHANGE = ("resources.address", "resources.stall_timeout", "tracking.")
"""Keys (a trailing dot: a whole section) a resumed run may change: where it runs, how long it waits for a
stalled step, what it logs to; every other key must be the run's own. The last two change no figure; a resumed
run on other hardware (another core count sets other thread counts, which move float sums) computes its remaining
rounds as validly but not bit for bit as the uninterrupted run would have."""


def check_resume(new: Config, saved: Config, may_change: tuple[str, ...] = ()) -> None:
    """UserError naming the first key `new` changes from `saved` that a resumed run may not change (only
    `may_change` and RESUME_MAY_CHANGE may), and the keys that may."""
    allowed = may_change + RESUME_MAY_CHANGE
    for key in differences(new.to_dict(), saved.to_dict()):
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in allowed):
            names = ", ".join(f"{k}*" if k.endswith(".") else k for k in allowed)
            raise UserError(f"--resume: {key} differs from the run's config (a resumed run may change only {names})")


def config_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the config."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


# ------------------------------------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


def _finite_number(key: str, value: float, zero_ok: bool = False) -> None:
    """Require a finite number > 0 (>= 0 with zero_ok): NaN and infinity are no setting."""
    bound = ">=" if zero_ok else ">"
    _require(
        math.isfinite(value) and (value >= 0 if zero_ok else value > 0),
        f"{key}: must be a finite number {bound} 0, got {value}",
    )


def _fraction_or_auto(key: str, value: float | str) -> None:
    if isinstance(value, str):
        _require(value == "auto", f"{key}: expected a number >= 0 or 'auto', got {value!r}")
    else:
        _finite_number(key, value, zero_ok=True)


def _seed(key: str, value: int) -> None:
    """Require a seed numpy's RandomState takes."""
    _require(0 <= value <= MAX_SEED, f"{key}: must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")


def _distinct_runs(c: Config, strategies: Iterable[type[Strategy]]) -> None:
    """Reject a swept parameter (audit.gamma, qffl.q) with two values that name the same run: runs are keyed by
    their label (`gamma=2`, the value formatted with `:g`), so two such runs would share one run's state."""
    for strategy in strategies:
        seen: dict[str, float] = {}
        for run in strategy.runs(c):
            _require(
                run.label not in seen,
                f"{strategy.parameter_key}: {seen.get(run.label)!r} and {run.value!r} both name the run "
                f"{run.label!r}; give distinct values",
            )
            seen[run.label] = run.value


def _count_or_word(key: str, value: int | str, word: str) -> None:
    """Accept an integer >= 1 or the one word `word` (e.g. 'auto', 'max') for `key`."""
    if isinstance(value, str):
        _require(value == word, f"{key}: expected an integer >= 1 or {word!r}, got {value!r}")
    else:
        _require(value >= 1, f"{key}: must be >= 1, got {value}")


def validate(c: Config) -> None:
    """Reject impossible values with a message naming the key."""
    d, fl, a, s = c.data, c.fl, c.audit, c.sisa
    _one_of("data.dataset", d.dataset, DATASETS)
    _one_of("data.partition", d.partition, PARTITIONS)
    _one_of("model.name", c.model.name, MODELS)
    _require(d.num_clients >= 1, f"data.num_clients: must be >= 1, got {d.num_clients}")
    _require(d.classes_per_client >= 1, f"data.classes_per_client: must be >= 1, got {d.classes_per_client}")
    _finite_number("data.dirichlet_alpha", d.dirichlet_alpha)
    _require(d.shards_per_client >= 1, f"data.shards_per_client: must be >= 1, got {d.shards_per_client}")
    _require(0 < d.audit_fraction < 1, f"data.audit_fraction: must be in (0, 1), got {d.audit_fraction}")
    _require(
        0 <= d.validation_fraction < 1, f"data.validation_fraction: must be in [0, 1), got {d.validation_fraction}"
    )
    _require(
        d.audit_fraction + d.validation_fraction < 1,
        f"data.validation_fraction: with data.audit_fraction {d.audit_fraction} it leaves no images for the clients",
    )
    _count_or_word("data.client_test_size", d.client_test_size, "max")
    _require(d.batch_size >= 2, f"data.batch_size: must be >= 2 (BatchNorm), got {d.batch_size}")
    _require(d.eval_batch_size >= 1, f"data.eval_batch_size: must be >= 1, got {d.eval_batch_size}")

    _require(fl.rounds >= 1, f"fl.rounds: must be >= 1, got {fl.rounds}")
    _require(fl.local_epochs >= 1, f"fl.local_epochs: must be >= 1, got {fl.local_epochs}")
    _finite_number("fl.lr", fl.lr)
    _finite_number("fl.momentum", fl.momentum, zero_ok=True)
    _finite_number("fl.weight_decay", fl.weight_decay, zero_ok=True)
    _require(len(fl.methods) >= 1, "fl.methods: needs at least one method")
    from rayfed.fl.strategies import REGISTRY  # the strategies' registry; imported here, as it imports torch

    for method in fl.methods:
        _one_of("fl.methods", method, tuple(REGISTRY))
    _require(len(set(fl.methods)) == len(fl.methods), f"fl.methods: repeated method in {fl.methods}")
    cpr = fl.clients_per_round
    if cpr is not None:
        _require(
            1 <= cpr <= d.num_clients,
            f"fl.clients_per_round: must be between 1 and data.num_clients={d.num_clients}, got {cpr}",
        )
    if fl.client_fraction is not None:
        _require(0 < fl.client_fraction <= 1, f"fl.client_fraction: must be in (0, 1], got {fl.client_fraction}")
        _require(cpr is None, "fl.client_fraction: set either it or fl.clients_per_round, not both")
    _one_of("fl.on_client_failure", fl.on_client_failure, FAILURE_POLICIES)
    _require(fl.max_retries >= 0, f"fl.max_retries: must be >= 0, got {fl.max_retries}")

    for strategy in REGISTRY.values():  # audit.gamma, qffl.q, term.tilt, afl.lambda_lr
        if strategy.parameter_key is not None:
            values = strategy.parameter_values(c)
            _require(len(values) >= 1, f"{strategy.parameter_key}: needs at least one value")
            for value in values:
                _finite_number(strategy.parameter_key, value, zero_ok=True)
    _distinct_runs(c, REGISTRY.values())
    lipschitz = c.qffl.lipschitz
    _require(
        lipschitz in (None, "auto") or (not isinstance(lipschitz, str) and math.isfinite(lipschitz) and lipschitz > 0),
        f"qffl.lipschitz: must be auto, null or a number > 0, got {lipschitz!r}",
    )
    _finite_number("audit.lambda1", a.lambda1, zero_ok=True)
    _finite_number("audit.lambda2", a.lambda2, zero_ok=True)
    _require(a.gan_epochs >= 1, f"audit.gan_epochs: must be >= 1, got {a.gan_epochs}")
    _require(a.gan_epochs_warm >= 1, f"audit.gan_epochs_warm: must be >= 1, got {a.gan_epochs_warm}")
    _require(a.n_probes >= 1, f"audit.n_probes: must be >= 1, got {a.n_probes}")
    _require(a.latent_dim >= 1, f"audit.latent_dim: must be >= 1, got {a.latent_dim}")
    _finite_number("audit.gan_lr", a.gan_lr)
    _require(a.gan_batch_size >= 2, f"audit.gan_batch_size: must be >= 2 (BatchNorm), got {a.gan_batch_size}")
    _finite_number("audit.delta_scale", a.delta_scale)
    _require(a.score_chunk >= 1, f"audit.score_chunk: must be >= 1, got {a.score_chunk}")
    _one_of("audit.gan_step", a.gan_step, ("eager", "compiled"))
    _one_of("audit.score", a.score, BIAS_SCORES)

    _require(s.shards >= 1, f"sisa.shards: must be >= 1, got {s.shards}")
    _require(s.slices >= 1, f"sisa.slices: must be >= 1, got {s.slices}")
    _require(s.epochs >= 1, f"sisa.epochs: must be >= 1, got {s.epochs}")
    _one_of("sisa.schedule", s.schedule, SISA_SCHEDULES)
    _require(len(s.aggregation) >= 1, "sisa.aggregation: needs at least one aggregation")
    for agg in s.aggregation:
        _one_of("sisa.aggregation", agg, SISA_AGGREGATIONS)
    _finite_number("sisa.lr", s.lr)
    _finite_number("sisa.momentum", s.momentum, zero_ok=True)
    _require(s.batch_size >= 2, f"sisa.batch_size: must be >= 2 (BatchNorm), got {s.batch_size}")

    forget = c.unlearn.forget
    if isinstance(forget, int):
        _require(forget >= 0, f"unlearn.forget: must be >= 0, got {forget}")
    u = c.unlearn
    _require(u.requests >= 1, f"unlearn.requests: must be >= 1, got {u.requests}")
    if isinstance(forget, int):
        _require(
            u.requests <= max(1, forget), f"unlearn.requests: cannot cut {forget} points into {u.requests} requests"
        )
    _require(
        u.membership_size is None or u.membership_size >= 2,
        f"unlearn.membership_size: must be >= 2, got {u.membership_size}",
    )
    for method in u.baselines:
        _one_of("unlearn.baselines", method, UNLEARN_BASELINES)
    _require(len(set(u.baselines)) == len(u.baselines), f"unlearn.baselines: repeated method in {u.baselines}")
    _require(u.baseline_epochs >= 1, f"unlearn.baseline_epochs: must be >= 1, got {u.baseline_epochs}")
    _require(0 < u.neggrad_alpha < 1, f"unlearn.neggrad_alpha: must be in (0, 1), got {u.neggrad_alpha}")
    _require(u.scrub_epochs >= 1, f"unlearn.scrub_epochs: must be >= 1, got {u.scrub_epochs}")
    _require(
        0 <= u.scrub_max_epochs <= u.scrub_epochs,
        f"unlearn.scrub_max_epochs: must be in [0, unlearn.scrub_epochs = {u.scrub_epochs}], got {u.scrub_max_epochs}",
    )
    _finite_number("unlearn.scrub_alpha", u.scrub_alpha, zero_ok=True)
    _finite_number("unlearn.scrub_gamma", u.scrub_gamma, zero_ok=True)
    _require(
        u.scrub_alpha + u.scrub_gamma > 0, "unlearn.scrub_alpha, unlearn.scrub_gamma: one must be > 0 (a min-step)"
    )
    _finite_number("unlearn.scrub_temperature", u.scrub_temperature)

    b = c.backdoor
    _one_of("backdoor.mode", b.mode, BACKDOOR_MODES)
    _one_of("backdoor.trigger_position", b.trigger_position, TRIGGER_POSITIONS)
    _require(b.target_class >= 0, f"backdoor.target_class: must be >= 0, got {b.target_class}")
    _require(b.poison is None or b.poison >= 1, f"backdoor.poison: a count must be >= 1, got {b.poison}")
    _require(0 < b.poison_fraction < 1, f"backdoor.poison_fraction: must be in (0, 1), got {b.poison_fraction}")
    _require(b.trigger_size >= 1, f"backdoor.trigger_size: must be >= 1, got {b.trigger_size}")
    _require(0 <= b.trigger_value <= 1, f"backdoor.trigger_value: must be in [0, 1], got {b.trigger_value}")

    r = c.resources
    for key in ("gpus_per_client", "server_gpus", "gpus_per_shard", "cpus_per_client", "server_cpus", "cpus_per_shard"):
        _fraction_or_auto(f"resources.{key}", getattr(r, key))
    _count_or_word("resources.clients_per_actor", r.clients_per_actor, "auto")
    _count_or_word("resources.audit_servers", r.audit_servers, "auto")
    _require(r.torch_threads >= 1, f"resources.torch_threads: must be >= 1, got {r.torch_threads}")
    _finite_number("resources.stall_timeout", r.stall_timeout)
    _require(
        r.server_threads is None or r.server_threads >= 1,
        f"resources.server_threads: must be >= 1, got {r.server_threads}",
    )
    _one_of("tracking.wandb", c.tracking.wandb, WANDB_MODES)
    _one_of("metrics.client_accuracy", c.metrics.client_accuracy, CLIENT_ACCURACY_BASES)
    _one_of("metrics.correction", c.metrics.correction, CORRECTIONS)
    _require(c.metrics.audit_epochs >= 1, f"metrics.audit_epochs: must be >= 1, got {c.metrics.audit_epochs}")
    _require(
        c.metrics.audit_batch_size >= 2, f"metrics.audit_batch_size: must be >= 2, got {c.metrics.audit_batch_size}"
    )
    _seed("seed", c.seed)
    if isinstance(d.partition_seed, str):
        _one_of("data.partition_seed", d.partition_seed, (EACH_SEED,))
    elif d.partition_seed is not None:
        _seed("data.partition_seed", d.partition_seed)
    seeds = c.seed_list
    _require(len(seeds) >= 1, f"seeds: needs at least one seed, got {c.seeds!r}")
    for seed in seeds:
        _seed("seeds", seed)
    _require(len(set(seeds)) == len(seeds), f"seeds: repeated seed in {seeds}")
