"""Pipeline configuration: pydantic v2 models that reject unknown keys, YAML/JSON loading with line
numbers, and error messages that point at ``file:line:col field.path``.

Relative *input* paths in a pipeline (weights, data, user modules) resolve against the pipeline
file's folder; *output* paths (``output.dir``, ``output.cache_dir``) resolve against the working
directory, like any other CLI.

Only light imports here (pydantic, yaml, and the light config models of other modules): ``compress
validate`` must not load torch, nncf or onnxruntime.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from compress import zoo
from compress.calibration import CalibrationConfig
from compress.data import DataConfig
from compress.errors import ConfigError
from compress.export import ExportConfig
from compress.report.metrics import METRICS
from compress.report.metrics import names as metric_names
from compress.stages import get_stage, registry, suggest
from compress.stages.base import ONNX_FLOAT, TORCH_FLOAT
from compress.training import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


InputDType = Literal["float32", "float16", "int64", "int32", "bool"]


class InputSpec(_Strict):
    """One named model input. The first axis is the batch axis: a number, or a name (symbolic, e.g. 'batch')."""

    name: str = Field(..., min_length=1)
    shape: list[int | str] = Field(..., min_length=1, description="Batch axis first (int or a symbolic name); "
                                   "the other axes are positive ints.")
    dtype: InputDType = "float32"

    @model_validator(mode="after")
    def _dims(self) -> "InputSpec":
        first, rest = self.shape[0], self.shape[1:]
        if isinstance(first, int) and first <= 0:
            raise ValueError(f"input '{self.name}': the batch axis must be positive or a name, got {first}")
        bad = [d for d in rest if not isinstance(d, int) or d <= 0]
        if bad:
            raise ValueError(f"input '{self.name}': only the batch axis may be symbolic; the others must be "
                             f"positive ints, got {self.shape}")
        return self

    @property
    def example_shape(self) -> list[int]:
        """The shape with a symbolic batch axis read as 1."""
        return [self.shape[0] if isinstance(self.shape[0], int) else 1, *self.shape[1:]]


class ModelConfig(_Strict):
    """Where the model comes from: exactly one of ``zoo``, ``callable`` or ``onnx``; its inputs as
    ``input_shape`` (one float32 input, the shorthand) or ``inputs`` (named, typed)."""

    zoo: str | None = Field(None, description="Built-in architecture name (see `compress stages --zoo`).")
    callable: str | None = Field(None, description="'module:function' returning an nn.Module; the module is "
                                 "imported with the pipeline file's folder on sys.path.")
    onnx: str | None = Field(None, description="An .onnx file, for ONNX-only chains.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the builder.")
    weights: str | None = Field(None, description="State dict (.pt/.pth, loaded with weights_only=True) or "
                                ".safetensors file.")
    input_shape: list[int] | None = Field(None, min_length=2, description="Example input shape, batch first: "
                                          "the shorthand for one float32 input named input_name.")
    input_name: str = "input"
    inputs: list[InputSpec] | None = Field(None, min_length=1, description="Named, typed inputs "
                                           "[{name, shape, dtype}] (float32/float16/int64/int32/bool) in the order "
                                           "forward() takes them; data arrays are matched by name.")
    train: TrainConfig | None = Field(None, description="Train the baseline on data.train (once; cached). "
                                      "Used when no weights are given.")
    recalibrate_bn: bool = Field(False, description="Re-estimate BatchNorm statistics on data.train "
                                 "(for random-weight models used only for latency).")

    @field_validator("zoo")
    @classmethod
    def _known_zoo(cls, v: str | None) -> str | None:
        if v is not None and v not in zoo.ZOO:
            import difflib

            close = difflib.get_close_matches(v, zoo.names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown zoo model '{v}': {hint}known: {', '.join(zoo.names())}")
        return v

    @field_validator("callable")
    @classmethod
    def _callable_form(cls, v: str | None) -> str | None:
        if v is not None and ":" not in v:
            raise ValueError(f"must look like 'module:function', got '{v}'")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        given = [k for k in ("zoo", "callable", "onnx") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of model.zoo, model.callable or model.onnx"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.weights and self.train:
            raise ValueError("set model.weights or model.train, not both")
        if self.onnx and (self.weights or self.train or self.kwargs):
            raise ValueError("model.onnx takes no weights, kwargs or train: the ONNX file holds the model")
        if (self.input_shape is None) == (self.inputs is None):
            raise ValueError("set exactly one of model.input_shape (one float32 input) or model.inputs "
                             "([{name, shape, dtype}])")
        if self.inputs is not None:
            names = [i.name for i in self.inputs]
            if len(set(names)) != len(names):
                raise ValueError(f"model.inputs names must be unique, got {names}")
            self.input_shape = list(self.inputs[0].example_shape)
            self.input_name = self.inputs[0].name
        if any(d <= 0 for d in self.input_shape):
            raise ValueError(f"model.input_shape must be positive, got {self.input_shape}")
        return self

    def input_specs(self) -> list[dict[str, Any]]:
        """Every input as ``{name, shape, dtype}`` (the shorthand gives one float32 input)."""
        if self.inputs is None:
            return [{"name": self.input_name, "shape": list(self.input_shape), "dtype": "float32"}]
        return [i.model_dump() for i in self.inputs]

    def named_inputs(self) -> bool:
        """Whether the data must come as named arrays (several inputs, or one that is not float32)."""
        return self.inputs is not None and (len(self.inputs) > 1 or self.inputs[0].dtype != "float32")

    @property
    def kind(self) -> str:
        return ONNX_FLOAT if self.onnx else TORCH_FLOAT


def _runtime_tag(v: Any) -> str:
    """The discriminator of a target: its ``runtime`` (default ``onnxruntime``)."""
    if isinstance(v, dict):
        return str(v.get("runtime", "onnxruntime"))
    return str(getattr(v, "runtime", "onnxruntime"))


@lru_cache(maxsize=1)
def target_union() -> Any:
    """``targets:`` items: a union of every registered runtime's options model, discriminated on ``runtime``
    (default ``onnxruntime``), so every runtime rejects keys it does not know."""
    from pydantic import Discriminator, Tag

    from compress.runtimes.base import registry, runtime_class

    models = tuple(Annotated[runtime_class(n).Target, Tag(n)] for n in sorted(registry()))
    return Annotated[Union[models], Discriminator(_runtime_tag)]


def TargetConfig(**fields: Any) -> Any:  # noqa: N802 - reads like the class it used to be
    """A target built in code: ``TargetConfig(name="x", runtime="openvino", threads=1)`` validated into its
    runtime's options model (see :func:`parse_target`)."""
    return parse_target(fields)


