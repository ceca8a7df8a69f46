"""Run a pipeline: baseline -> stages in order -> export, evaluate and time every artifact on every
target -> report -> gates.

Latency is measured *interleaved*: all artifacts of the chain are timed round-robin in one process
per target (``measure_interleaved``), so speed-ups are ratios taken under the same machine load.
Accuracy is measured on each artifact as soon as it exists, from the exported ONNX in the target
runtime. Everything finished is cached by content hash; a re-run recomputes nothing.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from compress import __version__
from compress.artifact import Artifact, copy_onnx
from compress.cache import Cache, cache_key
from compress.config import LoadedConfig
from compress.context import StageContext
from compress.errors import CompressError, StageError
from compress.measure import Measure
from compress.preflight import output_dir as output_dir_of
from compress.report.model import ArtifactInfo, Measurement, Report, StageRecord
from compress.ui import UI



class Runner:
    def __init__(self, loaded: LoadedConfig, ui: UI | None = None, *, use_cache: bool = True,
                 remeasure: bool = False, output_dir: str | None = None):
        self.loaded, self.cfg = loaded, loaded.config
        self.ui = ui or UI(quiet=True)
        self.cache = Cache(Path(self.cfg.output.cache_dir), enabled=use_cache, warn=self.ui.warn, info=self.ui.info)
        self.remeasure = remeasure
        self._out_override = output_dir
        self.out_dir = output_dir_of(loaded, output_dir)
        self.warnings: list[str] = []
        self.regressions: list[dict[str, Any]] = []  # stages that made a model slower / less accurate
        self._counts: dict[str, dict] = {}  # artifact hash -> {macs, params}, inherited by ONNX children
        self._artifacts: dict[str, Artifact] = {}  # record name -> its artifact (measured through self.measure)

    # ---------------------------------------------------------------------------------------------
    def run(self) -> Report:
        from compress.preflight import preflight
        from compress.runtimes.environment import accelerators, fingerprint

        started = time.monotonic()
        checked = preflight(self.loaded, self._out_override, create=True)  # everything that needs no training
        self.dataset = ds = checked.dataset
        for note in checked.notes:
            self.ui.warn(note)
        for orphan in self.cache.clean_tmp():
            self.ui.detail(f"removed an orphaned cache temp folder (a killed run's): {orphan}")
        self.measure = Measure(self.cache, targets=self.cfg.targets, dataset=ds, export=self.cfg.export,
                               evaluation=self.cfg.evaluation, base_dir=self.loaded.base_dir,
                               remeasure=self.remeasure, info=self.ui.info, progress=self.ui.progress)
        self.ui.info(f"data: {ds.source_desc}, {', '.join(f'{k} {len(v)}' for k, v in ds.splits.items())} "
                     f"(fingerprint {ds.fingerprint[:12]})")
        rng = ds.input_range()
        self.ui.info(f"data: inputs the model sees range [{rng['min']:.4g}, {rng['max']:.4g}] (mean {rng['mean']:.3g}, "
                     f"std {rng['std']:.3g}); data.normalize: {self.cfg.data.normalize}")
        from compress.stages import get_stage as _stage_cls

        calibrates = not self.cfg.calibration.path and any(
            _stage_cls(s.type).uses_calibration for s in self.cfg.stages)
        for w in ds.split_warnings(calibrates=calibrates):
            self.ui.warn(w)
            self._warn(w)

        records: list[StageRecord] = []
        # baseline
        from compress.baseline import baseline_key_parts, build_baseline

        key = cache_key(**baseline_key_parts(self.loaded, ds.fingerprint))
        art, hit, secs = self._cached_artifact(key, "baseline", lambda wd: build_baseline(
            self.loaded, ds, wd, self.ui.progress, self.ui.info,
            checkpoint=self.cache.root / "checkpoints" / key / "baseline.pt"))  # a killed training resumes
        shutil.rmtree(self.cache.root / "checkpoints" / key, ignore_errors=True)
        records.append(self._record("baseline", "baseline", {}, art, hit, secs))
        # stages
        from compress.stages import get_stage

        calib = self.cfg.calibration.model_dump(mode="json")
        if self.cfg.calibration.path:  # key on the calibration data itself, not just its path
            from compress.calibration import read_calibration_set

            calib["sha256"] = read_calibration_set(self.cfg.calibration.path, self.loaded.base_dir)[1]["sha256"]
        named = {"baseline": art}
        for spec in self.cfg.stages:
            stage = get_stage(spec.type)(spec.config)
            refs = {r: named[r].hash for r in stage.references(spec.config)}
            key = cache_key(step="stage", type=spec.type, config=spec.config.model_dump(mode="json"),
                            input=art.hash, data=ds.fingerprint,
                            calibration=calib if stage.uses_calibration else None, **({"refs": refs} if refs else {}))
            ctx_base = dict(dataset=ds, export=self.cfg.export, base_dir=self.loaded.base_dir, stage_name=spec.name,
                            calibration=self.cfg.calibration, measure=self.measure, artifacts=dict(named),
                            checkpoint_dir=self.cache.root / "checkpoints" / key,
                            log=lambda m, n=spec.name: self.ui.info(f"  [{n}] {m}"), progress=self.ui.progress)

            def build(wd: Path, stage=stage, prev=art, ctx_base=ctx_base) -> Artifact:
                return stage.run(prev, StageContext(work_dir=wd, **ctx_base))

            art, hit, secs = self._cached_artifact(key, f"{spec.name} ({spec.type})", build, stage_type=spec.type)
            shutil.rmtree(self.cache.root / "checkpoints" / key, ignore_errors=True)
            named[spec.name] = art
            records.append(self._record(spec.name, spec.type, spec.config.model_dump(mode="json"), art, hit, secs))
    
        refs = self._references(self._artifacts[records[0].name])  # released models named by gates' against:
        # evaluation (quality) and latency, per target
        for target in self.cfg.targets:
            self._evaluate_all(target, records)
            self._evaluate_references(target, records, refs)
            self._time_all(target, records, refs)
        self._compare(records)
        peaks = self._efficiency([*records, *refs])

        report = Report(
            tool_version=__version__, pipeline=str(self.loaded.path), pipeline_name=self.loaded.name,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            environment=fingerprint(gpu=accelerators(self.cfg.targets)), data=ds.describe(),
            targets=[t.model_dump(mode="json") for t in self.cfg.targets],
            evaluation=_evaluation_info(self.cfg.evaluation),
            baseline=records[0], stages=records[1:], warnings=self.warnings, references=refs, peak=peaks,
        )
        from compress.report.gate import check_gates

        report.gates = check_gates(report, self.cfg.gates, self.cfg.targets[0].name)
        if self.cfg.on_regression == "fail":
            from compress.report.model import GateResult

            report.gates += [GateResult(**r, passed=False) for r in self.regressions]
        unstable = any(m.latency and m.latency.unstable for r in records for m in r.measurements.values())
        inconclusive = [g for g in report.gates if g.status == "inconclusive"]
        report.warnings += [f"gate {g.metric} ({g.stage}, {g.target}) is INCONCLUSIVE: {g.detail}" for g in inconclusive]
        if any(g.status == "fail" for g in report.gates):
            report.status = "gate_failed"
        elif (unstable or inconclusive) and self.cfg.fail_on_unstable:
            report.status = "unstable"
        self._write(report)
        self.ui.detail(f"run took {time.monotonic() - started:.1f} s")
        return report

    # ---------------------------------------------------------------------------------------------
    def _cached_artifact(self, key: str, label: str, build, stage_type: str = "baseline"):
        t0 = time.monotonic()
        art = self.cache.get_artifact(key)
        if art is not None:
            self.ui.info(f"[green]✓[/green] {label}: [dim]cached, not re-run[/dim]")
            return art, True, 0.0
        self.ui.info(f"[bold]▶[/bold] {label}")
        try:
            art = self.cache.build_artifact(key, build, label)
        except CompressError as e:
            if label != "baseline" and not e.message.startswith(("stage", label.split()[0])):
                e.message = f"stage '{label.split()[0]}' ({stage_type}): {e.message}"
            raise
        except Exception as e:  # noqa: BLE001 - a stage bug or library failure: one line, traceback with -v
            self.ui.detail(traceback.format_exc())
            raise StageError(f"stage '{label}' failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                             hint="re-run with -v for the traceback; finished stages stay cached") from e
        secs = round(time.monotonic() - t0, 2)
        self.ui.info(f"[green]✓[/green] {label}: done in {secs} s")
        return art, False, secs

    def _record(self, name: str, type_: str, config: dict, art: Artifact, hit: bool, secs: float) -> StageRecord:
        try:
            dep = self.measure.deployable(art)
        except CompressError as e:
            e.message = f"after '{name}': {e.message}"
            raise
        facts = self.measure.facts(art)
        if art.parent in self._counts:  # ONNX artifacts inherit MACs (and, once quantized, params) from their parent
            parent = self._counts[art.parent]
            facts = {**facts, "macs": facts.get("macs") or parent["macs"]}
            if art.precision != "float32":  # an initializer count would include scales and zero points
                facts["params"] = parent["params"]
        self._counts[art.hash] = {"macs": facts.get("macs"), "params": facts.get("params")}
        self._artifacts[name] = art
        if art.facts.get("random_weights"):
            self._warn("the baseline has random weights: accuracy numbers mean nothing (set model.weights or "
                       "model.train)")
        return StageRecord(
            name=name, type=type_, config=config, cache_hit=hit, seconds=secs,
            artifact=ArtifactInfo(hash=art.hash, format=art.format, precision=art.precision,
                                  onnx_path=str(dep.path("onnx")), size_bytes=dep.size_bytes,
                                  params=facts.get("params"), macs=facts.get("macs"),
                                  sparsity=facts.get("sparsity"), layer_precision=facts.get("layer_precision", {})),
            facts={**art.facts, "onnx_ops": facts.get("ops", {})},
        )

    def _regression(self, stage: str, target: str, metric: str, op: str, threshold: float, observed: float,
                    detail: str) -> None:
        margin = (threshold - observed) if op == "<=" else (observed - threshold)
        self.regressions.append({"metric": metric, "stage": stage, "target": target, "op": op,
                                 "threshold": threshold, "observed": observed, "margin": round(margin, 6),
                                 "detail": f"on_regression: fail — {detail}"})

    def _warn(self, msg: str) -> None:
        """Collected into the report and printed loudly beside the result table."""
        if msg not in self.warnings:
            self.warnings.append(msg)

    # ---------------------------------------------------------------------------------------------
    def _evaluate_all(self, target, records: list[StageRecord]) -> None:
        from compress.evaluation import FIDELITY, fidelity

        arts = [self._artifacts[r.name] for r in records]
        results = self.measure.evaluate(arts, target, reference=arts[0])
        outputs = [self.measure.outputs(a, target) for a in arts]  # cached: fidelity vs each stage's input
        for i, (rec, res) in enumerate(zip(records, results)):
            rec.measurements[target.name] = Measurement(
                target=target.name, accuracy=res["accuracy"], accuracy_top5=res.get("accuracy_top5"),
                metric=res.get("metric"), **{k: res.get(k) for k in FIDELITY},
                vs_input=fidelity(outputs[i], outputs[i - 1])
                if i and outputs[i] is not None and outputs[i - 1] is not None else {},
                n_eval=res["n"], session=res["session"], optimized_ops=res["optimized_ops"],
                kernels=res.get("kernels", {}), na=res.get("na"))

    def _references(self, baseline: Artifact) -> list[StageRecord]:
        """One record per released model that a gate compares with (``against:``), re-measured here."""
        from compress import release
        from compress.runtimes.environment import fingerprint

        refs: list[StageRecord] = []
        for i, g in enumerate(self.cfg.gates):
            if g.against is None or any(r.name == g.against for r in refs):
                continue
            art, info = release.load(g.against, self.loaded, self.cache, baseline,
                                     f"{self.loaded.where('gates', i, 'against')} gates[{i}].against")
            rec = self._record(g.against, "reference", {}, art, False, 0.0)
            rec.facts["reference"] = {k: v for k, v in info.items() if k != "environment"}
            if info.get("environment"):
                rec.facts["source_environment"] = info["environment"]
            note = release.machine_note(info, fingerprint())
            if note:
                rec.warnings.append(note)
                self._warn(note)
            refs.append(rec)
        return refs

    def _efficiency(self, records: list[StageRecord]) -> dict[str, Any]:
        """This machine's peak MAC rate per target (compress/peak.py, cached per machine) and every record's
        efficiency = MACs / p50 / peak for its precision."""
        from compress.peak import efficiency, peak
        from compress.runtimes.environment import fingerprint

        env, peaks = fingerprint(), {}
        for t in self.cfg.targets:
            try:
                peaks[t.name] = p = peak(self.measure, t, env)
            except Exception as e:  # noqa: BLE001 - a runtime without QLinearConv: report it, keep the run
                self._warn(f"peak MAC rate on {t.name} not measured ({type(e).__name__}: {str(e)[:120]}); "
                           f"no efficiency figures")
                continue
            for rec in records:
                m = rec.measurements.get(t.name)
                if m and m.latency:
                    m.efficiency = efficiency(rec.artifact.macs, m.latency.p50_ms, rec.artifact.precision, p["gmacs"])
        return peaks

    def _evaluate_references(self, target, records: list[StageRecord], refs: list[StageRecord]) -> None:
        """Each released model on this run's data, in this target's runtime, and every record's fidelity
        to it (``Measurement.vs_reference``)."""
        from compress.evaluation import FIDELITY, fidelity

        for ref in refs:
            art = self._artifacts[ref.name]
            res = self.measure.evaluate([art], target, reference=self._artifacts[records[0].name])[0]
            ref.measurements[target.name] = Measurement(
                target=target.name, accuracy=res["accuracy"], **{k: res.get(k) for k in FIDELITY},
                n_eval=res["n"], session=res["session"], optimized_ops=res["optimized_ops"])
            ref_out = self.measure.outputs(art, target)
            for rec in records:
                out = self.measure.outputs(self._artifacts[rec.name], target)
                if out is None or ref_out is None:  # n/a on this target (e.g. ONNX on a torch target)
                    continue
                if out.shape != ref_out.shape:
                    raise CompressError(f"gates: against '{ref.name}' gives outputs of shape {ref_out.shape[1:]}, "
                                        f"'{rec.name}' {out.shape[1:]}: not the same task")
                rec.measurements[target.name].vs_reference[ref.name] = fidelity(out, ref_out)

    def _time_all(self, target, records: list[StageRecord], refs: list[StageRecord] = ()) -> None:
        from compress.report.gate import latency_questions, measurement_decided

        timed = [*records, *refs]  # released models are timed interleaved with the candidates
        arts = [self._artifacts[r.name] for r in timed]
        names = {"baseline": records[0].name, "final": records[-1].name, **{r.name: r.name for r in timed}}
        questions = latency_questions(self.cfg.gates, target.name, self.cfg.targets[0].name, names)
        until = (lambda stats: measurement_decided(questions, stats)) if questions else None
        stats = self.measure.latency(arts, target, label=f"timing {len(arts)} artifact(s) on {target.name} "
                                     f"(interleaved)", names=[r.name for r in timed], until=until)
        for rec, st in zip(timed, stats):
            rec.measurements[target.name].latency = st
        base = records[0].measurements[target.name].latency
        for ref in refs:
            m = ref.measurements[target.name]
            if base is None or m.latency is None:  # n/a on this target
                continue
            m.speedup_vs_baseline = round(Measure.speedup(base, m.latency), 4)
            m.speedup_ci, m.speedup_rounds = Measure.speedup_ci(base, m.latency)
        if self.measure.last_latency_cached:
            self.ui.info(f"[green]✓[/green] latency on {target.name}: [dim]cached, not re-measured "
                         f"(--remeasure to time again)[/dim]")
        else:
            self.ui.info(f"[green]✓[/green] latency on {target.name}: {len(records)} artifact(s) timed interleaved")

    def _compare(self, records: list[StageRecord]) -> None:
        """Speed-ups vs baseline and vs each stage's input; loud warnings when a stage made things worse."""
        reg = self.cfg.regression
        for t in self.cfg.targets:
            base = records[0].measurements[t.name]
            prev = base
            for rec in records:
                m = rec.measurements[t.name]
                if m.latency and base.latency:
                    m.speedup_vs_baseline = round(Measure.speedup(base.latency, m.latency), 4)
                    m.speedup_vs_previous = round(Measure.speedup(prev.latency, m.latency), 4) if prev.latency else None
                    m.speedup_ci, m.speedup_rounds = Measure.speedup_ci(base.latency, m.latency)
                if rec is not records[0]:
                    self._check_fidelity(rec, t.name, m, prev)
                    if m.speedup_vs_previous is not None and m.speedup_vs_previous < reg.min_speedup:
                        msg = (f"stage '{rec.name}' made the model SLOWER on {t.name}: p50 "
                               f"{prev.latency.p50_ms:.3f} -> {m.latency.p50_ms:.3f} ms "
                               f"({m.speedup_vs_previous:.2f}x of its input)")
                        rec.warnings.append(msg)
                        self._warn(msg)
                        self._regression(rec.name, t.name, "speedup_vs_input", ">=", reg.min_speedup,
                                         m.speedup_vs_previous, msg)
                    if m.accuracy is not None and prev.accuracy is not None and \
                            prev.accuracy - m.accuracy > reg.max_accuracy_drop:
                        msg = (f"stage '{rec.name}' made the model LESS ACCURATE on {t.name}: "
                               f"{prev.accuracy:.2f}% -> {m.accuracy:.2f}% ({m.accuracy - prev.accuracy:+.2f} points)")
                        rec.warnings.append(msg)
                        self._warn(msg)
                        self._regression(rec.name, t.name, "accuracy_drop_vs_input", "<=", reg.max_accuracy_drop,
                                         round(prev.accuracy - m.accuracy, 4), msg)
                if m.latency and m.latency.unstable:
                    msg = (f"latency of '{rec.name}' on {t.name} is unstable (robust CV {m.latency.robust_cv:.2f} > "
                           f"{t.timing.cv_threshold}): its samples spread widely (a busy or frequency-scaling "
                           f"machine); speed-ups pair interleaved rounds, but treat them with care")
                    rec.warnings.append(msg)
                    self._warn(msg)
                prev = m

    def _check_fidelity(self, rec: StageRecord, target: str, m: Measurement, prev: Measurement) -> None:
        """Loud when a stage is unfaithful to its input (top-1 agreement or output cosine below the
        ``regression:`` thresholds) or when its quantized output runs mostly as float kernels.

        Fidelity is checked for every stage on unlabelled data; with labels, only for stages that do not
        train (quantizers, folding, export), whose job is to keep the function: a stage that fine-tunes
        is judged by its labelled accuracy."""
        from compress.kernels import compute_layers
        from compress.stages import get_stage

        reg, v = self.cfg.regression, m.vs_input
        trains = get_stage(rec.type).trains
        if v and not (m.accuracy is not None and trains):
            checks = [("agreement", reg.min_agreement, "top-1 agreement", "{:.2f}%"),
                      ("cosine", reg.min_cosine, "output cosine", "{:.4f}")]
            for key, threshold, what, fmt in checks:
                value = v.get(key)
                if value is not None and value < threshold:
                    msg = (f"stage '{rec.name}' is UNFAITHFUL to its input on {target}: {what} "
                           f"{fmt.format(value)} < {fmt.format(threshold)} (regression.min_{key}) on {m.n_eval} "
                           f"samples; its outputs no longer match what it was given")
                    rec.warnings.append(msg)
                    self._warn(msg)
                    self._regression(rec.name, target, f"{key}_vs_input", ">=", threshold, value, msg)
        if rec.artifact.precision != "float32" and m.optimized_ops:
            ints, floats = compute_layers(m.optimized_ops)
            if floats > ints:
                msg = (f"stage '{rec.name}' runs MOSTLY IN FLOAT on {target}: only {ints} of {ints + floats} compute "
                       f"layers execute as integer kernels in the runtime's optimized graph, whatever the quantizer "
                       f"annotated")
                rec.warnings.append(msg)
                self._warn(msg)

    def _write(self, report: Report) -> None:
        from compress.report.markdown import render_markdown

        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "report.json").write_text(report.model_dump_json(indent=2))
        (self.out_dir / "report.md").write_text(render_markdown(report))
        if self.cfg.output.html:
            from compress.report.html import render_html

            (self.out_dir / "report.html").write_text(render_html(report))
        final_onnx = Path(report.records()[-1].artifact.onnx_path)
        copy_onnx(final_onnx, self.out_dir)  # with its external data file(s), if it has any
        self.report_path = self.out_dir / "report.json"


def _evaluation_info(ev) -> dict[str, Any]:
    """What the report says quality means: the task, its metrics, the user metric's name."""
    from compress.evaluation import TASKS

    return {"task": ev.task, "quality": TASKS[ev.task], "metric": ev.metric, "split": ev.split,
            "max_samples": ev.max_samples}
