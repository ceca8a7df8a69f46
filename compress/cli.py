"""The ``compress`` command line. Only click is imported at start-up; each command imports what it
needs, so ``compress --help`` and ``compress validate`` never load torch, nncf or onnxruntime."""
from __future__ import annotations

import sys

import click

EXIT_CODES = """\b
Exit codes:
  0  ok: every stage ran and every gate passed
  1  a release gate failed (the report says which, by how much)
  2  configuration or usage error (file:line:col and the field are named)
  3  a stage, the baseline build, export or measurement failed
  4  latency measurement unstable (only with fail_on_unstable: true)"""


def _fail(ui, err, verbose: bool) -> None:
    from compress.errors import CompressError

    if verbose and err.__cause__ is not None:
        import traceback

        traceback.print_exception(err.__cause__, file=sys.stderr)
    for i, line in enumerate(str(err).splitlines()):
        ui.error(line) if i == 0 else ui.err.print(f"       {line}", soft_wrap=True, markup=False)
    sys.exit(err.exit_code if isinstance(err, CompressError) else 3)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress")
def main() -> None:
    """Compress PyTorch models with a declarative, measured pipeline.

    \b
      compress run pipelines/quickstart.yaml     run a pipeline, write report.json/.md, gate
      compress validate pipeline.yaml            check a pipeline without loading a model
      compress report runs/x/report.json         render a report again (Markdown, table or HTML)
      compress diff A/report.json B/report.json  what changed between two reports
      compress schema                            JSON Schema of the pipeline format
      compress stages                            list stage types and zoo models
      compress cache verify | gc                 check the cache, trim it
      compress bench A.onnx B.onnx -t runtime=openvino   interleaved speed-up of B over A
    """


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and the result table.")
@click.option("-v", "--verbose", is_flag=True, help="More detail, tracebacks on errors, and the wide table.")
@click.option("-w", "--wide", is_flag=True, help="Every column of the result table (default: those that fit 80 "
              "columns; report.md always has all).")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), help="Run folder (default: output.dir "
              "or runs/<pipeline name>).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage (the cache is still written).")
@click.option("--remeasure", is_flag=True, help="Re-time and re-evaluate even when results are cached.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), help="Also write the gates as JUnit XML here "
              "(one test case per gate) for CI test reports.")
def run(pipeline: str, quiet: bool, verbose: bool, wide: bool, output_dir: str | None, no_cache: bool,
        remeasure: bool, junit: str | None) -> None:
    """Run PIPELINE: baseline, each stage in order, export, evaluate and time every artifact on every
    target, write the report and check the gates.

    Finished stages are cached by content hash (output.cache_dir): a re-run reuses them, and after a
    failure a re-run resumes from the last finished stage.
    """
    from compress.ui import UI, quiet_libraries

    ui = UI(quiet=quiet, verbose=verbose)
    quiet_libraries(verbose)
    try:
        from compress.config import load_pipeline

        loaded = load_pipeline(pipeline)
        from compress.runner import Runner

        runner = Runner(loaded, ui, use_cache=not no_cache, remeasure=remeasure, output_dir=output_dir)
        report = runner.run()
    except KeyboardInterrupt:
        ui.error("interrupted; finished stages stay cached")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - CompressError gets its code; anything else is a stage failure
        from compress.errors import CompressError

        if not isinstance(e, CompressError):
            if verbose:
                raise
            ui.error(f"{type(e).__name__}: {e} (re-run with -v for the traceback)")
            sys.exit(3)
        _fail(ui, e, verbose)
        return
    from compress.report.console import print_report

    print_report(ui, report, runner.report_path, wide=wide or verbose)
    if junit:
        _write_junit(junit, report, loaded.config.fail_on_unstable)
    sys.exit({"passed": 0, "gate_failed": 1, "unstable": 4}[report.status])


def _write_junit(path: str, report, fail_on_unstable: bool) -> None:
    from pathlib import Path

    from compress.report.junit import render_junit

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render_junit(report, fail_on_unstable))


run.help = (run.help or "") + "\n\n" + EXIT_CODES  # type: ignore[operator]


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), help="Run folder to check "
              "(default: output.dir or runs/<pipeline name>).")