def parse_target(raw: dict[str, Any], where: str = "target") -> Any:
    """Validate one target mapping outside a pipeline (``compress bench``); one-line ConfigError."""
    from pydantic import TypeAdapter

    from compress.runtimes.base import registry, suggest

    rt = _runtime_tag(raw)
    if rt not in registry():
        raise ConfigError(f"{where}.runtime: unknown runtime '{rt}': {suggest(rt)}")
    try:
        return TypeAdapter(target_union()).validate_python(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (where, *_clean_loc(err["loc"])))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key for runtime '{rt}' (`compress schema` lists the keys)"
        raise ConfigError(f"{loc}: {msg}") from None


def _target_keys(runtime: str) -> list[str]:
    from compress.runtimes.base import runtime_class

    return list(runtime_class(runtime).Target.model_fields)


def _check_runtimes(data: dict[str, Any], node: Any, path: Path) -> list[str]:
    """Unknown or uninstalled runtimes in ``targets:``, with a did-you-mean (before pydantic's union errors)."""
    from compress.runtimes.base import available, registry, suggest

    problems = []
    for i, t in enumerate(data.get("targets") or []):
        if not isinstance(t, dict):
            continue
        rt = _runtime_tag(t)
        pos = _locate(node, ("targets", i, "runtime"))
        where = f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)
        if rt not in registry():
            problems.append(f"{where} targets[{i}].runtime: unknown runtime '{rt}': {suggest(rt)}")
        elif not available(rt):
            problems.append(f"{where} targets[{i}].runtime: runtime '{rt}' is registered but its package is not "
                            f"installed")
    return problems


