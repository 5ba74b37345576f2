"""Search spaces for ``finetune-kit sweep``: parsing, and the Optuna distributions they become.

A search space is an ordered list of :class:`Param`. Each is either a list of choices
(``choice``; the only kind a grid accepts) or a range (``float`` / ``int``, optionally
log-uniform). They come from the command line or a YAML/JSON file:

Command line (``--param``, repeatable)::

    --param ft_strategy=linear,full            choices (numbers, true/false, text)
    --param learning_rate=1e-4,3e-4,1e-3       choices
    --param learning_rate=loguniform(1e-5,1e-2) float range, log scale (also loguniform:1e-5:1e-2)
    --param llrd_decay=uniform(0.6,0.95)        float range
    --param gradual_patience=int(1,4)           integer range (inclusive; logint(...) for log scale)

Choices become Optuna's ``CategoricalDistribution``, ranges ``FloatDistribution`` /
``IntDistribution`` (:meth:`SearchSpace.distributions`); ``--method grid`` takes only choices.

File (``--space FILE``, YAML or JSON)::

    params:
      ft_strategy: [linear, full]                       # choices
      learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
      gradual_patience: {type: int, low: 1, high: 4}
    # optional sweep settings (command-line options override them):
    task: classification
    method: random
    trials: 8
    workers: 2                                            # (parallel: is read too)
    pruner: median
    metric: val_auroc
    mode: max
    fixed: {data: /path/to/images, num_epochs: 2}        # passed as --data ... --num_epochs 2
    args: ["--wandb", "disabled"]                         # passed verbatim
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["Param", "SearchSpace", "load_space_file", "parse_param", "parse_value", "to_flags"]


def parse_value(text: str) -> Any:
    """``"1e-3"`` -> 0.001, ``"4"`` -> 4, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


