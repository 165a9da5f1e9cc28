"""What every aggregation strategy is, and the registry that config validation, the engine, the reports, the
plots and Ray Tune read. A strategy lives in one file of this package: subclass `Strategy`, give it a `name`,
and it is registered (the package imports every module in it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from rayfed.fl.state import StateDict

if TYPE_CHECKING:
    from rayfed.config import Config
    from rayfed.fl.gan_audit import FoldedEvaluator


@dataclass
class LocalResult:
    """What one client returns from Phase 1."""

    client_id: int
    num_samples: int
    delta: StateDict
    """dw_i = w_after - w_before."""
    loss: float
    """F_i(Theta_old): the client's mean training loss at the global model, before local training."""


@dataclass
class AuditEvidence:
    """What Phase 2 hands a strategy that needs the audit: the probe set P and the scoring template."""

    evaluator: FoldedEvaluator
    x: torch.Tensor
    x_prime: torch.Tensor
    chunk: int
    """Probes per chunk of scoring."""


@dataclass
class Aggregation:
    """A strategy's decision for one round (lists in the order of the updates it was given)."""

    state: StateDict
    """Theta_new."""
    weights: list[float]
    """Each client's weight in the round (alpha_i, or the strategy's own share): they sum to 1, but for AFL's
    round whose clients all have lambda 0, where they are all 0 and the model does not move."""
    bias_base: float | None = None
    biases: list[float] | None = None
    scores: list[float] | None = None
    carried: list[float] | None = None
    """What the strategy carries into the next round (AFL's lambda over the clients); None if it carries nothing."""


REGISTRY: dict[str, type[Strategy]] = {}
"""fl.methods name -> strategy class, filled as the strategy modules are imported."""


@dataclass(frozen=True)
class Strategy:
    """One line of a comparison: a method and, for methods that have one, the value of its swept parameter."""

    value: float | None = None
    """The value of `parameter` this run uses (None for methods without one)."""

    name: ClassVar[str]
    """The `fl.methods` name."""
    title: ClassVar[str]
    """Human name for tables and legends."""
    needs_audit: ClassVar[bool] = False
    """The server trains the audit GAN and scores the updates for this method (whose weights come from the
    scores, so the summary notes when they stayed uniform)."""
    parameter: ClassVar[str | None] = None
    """The method's swept parameter: its table column (e.g. `gamma`), or None."""
    parameter_key: ClassVar[str | None] = None
    """The config key listing the parameter's values (one run per value), e.g. `audit.gamma`."""
    reference: ClassVar[bool] = False
    """The baseline other methods are compared with (paired differences, Tune's reference metrics)."""
    unfair_hint: ClassVar[str | None] = None
    """For a method built for fairness: what to try when the summary finds it less fair than the reference on the
    worst client, the opposite of its purpose; None for the others."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    @classmethod
    def parameter_values(cls, config: Config) -> list[float]:
        """The values of the method's parameter in `config` (its `parameter_key`, a number or a list)."""
        section, key = cls.parameter_key.split(".")
        values = getattr(getattr(config, section), key)
        return [float(v) for v in (values if isinstance(values, list) else [values])]

    @classmethod
    def runs(cls, config: Config) -> list[Strategy]:
        """One run per value of the parameter in `config` (or the one run of a method without one)."""
        if cls.parameter_key is None:
            return [cls()]
        return [cls(value) for value in cls.parameter_values(config)]

    @property
    def label(self) -> str:
        """e.g. `FedAvg`, `gamma=2`: the run's name in summaries, legends and wandb."""
        return self.title if self.parameter is None else f"{self.parameter}={self.value:g}"

    @property
    def file_label(self) -> str:
        """e.g. `fedavg`, `fedauditgan_gamma2`: the run's name in file names and checkpoints."""
        return self.name if self.parameter is None else f"{self.name}_{self.parameter}{self.value:g}"

    @property
    def parameters(self) -> dict[str, float | None]:
        """The run's value of every strategy parameter column (None for the others)."""
        return {column: (self.value if column == self.parameter else None) for column in parameter_columns()}

    def aggregate(
        self,
        state: StateDict,
        updates: Sequence[LocalResult],
        audit: AuditEvidence | None,
        buffers: frozenset[str] = frozenset(),
        carried: list[float] | None = None,
    ) -> Aggregation:
        """Theta_new from Theta_old and this round's accepted updates (`audit` given iff `needs_audit`;
        `buffers`: the state-dict keys that are buffers, not trainable parameters; `carried`: what the previous
        round's aggregation carried, None in the first round)."""
        raise NotImplementedError

    def mixture(self, carried: list[float] | None) -> list[float] | None:
        """Each client's share (by client id) of the mixture the strategy carries out of a round, given what the
        round `carried`: AFL's lambda; None for strategies that weigh every round afresh."""
        return None


def parameter_columns() -> list[str]:
    """The table columns of all registered strategies' parameters, in registration order."""
    columns: list[str] = []
    for cls in REGISTRY.values():
        if cls.parameter and cls.parameter not in columns:
            columns.append(cls.parameter)
    return columns


def strategy_runs(config: Config) -> list[Strategy]:
    """fl.methods in order, each expanded once per value of its parameter."""
    return [run for method in config.fl.methods for run in REGISTRY[method].runs(config)]


def seeded_runs(config: Config) -> list[tuple[Strategy, int]]:
    """Every (run, seed) pair a job executes: strategy_runs(config) in order, each once per seed."""
    return [(run, seed) for run in strategy_runs(config) for seed in config.seed_list]


def strategy_for(method: str, parameters: dict[str, float | None]) -> Strategy:
    """The run a table row describes (its `method` and parameter columns)."""
    cls = REGISTRY[method]
    return cls() if cls.parameter is None else cls(parameters[cls.parameter])