def default_target() -> Any:
    """The target when a pipeline names none: ONNX Runtime on CPU, 1 thread, full graph optimization."""
    from compress.runtimes.onnxruntime import OrtTarget

    return OrtTarget(name="ort-cpu")


class EvaluationConfig(_Strict):
    """What quality means for this model's outputs, and on which samples it is measured."""

    split: Literal["eval", "calibration", "train"] = "eval"
    batch_size: int = Field(256, ge=1)
    max_samples: int | None = Field(None, ge=1)
    task: Literal["classification", "embedding", "regression"] = Field(
        "classification", description="classification: outputs are class logits (accuracy = top-1 vs labels, "
        "top-5 too with more than 5 classes; agreement without labels); embedding / regression: outputs are "
        "vectors or values, compared with the baseline's (cosine, relative L2 error), no accuracy.")
    metric: str | None = Field(None, description="A user metric 'module:callable' called as fn(outputs, labels) "
                               "-> float (labels None without them); reported as metric (named) beside the rest.")

    @field_validator("metric")
    @classmethod
    def _metric_form(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or not all(v.partition(":")[::2])):
            raise ValueError(f"must look like 'module:callable', got '{v}'")
        return v


GateMetric = Literal[metric_names()]  # the gate metric registry: compress/report/metrics.py


class GateConfig(_Strict):
    """A release gate: ``metric`` of ``stage`` on ``target`` must be ``<= max``, ``>= min`` or, for
    ``latency_p50``, regress at most ``max_regression_pct`` percent.

    Metrics and units: compress/report/metrics.py (README "Release gates"). Relative metrics compare with the
    baseline, or with ``against:`` (a released .onnx or a previous report.json whose model still exists),
    which is then re-measured on this machine, interleaved with the candidate and on the same data.
    Latency gates decide from a confidence interval: pass, fail, or inconclusive (exit 4 with
    ``fail_on_unstable``) after the measurement has extended itself up to the timing budget.
    """

    metric: GateMetric
    max: float | None = None
    min: float | None = None
    max_regression_pct: float | None = Field(None, ge=0, description="latency_p50 only: the largest slowdown vs "
                                             "the reference, in percent, that still passes.")
    against: str | None = Field(None, description="Compare with this released model (.onnx) or previous "
                                "report.json instead of the baseline (relative metrics only).")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence of the interval latency gates "
                              "decide from.")
    stage: str = Field("final", description="Stage name, 'final' (the last stage) or 'baseline'.")
    target: str | None = Field(None, description="Target name; default: the first target.")

    @model_validator(mode="after")
    def _one_bound(self) -> "GateConfig":
        bounds = [b for b in ("max", "min", "max_regression_pct") if getattr(self, b) is not None]
        if len(bounds) != 1:
            raise ValueError(f"gate on '{self.metric}' needs exactly one of max, min or max_regression_pct"
                             + (f" (got {', '.join(bounds)})" if bounds else ""))
        if (self.metric == "latency_p50") != (self.max_regression_pct is not None):
            raise ValueError("max_regression_pct goes with metric latency_p50 (and latency_p50 takes "
                             "max_regression_pct); for absolute milliseconds use latency_p50_ms with max")
        if self.against is not None and not METRICS[self.metric].relative:
            rel = ", ".join(m.name for m in METRICS.values() if m.relative)
            raise ValueError(f"against: compares relative metrics ({rel}), not '{self.metric}'")
        if self.max is not None or self.min is not None:
            metric = METRICS[self.metric]
            (lo, hi), unit = metric.bounds, metric.kind
            bound, value = ("max", self.max) if self.max is not None else ("min", self.min)
            if not (lo <= value <= hi):
                raise ValueError(f"{bound}: {value:g} is out of range for {self.metric} ({unit}: {lo:g} to {hi:g})")
        return self


class RegressionConfig(_Strict):
    """When a stage counts as a regression *vs its own input* (same runtime, same evaluation samples).

    A regression is always printed loudly beside the table and written to the report; with
    ``on_regression: fail`` it also fails the run (exit 1) as a gate would."""

    min_speedup: float = Field(0.95, gt=0, description="Slower: the stage's output runs below this fraction of "
                               "its input's speed.")
    max_accuracy_drop: float = Field(0.5, ge=0, description="Less accurate: more than this many top-1 points "
                                     "lost (labelled data).")
    min_agreement: float = Field(95.0, ge=0, le=100, description="Unfaithful: top-1 agreement with the input's "
                                 "outputs below this percentage.")
    min_cosine: float = Field(0.99, ge=-1, le=1, description="Unfaithful: mean output cosine vs the input's "
                              "outputs below this.")