def validate(pipeline: str, output_dir: str | None) -> None:
    """Check PIPELINE without training anything (exit 2 on error): schema, stage chain, gates and their
    ranges, input files, output folders writable, the data (keys, shapes, dtypes, NaN, labels), the
    model's callable, weights vs the model's shapes, an ONNX model. `compress run` does the same first."""
    from compress.errors import CompressError
    from compress.ui import UI

    ui = UI()
    try:
        from compress.config import check_chain, load_pipeline
        from compress.preflight import preflight

        loaded = load_pipeline(pipeline)
        kinds = check_chain(loaded)
        checked = preflight(loaded, output_dir)
    except CompressError as e:
        _fail(ui, e, False)
        return
    for note in checked.notes:
        ui.warn(note)
    cfg = loaded.config
    ds = checked.dataset
    chain = " -> ".join(["model"] + [s.name for s in cfg.stages])
    click.echo(f"{pipeline}: ok ({len(cfg.stages)} stage(s): {chain}; final artifact {kinds[-1]}; "
               f"{len(cfg.targets)} target(s); {len(cfg.gates)} gate(s); data {len(ds.x)} samples"
               f"{', labeled' if ds.y is not None else ', NO labels'})")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-t", "--target", "targets", multiple=True, metavar="KEY=VALUE,...",
              help="A target, as in a pipeline's targets: (repeat for several), e.g. 'runtime=openvino,threads=1' "
              "or '{runtime: onnxruntime, graph_optimization: basic}'. Default: onnxruntime, 1 thread.")
@click.option("--data", "data", metavar="YAML", help="Inputs: a pipeline data: mapping, e.g. '{source: digits}' "
              "(default: seeded random inputs of each model input's shape and dtype).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic axis other than the batch.")
@click.option("--min-seconds", type=float, default=None, help="Timed seconds per file per target (at least).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result as JSON here.")
def bench(files: tuple[str, ...], targets: tuple[str, ...], data: str | None, dims: tuple[str, ...],
          min_seconds: float | None, json_out: str | None) -> None:
    """Time ONNX FILES interleaved on each target (the one timing loop, as in a pipeline) and print the
    median paired speed-up of each over the first, with its 95% interval and the spread (IQR) of the
    per-round ratios. Exit 2 on bad input, 3 if a model does not run."""
    import json
    from pathlib import Path

    import yaml

    from compress.errors import CompressError, ConfigError
    from compress.ui import UI, quiet_libraries

    ui = UI()
    quiet_libraries(False)
    try:
        from compress.bench import bench as run_bench
        from compress.bench import onnx_inputs, render
        from compress.config import parse_target

        parsed = []
        for i, spec in enumerate(targets or ("runtime=onnxruntime",)):
            raw = _mapping(spec, f"--target {spec!r}")
            raw.setdefault("name", f"{raw.get('runtime', 'onnxruntime')}" + (f"-{i}" if len(targets) > 1 else ""))
            if min_seconds is not None:
                raw.setdefault("timing", {})["min_seconds"] = min_seconds
                raw["timing"].setdefault("max_seconds", max(15.0, 3 * min_seconds))
            parsed.append(parse_target(raw, where=f"--target {spec!r}"))
        seq = {}
        for d in dims:
            k, _, v = d.partition("=")
            if not v.isdigit():
                raise ConfigError(f"--dim {d!r}: give NAME=SIZE, e.g. seq=128")
            seq[k] = int(v)
        dataset = None
        if data:
            from compress.data import load_dataset, parse_data_config

            specs = onnx_inputs(Path(files[0]), seq)
            named = len(specs) > 1 or specs[0]["dtype"] != "float32"
            dataset = load_dataset(parse_data_config(_mapping(data, "--data"), "--data"), Path.cwd(),
                                   inputs=specs if named else None)
        result = run_bench([Path(f) for f in files], parsed, dataset, progress=ui.progress)
    except CompressError as e:
        _fail(ui, e, False)
        return
    except yaml.YAMLError as e:
        _fail(ui, ConfigError(f"cannot parse an option as YAML: {str(e).splitlines()[0]}"), False)
        return
    for line in render(result):
        click.echo(line)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2, default=str))


def _mapping(text: str, where: str) -> dict:
    """``key=value,key=value`` or an inline YAML mapping -> dict (values parsed as YAML scalars)."""
    import yaml

    from compress.errors import ConfigError

    text = text.strip()
    if text.startswith("{"):
        value = yaml.safe_load(text)
    else:
        value = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise ConfigError(f"{where}: '{part}' is not KEY=VALUE")
            value[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: give KEY=VALUE pairs or a {{...}} mapping")
    return value


@main.command()
@click.argument("report_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "table", "html"]), default="md", show_default=True)
@click.option("-w", "--wide", is_flag=True, help="Table: every column (default: the ones that fit 80 columns).")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), help="Also write the gates as JUnit XML here.")
def report(report_json: str, fmt: str, wide: bool, junit: str | None) -> None:
    """Render a report.json again (Markdown for a PR comment, the terminal table, or self-contained HTML);
    exit 1 if it failed a gate."""
    from pathlib import Path

    from compress.report.markdown import render_markdown

    rep = _read_report(report_json)
    if junit:
        _write_junit(junit, rep, rep.status == "unstable")
    if fmt == "md":
        click.echo(render_markdown(rep), nl=False)
    elif fmt == "html":
        from compress.report.html import render_html

        click.echo(render_html(rep), nl=False)
    else:
        from compress.report.console import print_report
        from compress.ui import UI

        print_report(UI(), rep, Path(report_json), wide=wide)
    sys.exit(1 if rep.status == "gate_failed" else 0)


