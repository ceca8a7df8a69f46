"""The measurement service: the one path from an artifact to numbers.

export (torch -> ONNX, cached) -> open in the target runtime -> evaluate (outputs, accuracy, fidelity)
-> time (interleaved, the one timing loop). The runner measures every pipeline record through it, and
stages reach the same service as ``ctx.measure`` to measure their candidates (a pruning step, a search
candidate), so a candidate is measured exactly like a record, and every result is cached by content.
No other module opens a runtime session to measure.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from compress.artifact import ONNX, Artifact, save_onnx
from compress.cache import Cache, cache_key
from compress.errors import CompressError, StageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.data import Dataset
    from compress.runtimes.base import Runtime
    from compress.runtimes.timing import LatencyStats, TimingPolicy


class Measure:
    """Cached measurement of artifacts on the pipeline's targets (see the module docstring).

    ``targets`` are target configs (``name``, ``runtime``, ``batch_size``, ``timing``, runtime options);
    ``evaluation`` the pipeline's ``evaluation:`` config; ``info``/``progress`` report to the user.
    """

    def __init__(self, cache: Cache, *, targets: Sequence[Any], dataset: "Dataset", export: Any,
                 evaluation: Any, base_dir: Path, remeasure: bool = False,
                 info: Callable[[str], None] | None = None, progress: Callable[[str, int], Any] | None = None):
        from compress.context import null_progress

        self.cache, self.targets, self.dataset = cache, list(targets), dataset
        self.export_cfg, self.evaluation, self.base_dir = export, evaluation, base_dir
        self.remeasure = remeasure
        self._info = info or (lambda m: None)
        self._progress = progress or null_progress
        self._outputs: dict[tuple[str, str], "np.ndarray"] = {}  # in-process memo: (model hash, result key)
        self.last_latency_cached = False  # whether the last latency() call came from the cache

    @classmethod
    def standalone(cls, dataset: "Dataset", export: Any, base_dir: Path, targets: Sequence[Any] | None = None
                   ) -> "Measure":
        """A service outside a pipeline run (a stage called directly): ``targets`` default to ONNX Runtime on
        CPU with its defaults; nothing is cached between processes (a scratch cache in the temp folder)."""
        import os
        import tempfile

        from compress.config import EvaluationConfig, default_target

        root = Path(tempfile.gettempdir()) / f"compress-measure-{os.getpid()}"
        return cls(Cache(root, enabled=False), targets=list(targets or [default_target()]), dataset=dataset,
                   export=export, evaluation=EvaluationConfig(), base_dir=base_dir)

    # -- targets ----------------------------------------------------------------------------------
    def target(self, name: str | Any | None = None) -> Any:
        """The target config called ``name`` (``None``: the first target; a config passes through)."""
        if name is None:
            return self.targets[0]
        if not isinstance(name, str):
            return name
        for t in self.targets:
            if t.name == name:
                return t
        raise CompressError(f"unknown target '{name}'", hint=f"targets: {', '.join(t.name for t in self.targets)}")

    # -- artifacts ----------------------------------------------------------------------------------
    def deployable(self, art: Artifact) -> Artifact:
        """The ONNX artifact that is measured and shipped: ``art`` itself, or its cached export."""
        if art.format == "onnx":
            return art
        key = cache_key(step="export", input=art.hash, export=self.export_cfg.model_dump(mode="json"))
        hit = self.cache.get_artifact(key)
        if hit is not None:
            return hit

        def build(wd: Path) -> Artifact:
            from compress.artifact import build_module
            from compress.export import export_onnx

            model = build_module(art, self.base_dir)
            export_onnx(model, art.input_specs, wd / ONNX, self.export_cfg)
            return save_onnx(wd / ONNX, wd, like=art, producer=f"{art.producer}:export", precision=art.precision)

        return self.cache.build_artifact(key, build, f"the ONNX export of {art.producer}")

    def runtime(self, target: str | Any | None = None) -> "Runtime":
        """The runtime plug-in of ``target``."""
        from compress.runtimes import get_runtime

        return get_runtime(self.target(target).runtime)

    def runnable(self, art: Artifact, target: str | Any | None = None) -> Artifact | None:
        """What ``target``'s runtime opens for ``art``: the artifact itself when the runtime runs its format,
        else its ONNX export; then the runtime's own preparation (e.g. ONNX -> OpenVINO IR), cached like any
        artifact. ``None`` when the runtime runs neither (an ONNX-only artifact on a torch target: "n/a")."""
        target = self.target(target)
        rt = self.runtime(target)
        if rt.runs(art.format):
            model = art
        elif rt.runs("onnx"):
            model = self.deployable(art)
        else:
            return None
        pkey = rt.prepare_key(model, target)
        if pkey is None:
            return model
        key = cache_key(step="prepare", input=model.hash, runtime=rt.name, versions=rt.versions(), prepare=pkey)
        hit = self.cache.get_artifact(key)
        return hit if hit is not None else self.cache.build_artifact(
            key, lambda wd: rt.prepare(model, target, wd), f"the {rt.name} preparation of {art.producer}")

    def facts(self, art: Artifact) -> dict[str, Any]:
        """Params, MACs (torch artifacts), sparsity, op histogram and per-layer weight precision (cached)."""
        dep = self.deployable(art)
        key = cache_key(step="facts", input=art.hash, onnx=dep.hash)
        facts = self.cache.get_json(key)
        if facts is None:
            from compress.facts import onnx_facts, torch_facts

            facts = onnx_facts(dep.path("onnx"))
            if art.format == "torch":
                from compress.artifact import build_module

                facts.update(torch_facts(build_module(art, self.base_dir), art.input_specs))
            self.cache.put_json(key, facts)
        return facts

    # -- quality ------------------------------------------------------------------------------------
    def _target_key(self, target: Any) -> dict[str, Any]:
        return target.model_dump(mode="json", exclude={"timing", "batch_size", "name"})

    def run_outputs(self, art: Artifact, target: str | Any | None = None
                    ) -> tuple["np.ndarray | None", dict[str, Any]]:
        """(outputs on the evaluation split, run info) of ``art`` in the target runtime (cached). Outputs
        are ``None`` (and the info says ``na``) when the target's runtime cannot run the artifact's format."""
        from compress.evaluation import run_outputs

        target = self.target(target)
        model = self.runnable(art, target)
        if model is None:
            return None, {"na": f"{target.runtime} runs {', '.join(self.runtime(target).formats)} artifacts; "
                                f"this one is {art.format} only", "session": {}, "optimized_ops": {}}
        ev = self.evaluation
        key = cache_key(step="evaluate", model=model.hash, target=self._target_key(target),
                        eval=ev.model_dump(mode="json"), data=self.dataset.fingerprint)
        memo = (model.hash, key)
        hit = None if self.remeasure else self.cache.get_json(key)
        if memo in self._outputs and hit is not None:
            return self._outputs[memo], hit
        outputs = None if hit is None else self.cache.get_array(key)  # sha256-verified, like every entry
        if hit is not None and outputs is not None:
            self._outputs[memo] = outputs
            return outputs, hit
        with self.cache.lock(key, f"the evaluation of {art.producer} on {target.name}"):
            if not self.remeasure:  # another run may have finished it while this one waited
                hit = self.cache.get_json(key)
                outputs = None if hit is None else self.cache.get_array(key)
                if hit is not None and outputs is not None:
                    self._outputs[memo] = outputs
                    return outputs, hit
            runtime = self.runtime(target)
            try:
                with runtime.open(model, target, base_dir=self.base_dir) as sess:
                    outputs = run_outputs(sess, self.dataset, ev.split, ev.batch_size, ev.max_samples,
                                          _fixed_batch(sess))
                    info = sess.info
                ops = runtime.optimized_op_counts(model, target)
            except CompressError:
                raise
            except Exception as e:  # noqa: BLE001 - a model the runtime cannot run: one line
                raise StageError(f"artifact {art.hash[:12]} ({art.producer}) does not run on target "
                                 f"'{target.name}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                 ) from e
            ints, floats = runtime.classify_kernels(ops)
            result = {"session": info, "optimized_ops": ops, "kernels": {"integer": ints, "float": floats}}
            self.cache.put_array(key, outputs)
            self.cache.put_json(key, result)
        self._outputs[memo] = outputs
        return outputs, result

    def kernels(self, art: Artifact, target: str | Any | None = None) -> tuple[dict[str, int], dict[str, int]]:
        """(integer kernels, float compute kernels) as ``target``'s runtime executes ``art`` (ORT: its
        optimized graph; OpenVINO: the compiled model's layer precisions); empty for n/a."""
        target = self.target(target)
        model = self.runnable(art, target)
        if model is None:
            return {}, {}
        return self.runtime(target).integer_kernels(model, target)

    def infer(self, model: Artifact | Path, feeds: Any = None, target: str | Any | None = None, n: int = 4,
              split: str = "eval") -> "np.ndarray":
        """Outputs of ``model`` (an artifact, or an ONNX file a stage just wrote) on ``feeds`` (default: the
        first ``n`` samples of ``split``) in ``target``'s runtime, with the target's options. Not cached: a
        stage's check that its output loads, runs and computes what it should."""
        import numpy as np

        from compress.data.dataset import n_samples, take

        target = self.target(target)
        if feeds is None:
            all_feeds, _ = self.dataset.split_feeds(split)
            feeds = take(all_feeds, np.arange(min(n, n_samples(all_feeds))))
        k = n_samples(feeds)
        with self.runtime(target).open(model, target, base_dir=self.base_dir) as sess:
            fixed = _fixed_batch(sess)
            if not fixed or fixed == k:
                return sess.infer(feeds)
            outs = []  # a fixed-batch model: chunks of its batch size, the tail padded by repetition
            for s in range(0, k, fixed):
                outs.append(sess.infer(take(feeds, np.minimum(np.arange(s, s + fixed), k - 1)))[: min(fixed, k - s)])
            return np.concatenate(outs)

    def onnx_kernels(self, path: Artifact | Path) -> tuple[dict[str, int], dict[str, int], str]:
        """(integer kernels, float compute kernels, "target 'name' (runtime)") of an ONNX model as the first
        ONNX-running target executes it: what a quantization stage checks its output with."""
        target = self.onnx_target()
        ints, floats = self.runtime(target).integer_kernels(path, target)
        return ints, floats, f"target '{target.name}' ({target.runtime})"

    def onnx_target(self) -> Any:
        """The first target whose runtime runs ONNX (what a stage checks its ONNX output on); ONNX Runtime
        with its defaults when no target does."""
        for t in self.targets:
            if self.runtime(t).runs("onnx"):
                return t
        from compress.runtimes.onnxruntime import OrtTarget

        return OrtTarget(name="onnxruntime-check")

    def outputs(self, art: Artifact, target: str | Any | None = None) -> "np.ndarray":
        """The artifact's outputs on the evaluation split, run in the target runtime (cached)."""
        return self.run_outputs(art, target)[0]

    def labels(self) -> "np.ndarray | None":
        ev = self.evaluation
        _, labels = self.dataset.split(ev.split)
        if labels is not None and ev.max_samples:
            labels = labels[: ev.max_samples]
        return labels

    def user_metric(self) -> Callable[..., float] | None:
        """The pipeline's ``evaluation.metric`` callable (``module:callable``), imported from its folder."""
        spec = self.evaluation.metric
        if spec is None:
            return None
        from compress.artifact import import_callable

        try:
            return import_callable(spec, self.base_dir)
        except (ImportError, AttributeError) as e:
            from compress.errors import ConfigError

            raise ConfigError(f"evaluation.metric: cannot import '{spec}': {type(e).__name__}: {e}") from e

    def evaluate(self, arts: Sequence[Artifact], target: str | Any | None = None,
                 reference: Artifact | None = None) -> list[dict[str, Any]]:
        """Per artifact: accuracy (with labels), the fidelity metrics vs ``reference``, sample count, the
        session's info, the runtime's optimized op histogram and its integer/float kernels; an artifact the
        target cannot run gets ``na`` (its reason) and no numbers."""
        from compress.evaluation import score

        ref = self.outputs(reference, target) if reference is not None else None
        labels = self.labels()
        task = self.evaluation.task
        metric = self.user_metric()
        results = []
        for art in arts:
            outputs, info = self.run_outputs(art, target)
            if outputs is None:
                results.append({"n": 0, "accuracy": None, **info})
                continue
            same = reference is not None and art.hash == reference.hash  # the reference itself: no fidelity
            results.append({**score(outputs, labels, None if same else ref, task=task, metric=metric),
                            "session": info["session"],
                            "optimized_ops": info["optimized_ops"], "kernels": info.get("kernels", {})})
        return results

    # -- speed --------------------------------------------------------------------------------------
    def latency(self, arts: Sequence[Artifact], target: str | Any | None = None,
                policy: "TimingPolicy | None" = None, label: str | None = None,
                names: Sequence[str] | None = None,
                until: Callable[[dict[str, "LatencyStats"]], bool] | None = None) -> list["LatencyStats | None"]:
        """Time all ``arts`` interleaved in one process on ``target`` (the one timing loop); cached on
        the runnable artifacts' hashes, the target and the policy. An artifact the target cannot run (an
        ONNX-only artifact on a torch target) gets ``None``.

        ``until`` (statistics keyed by ``names``, default "0", "1", ...) extends the measurement round by
        round until it answers True (e.g. a gate's confidence interval is decided); a cached result
        that does not satisfy it is measured again."""
        from compress.runtimes.timing import LatencyStats

        target = self.target(target)
        policy = policy or target.timing
        models = [self.runnable(a, target) for a in arts]
        keys = list(names) if names is not None else [str(i) for i in range(len(arts))]
        timed = [i for i, m in enumerate(models) if m is not None]
        out: list[LatencyStats | None] = [None] * len(arts)
        if not timed:
            self.last_latency_cached = True
            return out
        key = cache_key(step="latency", models=[models[i].hash for i in timed],
                        target=target.model_dump(mode="json", exclude={"timing"}),
                        timing=policy.model_dump(mode="json"), machine=_machine())
        cached = None if self.remeasure else self.cache.get_json(key)
        if cached is not None and len(cached) == len(timed):
            stats = [LatencyStats.model_validate(s) for s in cached]
            if until is None or until({keys[i]: st for i, st in zip(timed, stats)}):
                self.last_latency_cached = True
                for i, st in zip(timed, stats):
                    out[i] = st
                return out
        self.last_latency_cached = False
        with self.cache.lock(key, f"the timing on {target.name}"):  # concurrent runs time one at a time
            stats = self._time(key, [models[i] for i in timed], [keys[i] for i in timed], target, policy, label,
                               until)
        for i, st in zip(timed, stats):
            out[i] = st
        return out

    def _time(self, key, models, keys, target, policy, label, until) -> list["LatencyStats"]:
        from compress.data.dataset import repeat_to
        from compress.runtimes import measure_interleaved
        from compress.runtimes.timing import LatencyStats

        cached = None if self.remeasure else self.cache.get_json(key)  # finished while this run waited?
        if cached is not None and len(cached) == len(models):
            stats = [LatencyStats.model_validate(st) for st in cached]
            if until is None or until(dict(zip(keys, stats))):
                self.last_latency_cached = True
                return stats
        runtime = self.runtime(target)
        x, _ = self.dataset.split_feeds(self.evaluation.split)
        sessions, runners = [], {}
        try:
            for name, model in zip(keys, models):
                sess = runtime.open(model, target, base_dir=self.base_dir)
                sessions.append(sess)
                runners[name] = sess.runner(repeat_to(_inputs(x, model), _fixed_batch(sess) or target.batch_size))
            desc = label or f"timing {len(runners)} artifact(s) on {target.name} (interleaved)"
            with self._progress(desc, 1000) as bar:
                stats = measure_interleaved(runners, policy, progress=lambda f: bar.set(f * 1000)
                                            if hasattr(bar, "set") else None, until=until)
        finally:
            for sess in sessions:
                sess.close()
        out = [stats[k] for k in keys]
        self.cache.put_json(key, [st.model_dump(mode="json") for st in out])
        return out

    @staticmethod
    def speedup_ci(reference: "LatencyStats", other: "LatencyStats") -> tuple[list[float] | None, int]:
        """95% sign-test interval of the paired speed-up (compress/stats.py) and the rounds behind it."""
        from compress.runtimes.timing import paired_ratios
        from compress.stats import ratio_ci

        ci = ratio_ci(paired_ratios(reference, other))
        return ([round(ci.low, 4), round(ci.high, 4)] if ci.bounded else None), ci.n

    @staticmethod
    def speedup(reference: "LatencyStats", other: "LatencyStats") -> float:
        """Paired per-round median ratio when both were timed in the same rounds, else ratio of p50s."""
        from compress.runtimes.timing import paired_speedup

        paired = paired_speedup(reference, other)
        return paired if paired is not None else reference.p50_ms / other.p50_ms


def _fixed_batch(sess) -> int | None:
    shape = sess.info.get("input_shape") or []
    return shape[0] if shape and isinstance(shape[0], int) else None



def _inputs(x, art: Artifact):
    """The evaluation samples, or (for a one-input artifact with another input shape, e.g. one block of a
    network timed by the search's latency table) seeded standard-normal samples of its own shape."""
    import numpy as np

    shape = tuple(art.input_shape[1:])
    if isinstance(x, dict) or tuple(x.shape[1:]) == shape or len(art.input_shape) < 2:
        return x
    return np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)


def _machine() -> dict:
    """Part of every latency cache key, so a cache copied to another machine is re-timed, never reused."""
    from compress.runtimes.environment import machine_key

    return machine_key()