class OutputConfig(_Strict):
    dir: str | None = Field(None, description="Run folder; default runs/<pipeline name>.")
    cache_dir: str = Field(".compress-cache", description="Stage artifact cache, shared between runs.")
    html: bool = Field(True, description="Also write a self-contained report.html (charts as inline SVG).")


class StageSpecBase(_Strict):
    name: str | None = None


def _stage_spec(type_name: str) -> type[BaseModel]:
    cls = get_stage(type_name)
    return create_model(
        f"Stage_{type_name.replace('.', '_')}",
        __base__=StageSpecBase,
        type=(Literal[type_name], ...),  # type: ignore[valid-type]
        config=(cls.Config, Field(default_factory=cls.Config)),
        __doc__=cls.summary or cls.__doc__,
    )


@lru_cache(maxsize=1)
def pipeline_model() -> type[BaseModel]:
    """The pipeline model, with ``stages`` a discriminated union built from the stage registry."""
    specs = tuple(_stage_spec(t) for t in sorted(registry()))
    stage_union = Annotated[Union[specs], Field(discriminator="type")] if len(specs) > 1 else specs[0]

    class PipelineConfig(_Strict):
        """A compression pipeline: a model, data, targets, an ordered chain of stages and gates."""

        version: Literal[1] = 1
        name: str | None = None
        model: ModelConfig
        data: DataConfig = Field(default_factory=DataConfig)
        targets: list[target_union()] = Field(  # type: ignore[valid-type]
            default_factory=lambda: [default_target()], min_length=1,
            description="Runtimes to measure on; each entry's keys depend on its `runtime`.")
        export: ExportConfig = Field(default_factory=ExportConfig)
        evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
        calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
        stages: list[stage_union] = Field(default_factory=list)  # type: ignore[valid-type]
        gates: list[GateConfig] = Field(default_factory=list)
        output: OutputConfig = Field(default_factory=OutputConfig)
        fail_on_unstable: bool = Field(False, description="Exit 4 when a latency measurement is unstable.")
        on_regression: Literal["warn", "fail"] = Field(
            "warn", description="A stage that leaves the model slower (< 0.95x its input's speed), less "
            "accurate (> 0.5 points) or unfaithful (top-1 agreement < 95% or output cosine < 0.99 vs its input; "
            "thresholds in regression:) is always reported loudly; 'fail' also fails the run like a gate (exit 1).")
        regression: RegressionConfig = Field(default_factory=RegressionConfig)

        @model_validator(mode="after")
        def _evaluate_what_is_not_trained_on(self):
            """User data in a pipeline where nothing trains: the train share would be wasted, so by default
            it goes to evaluation (calibration 0.3, eval 0.7) unless data.splits is given."""
            d = self.data
            trains = self.model.train is not None or self.model.recalibrate_bn or any(
                get_stage(s.type).trains for s in self.stages)
            if d.source != "digits" and "splits" not in d.model_fields_set and not trains:
                from compress.data import SplitConfig

                d.splits = SplitConfig(train=0.0, calibration=0.3, eval=0.7)
            return self

        @field_validator("targets")
        @classmethod
        def _unique_targets(cls, v: list[Any]) -> list[Any]:
            names = [t.name for t in v]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"target names must be unique, repeated: {', '.join(sorted(dup))}")
            return v

        @model_validator(mode="after")
        def _names_and_refs(self):
            seen: set[str] = set()
            for i, s in enumerate(self.stages):
                if s.name is None:
                    s.name = f"{i + 1}-{s.type}"
                if s.name in seen or s.name in ("baseline", "final"):
                    raise ValueError(f"stages[{i}].name '{s.name}' is repeated or reserved; give it a unique name")
                seen.add(s.name)
            targets = {t.name for t in self.targets}
            for i, g in enumerate(self.gates):
                if g.stage not in seen | {"baseline", "final"}:
                    raise ValueError(f"gates[{i}].stage '{g.stage}' is not a stage name; "
                                     f"{did_you_mean(g.stage, ['baseline', 'final', *seen])}use one of: "
                                     f"{', '.join(['baseline', 'final', *seen])}")
                if g.target is not None and g.target not in targets:
                    raise ValueError(f"gates[{i}].target '{g.target}' is not a target; "
                                     f"{did_you_mean(g.target, targets)}use one of: {', '.join(sorted(targets))}")
            return self

    return PipelineConfig


