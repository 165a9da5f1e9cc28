"""Sweep files: read, apply `--set` overrides, validate, all before Ray starts.

A sweep file is a YAML mapping:

    run: fl                      # which run every trial is: fl or sisa
    base: {fl: {rounds: 50}}     # a config mapping (keys as `rayfed fl/sisa --config`) or a path to one
    param_space:                 # dotted config keys -> a plain value or one sampler
      audit.gamma: {grid_search: [0.5, 1, 2]}
      audit.lambda1: {loguniform: [0.1, 10]}
    tune_config: {metric: jfi, mode: max, num_samples: 1, max_concurrent_trials: 2,
                  scheduler: {type: asha, grace_period: 5, reduction_factor: 2, max_t: 50}}
    run_config: {name: my_sweep, storage_path: s3://bucket/tune}
    trial_resources: {cpus: 4, gpus: 0.5}   # optional; default: the cluster / max_concurrent_trials

`--set KEY=VALUE` overrides address the sweep file: `tune_config.num_samples=2`, `base.fl.rounds=3`,
`param_space.audit.gamma={grid_search: [1, 2]}` (after `param_space.` the whole rest is the config key).
A key that is not a sweep key but a config key (`fl.rounds=3`, `resources.address=auto` from `--address`)
is shorthand for `base.KEY`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayfed.config import (
    PLAIN_NUMBER,
    Config,
    build_config,
    config_keys,
    nest,
    parse_override,
    read_yaml_mapping,
)
from rayfed.errors import UserError
from rayfed.fl.rows import AUDIT_FIGURES, ROUND_METRICS
from rayfed.sisa.seeds import BASELINE_FIGURES

RUNS = ("fl", "sisa")
SWEEP_KEYS = ("run", "base", "param_space", "tune_config", "run_config", "trial_resources")
TUNE_CONFIG_KEYS = ("metric", "mode", "num_samples", "max_concurrent_trials", "scheduler")
RUN_CONFIG_KEYS = ("name", "storage_path")
TRIAL_RESOURCE_KEYS = ("cpus", "gpus")
MODES = ("max", "min")
SAMPLERS = ("grid_search", "choice", "uniform", "loguniform", "randint")
CONTINUOUS_SAMPLERS = ("uniform", "loguniform")
SCHEDULER_PARAMS = {"fifo": (), "asha": ("grace_period", "reduction_factor", "max_t", "brackets")}
SCHEDULER_MINIMA = {"grace_period": (int, 1), "reduction_factor": (float, 1), "max_t": (int, 1), "brackets": (int, 1)}
"""Each ASHA setting's kind and least value (Ray's: integers of rounds and brackets, a reduction factor above 1)."""
FL_METRICS = (*ROUND_METRICS, *AUDIT_FIGURES)
"""What an fl trial reports: each round, the figures of the last method run of the round (the swept one),
averaged over its seeds (rayfed.fl.rows.RoundRow's numeric fields); at its last round also its final models'
held-out audit (AUDIT_FIGURES: `flip_rate`, `held_out_bias` and their `val_` twins), NaN in the rounds before."""
SISA_METRICS = (
    "accuracy",
    "val_accuracy",
    "val_unlearned_accuracy",
    "f1",
    "auroc",
    "unlearned_accuracy",
    "retrained_accuracy",
    "unsharded_accuracy",
    "speedup_samples",
    "speedup_vs_unsharded",
    "expected_speedup",
    "exact",
    "max_probability_difference",
    "forget_auc",
    "unlearned_forget_auc",
    "retrained_forget_auc",
    "train_auc",
    "backdoor_asr",
    "unlearned_backdoor_asr",
    "clean_backdoor_asr",
)
"""What a sisa trial reports once, at its end (rayfed.sisa.seeds.run_figures; over several seeds `<figure>_ci` and
`seeds`). With `unlearn.baselines` also `<method>/<figure>` (BASELINE_FIGURES) of each approximate method and of
`retrained`, the unsharded model retrained from scratch."""
RUN_METRICS = {"fl": FL_METRICS, "sisa": SISA_METRICS}
DEFAULT_METRIC = {"fl": ("jfi", "max"), "sisa": ("accuracy", "max")}
"""tune_config.metric and mode when the sweep file names none; a base config with a validation split selects
on the metric's validation twin (`val_jfi`, `val_accuracy`)."""


METRIC_KEYS = ("data.validation_fraction", "metrics.held_out_audit", "unlearn.baselines", "unlearn.forget")
"""The config keys that decide whether a trial reports a metric (a `val_` figure, the held-out audit's, an
approximate baseline's)."""


def _trial_configs(base: dict[str, Any], params: tuple[Param, ...]) -> list[Config]:
    """Every config a trial can have in METRIC_KEYS: the base with each combination of the probe values of the
    params that set one of them (the base alone when none does)."""
    deciding = [p for p in params if any(p.key == k or k.startswith(f"{p.key}.") for k in METRIC_KEYS)]
    combinations = itertools.product(*(p.probe_values() for p in deciding))
    return [build_config([base, *(nest(p.key, v) for p, v in zip(deciding, values))]) for values in combinations]


def _lacking(configs: list[Config], holds: Callable[[Config], bool], base_config: Config) -> str | None:
    """Who lacks what `holds` checks, as the subject of a negated verb ("the base config does not", "some
    trials of param_space do not"); None when every config holds it."""
    if all(holds(c) for c in configs):
        return None
    return "the base config does not" if configs == [base_config] else "some trials of param_space do not"


def _baseline_metric(metric: str, configs: list[Config], base_config: Config, file: Path) -> bool:
    """Whether `metric` is `<method>/<figure>` of an approximate baseline that sisa trials report; a method that
    a trial would not run, or a trial without a forget set, is an error naming what to set."""
    method, _, figure = metric.rpartition("/")
    if not method or figure not in BASELINE_FIGURES:
        return False
    where = _where(file, "tune_config.metric")
    lacking = _lacking(configs, lambda c: method in (*c.unlearn.baselines, "retrained"), base_config)
    if lacking:
        raise UserError(f"{where}: {metric} needs {method} in unlearn.baselines, which {lacking} have")
    lacking = _lacking(configs, lambda c: bool(c.unlearn.baselines) and c.unlearn.forget not in (0, None), base_config)
    if lacking:
        raise UserError(f"{where}: {metric} needs a forget set (unlearn.forget), which {lacking} have")
    return True


@dataclass(frozen=True)
class Param:
    """One entry of param_space: a config key and either a plain value (sampler None) or a sampler's
    arguments (a list of values for grid_search/choice, [lo, hi] for the ranges)."""

    key: str
    sampler: str | None
    values: Any

    def probe_values(self) -> list[Any]:
        """The values to validate before Ray starts: every listed value, or both ends of a range."""
        if self.sampler is None:
            return [self.values]
        if self.sampler == "randint":  # Tune's randint excludes the upper bound
            return [self.values[0], self.values[1] - 1]
        if self.sampler in CONTINUOUS_SAMPLERS:  # they draw real numbers: an integer key refuses them here
            return [float(v) for v in self.values]
        return list(self.values)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    file: Path
    run: str
    base: dict[str, Any]
    """Config mapping every trial starts from (paths made absolute)."""
    params: tuple[Param, ...]
    metric: str
    mode: str
    num_samples: int
    max_concurrent_trials: int | None
    scheduler: dict[str, Any]
    """`type` (fifo or asha) and the scheduler's parameters."""
    name: str
    storage_path: str | None
    """Absolute path or URI of Tune's storage; None = `tune/` in the sweep's output directory."""
    trial_cpus: float | None
    trial_gpus: float | None

    @property
    def base_config(self) -> Config:
        """The base config, validated."""
        return build_config([self.base])


def _where(file: Path, key: str) -> str:
    return f"sweep file {file}: {key}"


def _set_dotted(document: dict[str, Any], parts: list[str], value: Any, file: Path) -> None:
    target = document
    for i, part in enumerate(parts[:-1]):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(parts)}: {_where(file, '.'.join(parts[: i + 1]))} is not a mapping")
        target = child
    target[parts[-1]] = value


