"""Pydantic v2 models of a sweep spec's structure, generated from the settings table.

``SweepModel`` has one field per top-level key; the run keys (``cell``, ``hidden``, ``dtype``,
``seed``) and sweep keys (``steps``, ``trials``, ``sampler``, ``objective.metric``,
``resources.cpus``, ...) get their default, type, bounds and choices from their table entries
(``rnnsweep.algorithms.settings``, ``rnnsweep.orchestrator.sweep_settings``); the sections
``probe``, ``objective``, ``resources`` and ``storage`` are models built from the entries of
their keys, ``search.<key>`` is a ``ParamModel``. Every model forbids unknown keys. What needs
the task, the estimators or the learner (applicability, task settings, search bounds checked by
``split_settings``) is checked afterwards, in ``spec.py``.

``validate(d)`` returns the model or raises ``SpecError`` for the first problem, in today's
words: the key path, then what is wrong and the value (``steps: must be an integer >= 1, got
0``; ``unknown key 'trails' at top level (did you mean 'trials'?)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rnnsweep.algorithms.settings import PROBE_KEYS, SETTINGS, did_you_mean
from rnnsweep.orchestrator import sweep_name
from rnnsweep.orchestrator.spec_file import SpecError
from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS
from rnnsweep.tasks.settings import Setting

PARAM_TYPES = ("float", "int", "categorical")
FORBID = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _problem(message: str, key: str | None = None, missing: bool = False) -> PydanticCustomError:
    """An error with our own message; ``key`` extends the location (``search.lr`` -> ``.step``)."""
    return PydanticCustomError(
        "spec", "{message}", {"message": message, "key": key, "missing": missing}
    )


# -- value checks (the messages spec errors have always had) ---------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".ein") else text + ".0"
    return str(value)


def describe(value: Any) -> str:
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, list | dict):
        return f"a {type(value).__name__}"
    return repr(value)


def integer(value: Any, low: float | None = None) -> int:
    ok = not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    )
    if not ok or (low is not None and value < low):
        bound = f" >= {int(low)}" if low is not None else ""
        raise _problem(f"must be an integer{bound}, got {describe(value)}")
    return int(value)


def real(value: Any, low: float | None = None, low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = f" {'>' if low_open else '>='} {fmt(low)}" if low is not None else ""
        raise _problem(f"must be a finite number{bound}, got {describe(value)}")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _problem(f"must be true or false, got {describe(value)}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _problem(f"must be a non-empty string, got {describe(value)}")
    return value


def valid_name(value: Any) -> str:
    """A sweep name (``sweep_name``'s rules)."""
    wrong = sweep_name.problem(value)
    if wrong:
        raise _problem(wrong)
    return value


def choice(value: Any, choices: tuple[str, ...] | list[str], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise _problem(f"unknown {what} {value!r}{hint}; choose from {', '.join(choices)}")
    return value


def _entry_check(entry: Setting) -> Callable[[Any], Any]:
    """The table entry's type, bounds or choices, as a validator."""
    what = entry.name.rpartition(".")[2]

    def check(value: Any) -> Any:
        if entry.choices:
            return choice(value, entry.choices, what)
        if entry.nullable:
            return None if value is None else text(value)
        if entry.type is bool:
            return boolean(value)
        if entry.type is int:
            number = integer(value, entry.low)
            if entry.high is not None and number > entry.high:
                raise _problem(f"must be an integer {entry.bounds_text()}, got {number}")
            return number
        return real(value, entry.low, entry.low_open)

    return check


def _field(entry: Setting) -> tuple[Any, Any]:
    """``(annotation, default)`` of a model field for a table entry (required: no default)."""
    required = entry.default is None and not entry.nullable and entry.derived == "required"
    return Annotated[Any, AfterValidator(_entry_check(entry))], ... if required else entry.default


def _section(name: str, entries: Mapping[str, Setting]) -> type[BaseModel]:
    fields = {key: _field(entry) for key, entry in entries.items()}
    return create_model(name, __config__=FORBID, **fields)


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _sweep_entries(prefix: str) -> dict[str, Setting]:
    return {
        name.removeprefix(prefix): entry
        for name, entry in SWEEP_SETTINGS.items()
        if name.startswith(prefix)
    }


ProbeModel = _section(
    "ProbeModel", {key.removeprefix("probe_"): SETTINGS[key] for key in PROBE_KEYS}
)
ObjectiveModel = _section("ObjectiveModel", _sweep_entries("objective."))
ResourcesModel = _section("ResourcesModel", _sweep_entries("resources."))
StorageModel = _section("StorageModel", _sweep_entries("storage."))


class ParamModel(BaseModel):
    """``search.<key>``: a float, int or categorical parameter (structure only; its bounds are
    checked against the learner, its ``estimators`` against the sweep, in ``spec.py``)."""

    model_config = FORBID

    type: Annotated[Any, AfterValidator(lambda v: choice(v, PARAM_TYPES, "parameter type"))]
    low: Any = None
    high: Any = None
    log: Annotated[Any, AfterValidator(boolean)] = False
    step: Any = None
    choices: Any = None
    estimators: Any = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamModel:
        given = self.model_fields_set
        if self.type == "categorical":
            for name in ("low", "high", "log", "step"):
                if name in given:
                    raise _problem("only for type float or int", name)
            if not isinstance(self.choices, list) or not self.choices:
                raise _problem(f"must be a non-empty list, got {describe(self.choices)}", "choices")
            for index, value in enumerate(self.choices):
                at = f"choices[{index}]"
                if value is not None and not isinstance(value, bool | int | float | str):
                    got = describe(value)
                    raise _problem(
                        f"must be a single value (number, string, true/false), got {got}", at
                    )
                if isinstance(value, float) and not math.isfinite(value):
                    raise _problem(f"must be finite, got {value!r}", at)
                if value in self.choices[:index]:
                    raise _problem(f"duplicate choice {value!r}", at)
            return self
        if "choices" in given:
            raise _problem("only for type categorical", "choices")
        for name in ("low", "high"):
            if name not in given:
                raise _problem("", name, missing=True)
        if self.type == "float":
            if "step" in given:
                raise _problem("only for type int", "step")
            self.low, self.high = self._bound(real, "low"), self._bound(real, "high")
        else:
            self.low, self.high = self._bound(integer, "low"), self._bound(integer, "high")
            try:
                self.step = integer(1 if self.step is None else self.step, 1)
            except PydanticCustomError as error:
                raise _problem(error.context["message"], "step") from None
        if self.low >= self.high:
            raise _problem(f"must be < high (got {fmt(self.low)} >= {fmt(self.high)})", "low")
        if self.log and self.low <= 0:
            raise _problem(f"must be > 0 with log: true (got {fmt(self.low)})", "low")
        if self.step is not None:
            if self.log and self.step != 1:
                raise _problem(f"must be 1 with log: true (got {self.step})", "step")
            if (self.high - self.low) % self.step:
                gap = self.high - self.low
                raise _problem(
                    f"high - low must be a multiple of step {self.step} (got {gap})", "high"
                )
        return self

    def _bound(self, check: Callable[[Any], Any], name: str) -> Any:
        try:
            return check(getattr(self, name))
        except PydanticCustomError as error:
            raise _problem(error.context["message"], name) from None


Section = Annotated[Any, BeforeValidator(_none_is_empty)]


def _run(key: str) -> tuple[Any, Any]:
    return _field(SETTINGS[key])


def _sweep(key: str) -> tuple[Any, Any]:
    return _field(SWEEP_SETTINGS[key])


SweepModel = create_model(
    "SweepModel",
    __config__=FORBID,
    name=(Annotated[Any, AfterValidator(valid_name)], ...),
    task=(Any, ...),
    task_settings=(Annotated[dict[str, Any], BeforeValidator(_none_is_empty)], {}),
    cell=_run("cell"),
    hidden=_run("hidden"),
    dtype=_run("dtype"),
    seed=_run("seed"),
    steps=_sweep("steps"),
    trials=_sweep("trials"),
    estimators=(Any, ...),
    fixed=(Annotated[dict[str, Any], BeforeValidator(_none_is_empty)], {}),
    search=(Annotated[dict[str, ParamModel], BeforeValidator(_none_is_empty)], {}),
    objective=(Annotated[ObjectiveModel, BeforeValidator(_none_is_empty)], ObjectiveModel()),
    sampler=_sweep("sampler"),
    pruner=_sweep("pruner"),
    estimator_choice=_sweep("estimator_choice"),
    prune_within=_sweep("prune_within"),
    min_complete_per_estimator=_sweep("min_complete_per_estimator"),
    probe=(Annotated[ProbeModel, BeforeValidator(_none_is_empty)], ProbeModel()),
    resources=(Annotated[ResourcesModel, BeforeValidator(_none_is_empty)], ResourcesModel()),
    checkpoint_every=(
        Annotated[Any, AfterValidator(_entry_check(SWEEP_SETTINGS["checkpoint_every"]))],
        None,
    ),
    max_retries=_sweep("max_retries"),
    lease_timeout=_sweep("lease_timeout"),
    workers=_sweep("workers"),
    pack=_sweep("pack"),
    storage=(Annotated[StorageModel, BeforeValidator(_none_is_empty)], StorageModel()),
)
# The models of each location, for "unknown key" hints (``search.<key>`` is a ParamModel).
MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): SweepModel,
    ("probe",): ProbeModel,
    ("objective",): ObjectiveModel,
    ("resources",): ResourcesModel,
    ("storage",): StorageModel,
}
TOP_KEYS = tuple(SweepModel.model_fields)
REQUIRED_KEYS = tuple(k for k, f in SweepModel.model_fields.items() if f.is_required())