def _read_report(report_json: str):
    from pathlib import Path

    from pydantic import ValidationError

    from compress.report.model import Report
    from compress.ui import UI

    try:
        text = Path(report_json).read_bytes().decode("utf-8")
        rep = Report.model_validate_json(text)
    except UnicodeDecodeError as e:
        UI().error(f"{report_json}: not a compress report: not a text file (byte 0x{e.object[e.start]:02x} at "
                   f"offset {e.start} is not UTF-8)")
        sys.exit(2)
    except OSError as e:
        UI().error(f"{report_json}: cannot read it: {e.strerror or e}")
        sys.exit(2)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        UI().error(f"{report_json}: not a compress report (schema version 1): {field}: {err['msg']}")
        sys.exit(2)
    return rep


@main.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
def diff(a: str, b: str) -> None:
    """Compare two report.json files (Markdown): accuracy, fidelity, size, gates, and latency when both were
    measured on the same kind of machine."""
    from compress.report.diff import diff_reports

    click.echo(diff_reports(_read_report(a), _read_report(b), a, b), nl=False)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline format."""
    import json

    from compress.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
def stages() -> None:
    """List the stage types (with what they accept) and the zoo models."""
    from compress import zoo
    from compress.stages import get_stage, registry

    for name in sorted(registry()):
        cls = get_stage(name)
        click.echo(f"{name:22s} {cls.summary}  [accepts {', '.join(cls.accepts)}]")
    click.echo("\nzoo models: " + ", ".join(zoo.names()))


@main.group()
def cache() -> None:
    """Check and trim the cache (output.cache_dir, default .compress-cache)."""


_cache_dir = click.option("--cache-dir", default=".compress-cache", show_default=True,
                          type=click.Path(file_okay=False), help="The cache folder (a pipeline's output.cache_dir).")


@cache.command("verify")
@_cache_dir
def cache_verify(cache_dir: str) -> None:
    """Check every entry's sha256; remove (and name) the corrupt ones, which the next run recomputes."""
    from pathlib import Path

    from compress.cache import Cache
    from compress.ui import UI

    ui = UI()
    if not Path(cache_dir).is_dir():
        ui.error(f"--cache-dir: '{cache_dir}' is not a folder")
        sys.exit(2)
    ok, bad = Cache(Path(cache_dir), warn=ui.warn).verify()
    click.echo(f"{cache_dir}: {ok} entr{'y' if ok == 1 else 'ies'} ok, {len(bad)} corrupt removed")


def _parse_amount(text: str, units: dict[str, float], what: str) -> float:
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in units:
        raise click.BadParameter(f"'{text}': give a number and one of {', '.join(u for u in units if u)} "
                                 f"(e.g. 30d, 5GB)", param_hint=what)
    return float(m.group(1)) * units[unit]


@cache.command("gc")
@_cache_dir
@click.option("--max-age", default=None, help="Remove entries unused for longer than this (e.g. 30d, 12h).")
@click.option("--max-size", default=None, help="Then remove the least recently used until the cache fits (e.g. "
              "5GB, 500MB).")
def cache_gc(cache_dir: str, max_age: str | None, max_size: str | None) -> None:
    """Remove old entries, keep the cache under a size budget, and delete orphaned temp folders left by
    killed runs. Entries another run is computing right now (locked) are kept."""
    from pathlib import Path

    from compress.cache import Cache

    age = _parse_amount(max_age, {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}, "--max-age") \
        if max_age else None
    size = _parse_amount(max_size, {"gb": 1e9, "mb": 1e6, "kb": 1e3, "b": 1, "": 1e9}, "--max-size") \
        if max_size else None
    if not Path(cache_dir).is_dir():
        click.echo(f"{cache_dir}: no cache here, nothing to do")
        return
    res = Cache(Path(cache_dir)).gc(max_age_s=age, max_bytes=int(size) if size is not None else None)
    click.echo(f"{cache_dir}: removed {len(res.removed)} (freed {res.freed_bytes / 1e6:.1f} MB), kept {res.kept} "
               f"entries ({res.kept_bytes / 1e6:.1f} MB)")


if __name__ == "__main__":  # pragma: no cover
    main()