# --------------------------------------------------------------------------------------------------
# Loading with locations


def _locate(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int, int] | None:
    """Line/column (1-based) of the deepest node along ``loc`` in a composed YAML tree."""
    best = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = v
                    best = (k.start_mark.line + 1, k.start_mark.column + 1)
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = (node.start_mark.line + 1, node.start_mark.column + 1)
        else:
            return best
    return best


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's discriminator tags (``stages.0.quantize.ptq.config``, ``targets.0.openvino.threads``)
    and wrapper names."""
    from compress.runtimes.base import registry as runtimes

    types = set(registry()) | set(runtimes())
    return tuple(p for p in loc if not (isinstance(p, str) and (p in types or p.startswith("function-"))))


def did_you_mean(word: str, choices: Any) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _keys_at(loc: tuple[Any, ...], data: Any) -> list[str]:
    """The keys the pipeline schema allows at ``loc`` (a path into ``data``), for did-you-mean."""
    import typing

    def model_of(tp: Any, node: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            return model_of(typing.get_args(tp)[0], node)
        if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if isinstance(node, dict) and "type" in node:  # the stage union: pick by its discriminator
                for a in options:
                    field = getattr(a, "model_fields", {}).get("type")
                    if field is not None and node["type"] in typing.get_args(field.annotation):
                        return a
            for a in options:
                if isinstance(a, type) and issubclass(a, BaseModel):
                    return a
            return options[0] if options else None
        return tp

    tp: Any = pipeline_model()
    node = data
    for part in loc:
        tp = model_of(tp, node)
        if isinstance(part, int):
            if typing.get_origin(tp) is not list or not isinstance(node, list) or part >= len(node):
                return []
            tp, node = typing.get_args(tp)[0], node[part]
            continue
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
            return []
        tp, node = tp.model_fields[part].annotation, node.get(part) if isinstance(node, dict) else None
    tp = model_of(tp, node)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def read_document(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse YAML (JSON is valid YAML) into data plus the node tree used for error locations."""
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not "
                          f"UTF-8); a pipeline is a YAML or JSON file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the pipeline file: {e.strerror or e}") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it contains NUL bytes); a pipeline is a YAML or JSON file")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    return data, node


class LoadedConfig:
    """A validated pipeline plus where it came from (for relative paths and error messages)."""

    def __init__(self, config: Any, path: Path, node: yaml.Node | None):
        self.config = config
        self.path = path.resolve()
        self.display = str(path)
        self.base_dir = self.path.parent
        self._node = node

    def where(self, *loc: Any) -> str:
        pos = _locate(self._node, loc)
        return f"{self.display}:{pos[0]}:{pos[1]}" if pos else self.display

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def name(self) -> str:
        return self.config.name or self.path.stem