def apply_overrides(document: dict[str, Any], overrides: list[str], file: Path) -> None:
    """Apply `--set` overrides to a sweep document in place (see the module docstring for the keys)."""
    for text in overrides:
        key, value = parse_override(text)
        head, _, rest = key.partition(".")
        if head == "param_space" and rest:
            document.setdefault("param_space", {})
            if not isinstance(document["param_space"], dict):
                raise UserError(f"--set {key}: {_where(file, 'param_space')} is not a mapping")
            document["param_space"][rest] = value
        elif head in SWEEP_KEYS:
            _set_dotted(document, key.split("."), value, file)
        elif key in config_keys():
            _set_dotted(document, ["base", *key.split(".")], value, file)
        else:
            raise UserError(f"--set {key}: neither a sweep file key ({', '.join(SWEEP_KEYS)}) nor a config key")


def _mapping(document: dict[str, Any], key: str, allowed: tuple[str, ...] | None, file: Path) -> dict[str, Any]:
    """document[key] as a mapping (empty when absent) whose keys are in `allowed` (any when None)."""
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{_where(file, key)}: expected a mapping, got {value!r}")
    for name in value:
        if allowed is not None and name not in allowed:
            raise UserError(f"{_where(file, f'{key}.{name}')}: unknown key (choose from {', '.join(allowed)})")
    return value