def path_text(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("search", "lr", "low")`` -> ``search.lr.low``; ``("estimators", 0)`` -> ``[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known(loc: tuple[Any, ...]) -> tuple[str, ...]:
    if len(loc) == 2 and loc[0] == "search":
        return tuple(ParamModel.model_fields)
    model = MODELS.get(tuple(loc))
    return tuple(model.model_fields) if model is not None else ()


def validate(d: Any) -> BaseModel:
    """The structure of sweep ``d`` checked; ``SpecError`` naming the first problem."""
    if not isinstance(d, Mapping):
        raise SpecError(f"top level: must be a mapping, got {describe(d)}", "top level")
    for key in d:
        if not isinstance(key, str):
            raise SpecError(f"top level: keys must be strings, got {key!r}", "top level")
    try:
        return SweepModel.model_validate(dict(d))
    except ValidationError as errors:
        raise _spec_error(errors.errors()[0]) from None


def _spec_error(error: Mapping[str, Any]) -> SpecError:
    loc = tuple(error["loc"])
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "spec" and ctx.get("key"):
        loc += (ctx["key"],)
    path, parent = path_text(loc), loc[:-1]
    where = "at top level" if not parent else f"in {path_text(parent)}"
    if kind == "extra_forbidden" or (kind == "spec" and ctx.get("missing")) or kind == "missing":
        key = loc[-1]
        if kind == "extra_forbidden":
            known = _known(parent)
            hint = did_you_mean(str(key), known) or f" (known: {', '.join(known) or 'none'})"
            return SpecError(f"unknown key {key!r} {where}{hint}", path)
        return SpecError(f"missing required key {key!r} {where}", path)
    if kind == "spec":
        return SpecError(f"{path}: {ctx['message']}", path)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return SpecError(
            f"{path or 'top level'}: must be a mapping, got {describe(error['input'])}", path
        )
    if "[key]" in loc:  # a mapping's key that is not a string
        at = path_text(loc[: loc.index("[key]") - 1])
        return SpecError(f"{at}: keys must be strings, got {loc[loc.index('[key]') - 1]!r}", at)
    return SpecError(f"{path or 'top level'}: {error['msg']}", path)