@dataclass
class Param:
    """One searched parameter.

    Attributes:
        name: the task option without dashes, as the task's CLI spells it (``learning_rate``).
        kind: ``"choice"``, ``"float"`` or ``"int"``.
        choices: the values of a ``choice`` parameter.
        low, high: inclusive bounds of a range. log: sample the range log-uniformly.
    """

    name: str
    kind: str = "choice"
    choices: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("choice", "float", "int"):
            raise ValueError(f"parameter {self.name}: type {self.kind!r} is not choice, float or int")
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"parameter {self.name}: no values given; write {self.name}=v1,v2")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"parameter {self.name}: range needs low <= high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"parameter {self.name}: a log range needs low > 0, got {self.low}")

    def suggest(self, trial: Any) -> Any:
        """The value for an Optuna ``trial`` (``suggest_categorical`` / ``_float`` / ``_int``)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


class SearchSpace:
    """An ordered collection of :class:`Param` (order = grid order, slowest-varying first)."""

    def __init__(self, params: Sequence[Param]) -> None:
        names = [p.name for p in params]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"parameter(s) {', '.join(sorted(dup))} given more than once in the search space")
        if not params:
            raise ValueError("empty search space: give --param NAME=v1,v2 or --space FILE")
        self.params = list(params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list[Any]]:
        """``{name: choices}``, the search space of Optuna's ``GridSampler``.

        Raises:
            ValueError: a parameter is a range (names it; give values or use random/tpe).
        """
        ranges = [p.name for p in self.params if p.kind != "choice"]
        if ranges:
            raise ValueError(f"grid search needs a list of values for {', '.join(ranges)}: write "
                             f"{ranges[0]}=v1,v2,... or use --method random/tpe for ranges")
        return {p.name: list(p.choices) for p in self.params}

    def grid_size(self) -> int:
        """Number of combinations of the choices (ranges count as 0: no grid)."""
        n = 1
        for p in self.params:
            n *= len(p.choices) if p.kind == "choice" else 0
        return n

    def distributions(self) -> dict[str, Any]:
        """``{name: optuna distribution}`` (categorical, float or int; ``log`` kept)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        return {p.name: CategoricalDistribution(p.choices) if p.kind == "choice" else
                IntDistribution(int(p.low), int(p.high), log=p.log) if p.kind == "int" else
                FloatDistribution(float(p.low), float(p.high), log=p.log) for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Configuration for an Optuna trial."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_dict(self) -> list[dict[str, Any]]:
        """JSON-able description (stored in the sweep state to detect a changed spec)."""
        return [asdict(p) for p in self.params]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "SearchSpace":
        """From a ``{name: [values] | {type, low, high, log} | {choices: [...]}}`` mapping."""
        params = []
        for name, v in spec.items():
            if isinstance(v, (list, tuple)):
                params.append(Param(str(name), "choice", list(v)))
            elif isinstance(v, Mapping):
                choices = v.get("choices", v.get("values"))
                kind = v.get("type", "choice" if choices is not None else
                             ("int" if all(isinstance(v.get(b), int) for b in ("low", "high")) else "float"))
                kind = {"categorical": "choice", "loguniform": "float", "uniform": "float"}.get(kind, kind)
                params.append(Param(str(name), kind, list(choices or []), v.get("low"), v.get("high"),
                                    bool(v.get("log", v.get("type") == "loguniform"))))
            else:
                raise ValueError(f"search space entry {name}: {v!r} is neither a list of values nor a range "
                                 "{low, high, log}; fixed values go under 'fixed:'")
        return cls(params)


def parse_param(text: str) -> Param:
    """Parse one ``--param`` (see the module docstring for the forms).

    Raises:
        ValueError: no ``=``, or a malformed range (message shows the accepted forms).
    """
    if "=" not in text:
        raise ValueError(f"--param {text!r}: expected NAME=v1,v2 or NAME=loguniform(LOW,HIGH) "
                         "(also uniform(LOW,HIGH), int(LOW,HIGH), logint(LOW,HIGH); or KIND:LOW:HIGH)")
    name, _, rhs = text.partition("=")
    name = name.strip().lstrip("-")
    call = re.fullmatch(r"\s*(uniform|loguniform|int|logint)\s*\(([^,()]*),([^,()]*)\)\s*", rhs, re.I)
    if call:
        rhs = f"{call.group(1)}:{call.group(2)}:{call.group(3)}"
    head = rhs.split(":", 1)[0].strip().lower()
    if head in ("uniform", "loguniform", "int", "logint") and rhs.count(":") == 2:
        _, lo, hi = rhs.split(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError as exc:
            raise ValueError(f"--param {text!r}: bounds must be numbers") from exc
        kind = "int" if head in ("int", "logint") else "float"
        return Param(name, kind, low=low, high=high, log=head.startswith("log"))
    return Param(name, "choice", [parse_value(v) for v in rhs.split(",") if v.strip() != ""])


def load_space_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON sweep spec; returns the mapping with ``params`` as a :class:`SearchSpace`.

    Raises:
        FileNotFoundError: missing file. ValueError: unreadable, or no ``params`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"search space file {path} is not valid YAML/JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("params"), Mapping):
        raise ValueError(f"search space file {path} needs a 'params:' mapping of parameter -> values or range")
    out = dict(data)
    out["params"] = SearchSpace.from_spec(data["params"])
    return out


def to_flags(values: Mapping[str, Any], command: Any = None) -> list[str]:
    """Task CLI flags for parameter values: ``{"learning_rate": 1e-3}`` -> ``["--learning_rate", "0.001"]``.

    ``True`` -> ``--name``; ``None`` -> omitted; lists -> comma-joined. ``False`` -> nothing
    (the task's default, which is off for flags such as ``--ema``, ``--amp``,
    ``--use_balanced``), unless ``command`` declares an off form for the option
    (``--progress/--no-progress``), which is then used.

    Args:
        values: parameter name (the option without dashes, or with them) -> value.
        command: the task's click command (``typer.main.get_command``), or None. With it,
            every name must be one of its options.

    Raises:
        ValueError: with ``command``: a name that is not one of its options, or ``False`` for
            a flag that defaults to on and has no off form.
    """
    flags: list[str] = []
    for name, v in values.items():
        flag = name if name.startswith("-") else f"--{name}"
        option = _find_option(command, flag) if command is not None else None
        if v is None:
            continue
        if v is True:
            flags.append(flag)
        elif v is False:
            off = list(getattr(option, "secondary_opts", None) or [])
            if off:
                flags.append(off[0])
            elif option is not None and getattr(option, "is_flag", False) and getattr(option, "default", False):
                raise ValueError(f"parameter {name}=false cannot be passed: {flag} is on by default and has no off "
                                 f"form; leave false out of its values")
        elif isinstance(v, (list, tuple)):
            flags += [flag, ",".join(str(x) for x in v)]
        else:
            flags += [flag, repr(v) if isinstance(v, float) else str(v)]
    return flags


def _find_option(command: Any, flag: str) -> Any:
    """The option of a click command spelled ``flag`` (either form); ValueError when none is."""
    for param in getattr(command, "params", []):
        if flag in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
            return param
    raise ValueError(f"parameter {flag.lstrip('-')}: the task command {getattr(command, 'name', '')!r} has no option "
                     f"{flag}; see the task's --help for its option names")
