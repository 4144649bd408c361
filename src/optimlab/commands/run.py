"""`optimlab run` (`make run`): the surfaces benchmark, the mnist1d study, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimlab.commands._args import add_config_option, seed
from optimlab.commands.mnist1d import add_scaleout_options

ORDER = 10


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="everything with defaults: surfaces benchmark, mnist1d study, report",
        description="Run the surfaces benchmark into DIR/surfaces and the mnist1d study into "
        "DIR/mnist1d with their defaults (or a --config file's settings), then write the "
        "report. Rerunning with the same --out resumes both parts.",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: runs/<timestamp>)"
    )
    add_config_option(
        parser,
        help="TOML file: top-level seed and quick for both parts, tables [surfaces] and "
        "[mnist1d] with each part's settings; options given here win over it; DIR/config.toml "
        "is the resolved config of a run",
    )
    parser.add_argument("--quick", action="store_true", help="small budgets for both parts")
    parser.add_argument("--seed", type=seed, help="seed of both parts (0)")
    add_scaleout_options(parser)
    parser.set_defaults(run=run)


def run_configs(args: argparse.Namespace):
    """(SurfacesConfig, StudyConfig): defaults < --quick < --config file < options."""
    from optimlab import config_file
    from optimlab.commands.mnist1d import resolve_study
    from optimlab.commands.surfaces import QUICK

    data = config_file.read(args.config) if args.config else {}
    shared, surfaces_table, study_table = config_file.split_run(data)
    quick = config_file.pop_quick(shared) or args.quick
    if args.seed is not None:
        shared["seed"] = args.seed
    source = str(args.config) if args.config else None
    surfaces = config_file.build(
        config_file.SurfacesConfig.from_dict,
        {**(QUICK if quick else {}), **surfaces_table, **shared},
        surfaces_table,
        source and f"{source} [surfaces]",
    )
    study = resolve_study(
        study_table, args, quick=quick, source=source and f"{source} [mnist1d]", shared=shared
    )
    return surfaces, study


def run(args: argparse.Namespace) -> int:
    from optimlab import config_file
    from optimlab.atomic import ensure_output_dir
    from optimlab.commands.mnist1d import default_out
    from optimlab.errors import OptimlabError
    from optimlab.report.runs import report_any
    from optimlab.study import prepare_run_dir, run_study
    from optimlab.surfaces.bench import claim_out

    surfaces, study = run_configs(args)  # both validated before any work starts
    out = args.out or default_out()
    created = not out.exists()
    ensure_output_dir(out)
    try:  # each part refuses a different config before anything runs; a finished part is kept
        claim_out(out / "surfaces", **surfaces.benchmark_kwargs(), create=False)
        prepare_run_dir(study, out / "mnist1d")
    except OptimlabError:  # e.g. an unreachable storage server: leave no empty --out behind
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    config_file.write_run(out / config_file.NAME, surfaces, study)
    run_surfaces(out / "surfaces", surfaces)
    run_study(study, out / "mnist1d")
    for path in report_any(out):
        print(path)
    return 0


def run_surfaces(out: Path, config) -> None:
    """The surfaces benchmark of `config` (resumed, or kept when finished, in `out`)."""
    from optimlab import surfaces

    surfaces.benchmark(**config.benchmark_kwargs(), out=out, progress=True)