def load_pipeline(path: str | Path) -> LoadedConfig:
    """Read and validate a pipeline file; raise :class:`ConfigError` listing every problem found."""
    path = Path(path)
    data, node = read_document(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1:1: a pipeline must be a mapping with at least a 'model' section")
    problems: list[str] = []
    for i, st in enumerate(data.get("stages") or []):
        if isinstance(st, dict) and "type" in st and st["type"] not in registry():
            pos = _locate(node, ("stages", i, "type"))
            problems.append(f"{path}:{pos[0]}:{pos[1]} stages[{i}].type: unknown stage type "
                            f"'{st['type']}': {suggest(str(st['type']))}")
    problems += _check_runtimes(data, node, path)
    if not problems:
        try:
            cfg = pipeline_model().model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                loc = _clean_loc(err["loc"])
                pos = _locate(node, loc)
                where = f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)
                msg = err["msg"].removeprefix("Value error, ")
                ref = re.match(r"(gates|stages|targets)\[(\d+)\]\.(\w+) ", msg) if not loc else None
                if ref:  # a cross-field rule of the whole pipeline: point at the field it names
                    loc = (ref.group(1), int(ref.group(2)), ref.group(3))
                    pos = _locate(node, loc)
                    where = f"{path}:{pos[0]}:{pos[1]}" if pos else str(path)
                    msg = msg[ref.end():]
                if err["type"] == "extra_forbidden":
                    known = _keys_at(loc[:-1], data)
                    runtime = ""
                    if len(loc) == 3 and loc[0] == "targets" and isinstance(data["targets"][loc[1]], dict):
                        rt = _runtime_tag(data["targets"][loc[1]])  # each runtime has its own keys
                        known, runtime = _target_keys(rt), f" for runtime '{rt}'"
                    msg = f"unknown key '{loc[-1]}'{runtime}: {did_you_mean(str(loc[-1]), known)}" + (
                        f"known keys: {', '.join(known)}" if known else "`compress schema` lists the keys")
                elif err["type"] == "literal_error" and isinstance(err.get("input"), str):
                    choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                    msg = f"'{err['input']}' is not allowed: {did_you_mean(err['input'], choices)}use one of: " \
                          f"{', '.join(choices)}"
                problems.append(f"{where} {_dotted(loc)}: {msg}")
    if problems:
        raise ConfigError("\n".join(problems))
    loaded = LoadedConfig(cfg, path, node)
    check_chain(loaded)
    return loaded


def check_chain(loaded: LoadedConfig) -> list[str]:
    """Walk the stage chain with each stage's accepted/produced kinds; return the kinds in order."""
    cfg = loaded.config
    kind = cfg.model.kind
    kinds = [kind]
    problems = []
    prev = "the model"
    for i, spec in enumerate(cfg.stages):
        stage_cls = get_stage(spec.type)
        earlier = ["baseline", *(s.name for s in cfg.stages[:i])]
        for ref in stage_cls.references(spec.config):
            if ref not in earlier:
                problems.append(f"{loaded.where('stages', i, 'config')} stages[{i}] ({spec.type} '{spec.name}'): "
                                f"refers to '{ref}', which is not an earlier stage; use one of: {', '.join(earlier)}")
        reason = stage_cls.reject_reason(spec.config, kind)
        if reason:
            problems.append(f"{loaded.where('stages', i, 'type')} stages[{i}] ({spec.type} '{spec.name}'): "
                            f"{reason} (from {prev})")
        else:
            kind = stage_cls.output_kind(spec.config, kind)
        kinds.append(kind)
        prev = f"stage '{spec.name}'"
    if problems:
        raise ConfigError("\n".join(problems))
    return kinds


def check_paths(loaded: LoadedConfig) -> None:
    """File-existence checks that need no model: weights, onnx, data files."""
    cfg = loaded.config
    problems = []
    for field in ("weights", "onnx"):
        rel = getattr(cfg.model, field)
        if rel and not loaded.resolve(rel).exists():
            problems.append(f"{loaded.where('model', field)} model.{field}: '{rel}' not found (relative paths "
                            f"resolve against {loaded.base_dir})")
    if cfg.data.path and not loaded.resolve(cfg.data.path).exists():
        problems.append(f"{loaded.where('data', 'path')} data.path: '{cfg.data.path}' not found (relative paths "
                        f"resolve against {loaded.base_dir})")
    cal = cfg.calibration.path
    if cal and not loaded.resolve(cal).exists():
        problems.append(f"{loaded.where('calibration', 'path')} calibration.path: '{cal}' not found (relative paths "
                        f"resolve against {loaded.base_dir}; see calibration/README.md)")
    for i, g in enumerate(cfg.gates):
        if g.against and not loaded.resolve(g.against).is_file():
            problems.append(f"{loaded.where('gates', i, 'against')} gates[{i}].against: '{g.against}' not found "
                            f"(a released model.onnx or a previous report.json; relative paths resolve against "
                            f"{loaded.base_dir})")
    if problems:
        raise ConfigError("\n".join(problems))


def json_schema() -> dict[str, Any]:
    return pipeline_model().model_json_schema()
