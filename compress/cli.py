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
      compress report runs/x/report.json         render a report again (Markdown or table)
      compress schema                            JSON Schema of the pipeline format
      compress stages                            list stage types and zoo models
    """


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and the result table.")
@click.option("-v", "--verbose", is_flag=True, help="More detail, and tracebacks on errors.")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), help="Run folder (default: output.dir "
              "or runs/<pipeline name>).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage (the cache is still written).")
@click.option("--remeasure", is_flag=True, help="Re-time and re-evaluate even when results are cached.")
def run(pipeline: str, quiet: bool, verbose: bool, output_dir: str | None, no_cache: bool, remeasure: bool) -> None:
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

    print_report(ui, report, runner.report_path)
    sys.exit({"passed": 0, "gate_failed": 1, "unstable": 4}[report.status])


run.help = (run.help or "") + "\n\n" + EXIT_CODES  # type: ignore[operator]


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
def validate(pipeline: str) -> None:
    """Check PIPELINE without loading a model: schema, stage chain, gates, paths (exit 2 on error)."""
    from compress.errors import CompressError
    from compress.ui import UI

    ui = UI()
    try:
        from compress.config import check_chain, check_paths, load_pipeline

        loaded = load_pipeline(pipeline)
        check_paths(loaded)
        kinds = check_chain(loaded)
    except CompressError as e:
        _fail(ui, e, False)
        return
    cfg = loaded.config
    chain = " -> ".join(["model"] + [s.name for s in cfg.stages])
    click.echo(f"{pipeline}: ok ({len(cfg.stages)} stage(s): {chain}; final artifact {kinds[-1]}; "
               f"{len(cfg.targets)} target(s); {len(cfg.gates)} gate(s))")


@main.command()
@click.argument("report_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "table"]), default="md", show_default=True)
def report(report_json: str, fmt: str) -> None:
    """Render a report.json again (Markdown for a PR comment, or the terminal table); exit 1 if it failed a gate."""
    from pathlib import Path

    from pydantic import ValidationError

    from compress.report.markdown import render_markdown
    from compress.report.model import Report
    from compress.ui import UI

    try:
        rep = Report.model_validate_json(Path(report_json).read_text())
    except ValidationError as e:
        UI().error(f"{report_json}: not a compress report (schema version 1): {e.errors()[0]['msg']}")
        sys.exit(2)
    if fmt == "md":
        click.echo(render_markdown(rep), nl=False)
    else:
        from compress.report.console import print_report

        print_report(UI(), rep, Path(report_json))
    sys.exit(1 if rep.status == "gate_failed" else 0)


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


if __name__ == "__main__":  # pragma: no cover
    main()