def _number(value: Any, key: str, file: Path, kind: type = float, minimum: float = 0) -> Any:
    """value, a finite number (or an integer) >= minimum; UserError naming key otherwise."""
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        what = "a finite number" if kind is float else "an integer"
        raise UserError(f"{_where(file, key)}: expected {what} >= {minimum}, got {value!r}")
    return value


def _as_number(value: Any) -> Any:
    """A string that writes a plain number as that number: YAML 1.1 (PyYAML) reads `1e-3` as a string."""
    return float(value) if isinstance(value, str) and PLAIN_NUMBER.fullmatch(value) else value


def parse_param(key: str, value: Any, file: Path) -> Param:
    """One param_space entry; UserError naming it when the key or the sampler is wrong."""
    where = _where(file, f"param_space.{key}")
    if key not in config_keys():
        raise UserError(f"{where}: '{key}' is not a config key")
    if not isinstance(value, dict):
        return Param(key, None, _absolute_if_path(key, _as_number(value)))
    if len(value) != 1 or next(iter(value)) not in SAMPLERS:
        raise UserError(f"{where}: expected a plain value or one of {', '.join(SAMPLERS)}, got {value!r}")
    sampler, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: {sampler} needs a non-empty list, got {args!r}")
    args = [_absolute_if_path(key, _as_number(a)) for a in args]
    if sampler in ("uniform", "loguniform", "randint"):
        numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
        if len(args) != 2 or not numbers or not args[0] < args[1]:
            raise UserError(f"{where}: {sampler} needs [lo, hi] with lo < hi, got {args!r}")
        if sampler == "loguniform" and args[0] <= 0:
            raise UserError(f"{where}: loguniform needs lo > 0, got {args!r}")
        if sampler == "randint" and not all(isinstance(a, int) for a in args):
            raise UserError(f"{where}: randint needs integer bounds, got {args!r}")
    return Param(key, sampler, args)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


PATH_KEYS = ("data.root", "unlearn.forget")
"""Config keys that name a file or folder: made absolute, in the base and in param_space, since trials run in
their own working directory."""


def _absolute_if_path(key: str, value: Any) -> Any:
    """`value` made absolute where `key` is one of PATH_KEYS and the value a path (a string)."""
    return _absolute(value) if key in PATH_KEYS and isinstance(value, str) else value


def _resolve_paths(base: dict[str, Any]) -> None:
    """Make the base config's relative paths absolute (trials run in their own working directory)."""
    data = base.setdefault("data", {})
    if isinstance(data, dict):
        data["root"] = _absolute_if_path("data.root", data.get("root", Config().data.root))
    unlearn = base.get("unlearn")
    if isinstance(unlearn, dict) and "forget" in unlearn:
        unlearn["forget"] = _absolute_if_path("unlearn.forget", unlearn["forget"])


def merge_mappings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merge_mappings(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _load_base(document: dict[str, Any], file: Path) -> dict[str, Any]:
    """`base:` as a mapping; a path is read relative to the sweep file's folder."""
    base = document.get("base")
    if base is None:
        return {}
    if isinstance(base, str):
        return read_yaml_mapping(file.parent / base, "base config")
    if not isinstance(base, dict):
        raise UserError(f"{_where(file, 'base')}: expected a mapping or a path, got {base!r}")
    return base


def load_sweep(path: str | Path, overrides: list[str] = (), config_file: str | Path | None = None) -> SweepSpec:
    """Read a sweep file, layer `config_file` (`--config`) over its base, apply overrides and validate
    everything: keys, the base config and every probe value of every param (build_config), so that a wrong
    key or type fails before Ray starts."""
    file = Path(path)
    document = read_yaml_mapping(file, "sweep file")
    document["base"] = _load_base(document, file)  # a path becomes a mapping, so base.* overrides apply
    if config_file is not None:
        document["base"] = merge_mappings(document["base"], read_yaml_mapping(config_file))
    apply_overrides(document, list(overrides), file)
    document["base"] = _load_base(document, file)  # `--set base=...` may have made it a path, null or a number
    for key in document:
        if key not in SWEEP_KEYS:
            raise UserError(f"{_where(file, key)}: unknown key (choose from {', '.join(SWEEP_KEYS)})")
    run = document.get("run")
    if run not in RUNS:
        raise UserError(f"{_where(file, 'run')}: expected one of {', '.join(RUNS)}, got {run!r}")

    base = document["base"]
    _resolve_paths(base)
    try:
        base_config = build_config([base])
    except UserError as exc:
        raise UserError(f"{_where(file, 'base')}: {exc}") from None
    params = tuple(parse_param(k, v, file) for k, v in _mapping(document, "param_space", None, file).items())
    for param in params:
        for value in param.probe_values():
            try:
                build_config([base, nest(param.key, value)])
            except UserError as exc:
                hint = f" ({param.sampler} draws real numbers; randint draws integers)" * (
                    param.sampler in CONTINUOUS_SAMPLERS
                )
                raise UserError(f"{_where(file, f'param_space.{param.key}')}: {exc}{hint}") from None

    tune_config = _mapping(document, "tune_config", TUNE_CONFIG_KEYS, file)
    trials = _trial_configs(base, params)
    validated = _lacking(trials, lambda c: c.data.validation_fraction > 0, base_config)
    default_metric, default_mode = DEFAULT_METRIC[run]
    if not validated:
        default_metric = f"val_{default_metric}"  # choose where the choice does not touch the test set
    metric = tune_config.get("metric", default_metric)
    if not isinstance(metric, str):
        raise UserError(f"{_where(file, 'tune_config.metric')}: expected the name of a figure, got {metric!r}")
    if not (metric in RUN_METRICS[run] or (run == "sisa" and _baseline_metric(metric, trials, base_config, file))):
        raise UserError(
            f"{_where(file, 'tune_config.metric')}: {metric!r} is not reported by {run} trials "
            f"(choose from {', '.join(RUN_METRICS[run])}, or <method>/<figure> of a method of unlearn.baselines)"
        )
    if metric.rpartition("/")[2].startswith("val_") and validated:
        raise UserError(
            f"{_where(file, 'tune_config.metric')}: {metric} is measured on the validation split, which {validated} "
            "hold: set data.validation_fraction (e.g. 0.1) for every trial"
        )
    mode = tune_config.get("mode", default_mode)
    if mode not in MODES:
        raise UserError(f"{_where(file, 'tune_config.mode')}: expected max or min, got {mode!r}")
    num_samples = _number(tune_config.get("num_samples", 1), "tune_config.num_samples", file, int, 1)
    concurrent = tune_config.get("max_concurrent_trials")
    if concurrent is not None:
        _number(concurrent, "tune_config.max_concurrent_trials", file, int, 1)
    scheduler = _scheduler(tune_config.get("scheduler"), file, base_config, run)
    if run == "fl" and metric in AUDIT_FIGURES:
        audited = _lacking(trials, lambda c: c.metrics.held_out_audit, base_config)
        if audited:
            raise UserError(
                f"{_where(file, 'tune_config.metric')}: {metric} is the held-out audit's, which {audited} run: set "
                "metrics.held_out_audit: true for every trial"
            )
        if scheduler["type"] != "fifo":
            raise UserError(
                f"{_where(file, 'tune_config.scheduler')}: {metric} is measured once, after a trial's last round "
                f"(the held-out audit), and {scheduler['type']} compares trials at earlier rounds: use type: fifo"
            )

    run_config = _mapping(document, "run_config", RUN_CONFIG_KEYS, file)
    name = run_config.get("name", file.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"{_where(file, 'run_config.name')}: expected a folder name, got {name!r}")
    storage = run_config.get("storage_path")
    if storage is not None and not isinstance(storage, str):
        raise UserError(f"{_where(file, 'run_config.storage_path')}: expected a path or URI, got {storage!r}")

    resources = _mapping(document, "trial_resources", TRIAL_RESOURCE_KEYS, file)
    cpus, gpus = resources.get("cpus"), resources.get("gpus")
    if cpus is not None:
        _number(cpus, "trial_resources.cpus", file, float, 0.01)
    if gpus is not None:
        _number(gpus, "trial_resources.gpus", file)
    return SweepSpec(
        file.resolve(),
        run,
        base,
        params,
        metric,
        mode,
        num_samples,
        concurrent,
        scheduler,
        name,
        None if storage is None else _absolute(storage),
        cpus,
        gpus,
    )


def _scheduler(value: Any, file: Path, base: Config, run: str) -> dict[str, Any]:
    if value is None:
        return {"type": "fifo"}
    if not isinstance(value, dict) or value.get("type") not in SCHEDULER_PARAMS:
        raise UserError(
            f"{_where(file, 'tune_config.scheduler')}: expected a mapping with type: "
            f"{' or '.join(SCHEDULER_PARAMS)}, got {value!r}"
        )
    allowed = SCHEDULER_PARAMS[value["type"]]
    for key, number in value.items():
        if key == "type":
            continue
        if key not in allowed:
            raise UserError(
                f"{_where(file, f'tune_config.scheduler.{key}')}: unknown key for "
                f"{value['type']} (choose from {', '.join(allowed) or 'none'})"
            )
        kind, minimum = SCHEDULER_MINIMA[key]
        _number(number, f"tune_config.scheduler.{key}", file, kind, minimum)
        if key == "reduction_factor" and number == 1:  # ASHA keeps 1/reduction_factor of the trials at each rung
            raise UserError(f"{_where(file, 'tune_config.scheduler.reduction_factor')}: must be > 1, got {number!r}")
    scheduler = dict(value)
    if scheduler["type"] == "asha":
        scheduler.setdefault("max_t", base.fl.rounds if run == "fl" else 1)
        if scheduler.get("grace_period", 1) > scheduler["max_t"]:
            raise UserError(
                f"{_where(file, 'tune_config.scheduler.grace_period')}: must be <= max_t="
                f"{scheduler['max_t']}, got {scheduler['grace_period']}"
            )
    return scheduler
