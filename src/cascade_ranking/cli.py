"""The ``cascade-ranking`` command: prepare data, train, evaluate, benchmark, compare runs in a report."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .data.schema import SchemaError
from .data.store import StoreError

__all__ = [
    "USER_ERRORS",
    "app",
    "default_dataset_dir",
    "main",
    "metrics_table",
    "resolve_data",
    "with_movielens_source",
]

app = typer.Typer(
    help="Train multi-stage cascade ranking systems (retrieval -> pre-ranking -> ranking) as one network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prepare_app = typer.Typer(help="Download / convert datasets into the request-list store.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")

console = Console()
err_console = Console(stderr=True)

#: Errors that are the user's to fix: printed as one clear line, exit code 2 (never a traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (SchemaError, StoreError, ValueError, OSError, KeyError)

#: Ranges of the numeric options that no configuration model checks (``train``/``benchmark`` options are checked
#: by :class:`~.training.config.TrainConfig`): seeds as numpy and torch take them, synthetic sizes a machine holds.
OPTION_RANGES: dict[str, tuple[int, int]] = {"seed": (0, 2**63 - 1), "requests": (1, 10**10), "days": (1, 100_000)}

MOVIELENS_SRC_ENV = "CASCADE_RANKING_MOVIELENS_SRC"
MOVIELENS_URL_ENV = "CASCADE_RANKING_MOVIELENS_URL"  # a mirror of the GroupLens zip

KeepOpt = Annotated[
    str | None,
    typer.Option(help="Serving keep sizes, one per stage, e.g. 500,100 (default: 500,100 / 1000,300,100)."),
]
IndexOpt = Annotated[str, typer.Option(help="Retrieval index: exact (default), ivf or hnsw.")]
ServeThreadsOpt = Annotated[int | None, typer.Option(help="Torch and FAISS CPU threads.")]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _user_errors():
    from .datasets.movielens import DatasetUnavailableError
    from .training.loop import TrainingError
    from .training.tracking import TrackingError

    return USER_ERRORS + (DatasetUnavailableError, TrainingError, TrackingError)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)])


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def default_dataset_dir(stages: int) -> Path:
    """Where the prepared MovieLens-100K cascade dataset of ``stages`` stages lives in the user cache."""
    from .data.cache import cache_dir
    from .datasets.movielens import dataset_name

    return cache_dir() / "datasets" / dataset_name(stages)


def resolve_data(data: Path | None, stages: int, *, seed: int = 0) -> Path:
    """``data`` if given; else the prepared MovieLens-100K copy for ``stages``, prepared on first use.

    The raw data comes from ``$CASCADE_RANKING_MOVIELENS_SRC`` when set (a local copy), else the official
    GroupLens download (or ``$CASCADE_RANKING_MOVIELENS_URL``, a mirror), else (offline) the first local copy
    of :func:`.data.movielens.local_copies`. With none of these, ``DatasetUnavailableError`` says which command
    to run.
    """
    if data is not None:
        return data
    out = default_dataset_dir(stages)
    if not (out / "schema.json").is_file():
        from .datasets.movielens import prepare_movielens

        logging.getLogger(__name__).info("preparing MovieLens-100K (%d stages) into %s", stages, out)
        with_movielens_source(lambda src, url: prepare_movielens(out, src=src, stages=stages, seed=seed, url=url,
                                                                 progress=True))  # fmt: skip
    return out


def with_movielens_source(prepare: Callable[[Path | None, str], object]) -> None:
    """Call ``prepare(src, url)`` with MovieLens-100K's source: ``$CASCADE_RANKING_MOVIELENS_SRC`` when set, else
    the download (``$CASCADE_RANKING_MOVIELENS_URL`` or GroupLens); when the download fails, again with the first
    local copy of :func:`.data.movielens.local_copies` (none: the download's error, which says what to run)."""
    from .datasets import movielens

    src = os.environ.get(MOVIELENS_SRC_ENV)
    url = os.environ.get(MOVIELENS_URL_ENV) or movielens.ML100K_URL
    try:
        prepare(Path(src) if src else None, url)
    except movielens.DatasetUnavailableError:
        copies = [] if src else movielens.local_copies()
        if not copies:
            raise
        logging.getLogger(__name__).warning("download failed; using the local copy %s", copies[0])
        prepare(copies[0], url)


def _check_options(**values: int) -> None:
    """Raise ``ValueError`` naming the option (``--seed=-1: ...``) when a value is outside :data:`OPTION_RANGES`."""
    for name, value in values.items():
        lo, hi = OPTION_RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"--{name}={value}: expected an integer in [{lo}, {hi}]")


def _parse_loss_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--loss-param {item!r}: expected KEY=VALUE (e.g. tau=50)")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _csv_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}={text!r}: expected comma-separated integers, e.g. 30,20") from None


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """A table with one row per metric and one column per evaluated set (e.g. valid/test)."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys: list[str] = []
    for values in columns.values():
        keys += [k for k in values if k not in keys]
    for key in keys:
        row = []
        for values in columns.values():
            v = values.get(key)
            if v is None:
                row.append("")
            elif key.endswith("requests") or not isinstance(v, float):
                row.append(f"{int(v)}")
            else:
                row.append(f"{v:.4f}")
        table.add_row(key, *row)
    return table


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML or YAML file with any of these options (the command line wins).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any configuration option, e.g. --set emb_dim=16 --set loss.tau=50 --set keep=[30,20] (repeatable; "
        "see `cascade-ranking config show`).",
    ),
]
ThreadsOpt = Annotated[
    str | None,
    typer.Option(
        help="Torch CPU threads: a count, or auto (the fastest of 1, half and all usable CPUs, timed on the first "
        "batch). Default: torch's count capped at the CPUs this process may use.",
    ),
]
TensorBoardOpt = Annotated[
    Path | None,
    typer.Option(
        "--tensorboard",
        metavar="DIR",
        help="Log losses, learnable loss weights, learning rate, requests/s and metrics to TensorBoard in DIR "
        "(needs: pip install tensorboard).",
    ),
]


@app.command()
def train(
    config_file: ConfigOpt = None,
    set_: SetOpt = None,
    method: Annotated[str | None, typer.Option(help="Cascade method: lcron (default), bce, icc, rankflow, ...")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: MovieLens-100K, prepared on first use).")
    ] = None,
    stages: Annotated[int | None, typer.Option(help="Stages of the default MovieLens-100K cascade: 2 or 3.")] = None,
    models: Annotated[str | None, typer.Option(help="Stage models, retrieval first, e.g. dssm,din.")] = None,
    prerank_model: Annotated[
        str | None, typer.Option(help="Model of the pre-ranking (second) stage, e.g. ranktower (default din).")
    ] = None,
    keep: Annotated[
        str | None, typer.Option(help="Candidates each stage keeps, e.g. 30,20 (default: the dataset's).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size (default: the dataset's).")] = None,
    passes: Annotated[
        int | None, typer.Option(help="Passes over the training partitions (default: the dataset's).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default 0.01).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).")] = None,
    device: Annotated[str | None, typer.Option(help="auto (default), cpu, cuda, cuda:N.")] = None,
    loss_param: Annotated[list[str] | None, typer.Option(help="Loss hyper-parameter KEY=VALUE (repeatable).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default: runs/<method>-<stages>stage-seed<seed>-<time>)."),
    ] = None,
    threads: ThreadsOpt = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Also checkpoint every N steps (always at partition boundaries).")
    ] = None,
    skip_nonfinite: Annotated[
        bool | None, typer.Option("--skip-nonfinite", help="Skip and count NaN/inf steps instead of stopping.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted run from its folder with its saved configuration; only --data (the "
            "dataset moved; same contents), --device and --threads may be given with it."
        ),
    ] = None,
    tensorboard: TensorBoardOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run in a non-empty --out folder (else refused).")
    ] = False,
) -> None:
    """Train a cascade end to end on the training partitions and evaluate it on validation and test."""
    from .data.store import open_dataset
    from .training.build import with_prerank_model
    from .training.checkpoint import load_config, saved_data_path
    from .training.config import TrainConfig, config_from
    from .training.loop import train as run_training
    from .training.runfiles import default_run_dir

    try:
        if resume is not None:
            _resume_options(
                config=config_file, set=set_, method=method, stages=stages, models=models, prerank_model=prerank_model,
                keep=keep, batch_size=batch_size, passes=passes, lr=lr, seed=seed, loss_param=loss_param, out=out,
                checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite, tensorboard=tensorboard,
                overwrite=overwrite or None,
            )  # fmt: skip
            config = load_config(resume)
            data_dir, run_dir = data or saved_data_path(resume, config), resume
            config = config.model_copy(update={k: v for k, v in dict(device=device, threads=threads).items() if v})
        else:
            overrides = dict(
                method=method, data=data, stages=stages, models=models.split(",") if models else None,
                keep=_csv_ints(keep, "--keep"), batch_size=batch_size, passes=passes, lr=lr, seed=seed,
                device=device, loss=_parse_loss_params(loss_param) if loss_param else None, threads=threads,
                checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite, tensorboard=tensorboard,
            )  # fmt: skip
            config = config_from(TrainConfig, config_file, overrides, set_)
            data_dir = resolve_data(config.data, config.stages, seed=config.seed)
            if prerank_model is not None:
                config = with_prerank_model(config, open_dataset(data_dir), prerank_model)
            num_stages = len(config.keep or open_dataset(data_dir).keep)
            run_dir = out or default_run_dir(config.method, num_stages, config.seed)
        schema = open_dataset(data_dir)
        with _progress() as progress:
            task = progress.add_task("train", total=None, info="")
            eval_total = sum(p.num_requests for p in schema.partitions if p.role in ("valid", "test"))
            eval_task = progress.add_task("evaluate", total=eval_total, info="", visible=False, start=False)

            batch_size = config.batch_size or schema.train_defaults.batch_size

            def on_step(step: int, total: int, loss: float) -> None:
                elapsed = progress.tasks[task].elapsed or 0.0
                rate = f" · {step * batch_size / elapsed:,.0f} requests/s" if elapsed > 0 else ""
                progress.update(task, completed=step, total=total, info=f"loss {loss:.4f}{rate}")
                if step == total:  # evaluation starts now: its rate counts from here
                    progress.start_task(eval_task)

            def on_eval(n: int) -> None:
                state = progress.tasks[eval_task]
                if not state.started:  # no training step ran in this process (a resumed, finished run)
                    progress.start_task(eval_task)
                    state = progress.tasks[eval_task]
                rate = f"{(state.completed + n) / state.elapsed:,.0f} requests/s" if state.elapsed else "requests"
                progress.update(eval_task, advance=n, visible=True, info=rate)

            result = run_training(
                config, data=data_dir, run_dir=run_dir, on_step=on_step, on_eval=on_eval, resume=resume is not None,
                overwrite=overwrite,
            )  # fmt: skip
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    m = result.metrics
    columns = {role: m[role] for role in ("valid", "test") if role in m}
    console.print(metrics_table(f"{m['method']} on {m['dataset']} (seed {m['seed']})", columns))
    skipped = f"; {len(m['nonfinite_steps'])} non-finite steps skipped" if m["nonfinite_steps"] else ""
    console.print(
        f"trained {m['steps']} steps in {m['train_seconds']:.1f}s "
        f"({m['train_requests_per_second']:.0f} requests/s){skipped}; run folder: {result.run_dir}"
    )
    if result.config.tensorboard is not None:
        console.print(f"TensorBoard logs: tensorboard --logdir {result.config.tensorboard}", soft_wrap=True)


def _resume_options(**given: object) -> None:
    """Refuse, by name, the ``train`` options that would change a resumed run (its saved config decides them)."""
    refused = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, [], False)]
    if refused:
        raise ValueError(
            f"--resume continues the saved configuration; {', '.join(refused)} cannot change it (only --data, "
            "--device and --threads may be given with --resume); start a new run with --out (or --overwrite)"
        )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `train`.")],
    data: Annotated[Path | None, typer.Option(help="Evaluate on another dataset folder (same schema).")] = None,
    role: Annotated[str, typer.Option(help="Partitions to evaluate: test or valid.")] = "test",
    catalogue: Annotated[
        str,
        typer.Option(help="logged: select among each request's logged candidates; full: among all catalogue items."),
    ] = "logged",
    k: Annotated[int, typer.Option(help="With --catalogue full: Recall@k and NDCG@k cut-off.")] = 10,
    keep: KeepOpt = None,
    index: IndexOpt = "exact",
) -> None:
    """Re-evaluate a saved run on its test (or validation) partitions.

    With ``--catalogue full`` every request selects from the whole catalogue (retrieval over a FAISS index, then
    the later stages) and Recall@k / NDCG@k of its held-out impressions are reported with per-stage latency.
    """
    from .training.checkpoint import load_run
    from .training.distributed import resolve_device
    from .training.evaluate import evaluate_cascade

    if catalogue not in ("logged", "full"):
        raise _fail(f"--catalogue {catalogue!r}: expected logged or full")
    if catalogue == "full":
        _evaluate_full_catalogue(run_dir, data, role, k, keep, index)
        return
    try:
        run = load_run(run_dir, data=data)
        device = resolve_device(run.config.device)
        values = evaluate_cascade(run.cascade, run.config, run.data, run.schema, role, device=device)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(metrics_table(f"{run.config.method}: {run_dir}", {role: values}))


def _evaluate_full_catalogue(run_dir: Path, data: Path | None, role: str, k: int, keep: str | None, index: str) -> None:
    from .serving.evaluation import evaluate_run_on_catalogue

    try:
        options = _index_options(index)
        values = evaluate_run_on_catalogue(
            run_dir, role=role, k=k, keep=_csv_ints(keep, "--keep"), index=options, data=data
        )
    except (*_user_errors(), ImportError) as exc:
        raise _fail(str(exc)) from None
    console.print(metrics_table(f"{run_dir} over the whole catalogue", {role: values}))


def _catalogue_columns(catalogue: str):
    """``benchmark --catalogue``: the full-catalogue columns of :mod:`.serving.evaluation`, or none."""
    if catalogue not in ("logged", "full"):
        raise ValueError(f"--catalogue {catalogue!r}: expected logged or full")
    if catalogue == "logged":
        return None
    from .serving.evaluation import benchmark_columns

    return benchmark_columns


def _index_options(kind: str):
    """The FAISS index options of ``--index`` (ValueError naming the kinds when unknown)."""
    from .serving import IndexOptions

    return IndexOptions(kind=kind)  # type: ignore[arg-type]  # IndexOptions validates the kind


@app.command()
def reference(
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: MovieLens-100K).")] = None,
    stages: Annotated[int, typer.Option(help="Stages of the default MovieLens-100K cascade (2 or 3).")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Score the test partitions with reference scorers (random; item popularity), no training."""
    from .data.store import open_dataset
    from .training.evaluate import PopularityScorer, RandomScorer
    from .training.evaluate import evaluate as run_eval
    from .types import stage_names

    try:
        _check_options(seed=seed)
        data_dir = resolve_data(data, stages)
        schema = open_dataset(data_dir)
        k = len(schema.keep)
        scorers = {"random": RandomScorer(k, seed), "popularity": PopularityScorer.fit(data_dir, schema, k)}
        columns = {
            name: run_eval(
                scorer,
                data_dir,
                schema,
                schema.partitions_with_role("test"),
                stage_names=stage_names(k),
                keep=schema.keep,
                gt_num=schema.gt_num,
                seed=seed,
            )
            for name, scorer in scorers.items()
        }
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(metrics_table(f"reference scorers on {schema.name} (test)", columns))


@app.command()
def benchmark(
    config_file: ConfigOpt = None,
    set_: SetOpt = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: the eight cascade methods and dftopk).")
    ] = None,
    stages: Annotated[int | None, typer.Option(help="Stages of the default MovieLens-100K cascade: 2 or 3.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Seeds per method (default 3).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: MovieLens-100K).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: benchmark-<K>stage).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size (default: the dataset's).")] = None,
    passes: Annotated[
        int | None, typer.Option(help="Passes over the training partitions (default: the dataset's).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto (default), cpu, cuda, cuda:N.")] = None,
    threads: ThreadsOpt = None,
    task: Annotated[
        str | None, typer.Option(help="cascade (default): cascade methods; prerank: RankTower's Table 1.")
    ] = None,
    ablations: Annotated[
        bool | None, typer.Option("--ablations", help="With --task prerank: also RankTower's Tables 2-4.")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help="With --task prerank: paper (default; RankTower Sec. 5.1) or time (weekly split)."),
    ] = None,
    tune: Annotated[
        bool | None,
        typer.Option(
            "--tune/--no-tune",
            help="With --task prerank: first search each Table 1 row's grid on validation, the same budget "
            "for every row (default: on with --protocol paper).",
        ),
    ] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="TensorBoard logs, one sub-directory DIR/<method>-seed<seed> per run "
            "(needs: pip install tensorboard).",
        ),
    ] = None,
    catalogue: Annotated[
        str,
        typer.Option(
            help="full: also evaluate every run over the whole item catalogue (Recall@10, NDCG@10, per-stage "
            "kept share and latency; default serving keep sizes) as extra columns. logged (default): not."
        ),
    ] = "logged",
) -> None:
    """Train and evaluate every method x seed; print mean ± std; write results.{json,csv,md}, a PNG chart and
    report.html (tables, charts, loss curves, provenance).

    Finished (method, seed) runs in the output folder are reused, so an interrupted benchmark resumes.
    """
    from . import losses
    from .experiments.cascade import run_benchmark
    from .experiments.config import BenchmarkConfig
    from .experiments.results import markdown_table
    from .training.config import config_from

    try:
        overrides = dict(
            methods=methods.split(",") if methods else None, stages=stages, repeats=repeats, data=data, out=out,
            batch_size=batch_size, passes=passes, device=device, threads=threads, task=task, ablations=ablations,
            protocol=protocol, tensorboard=tensorboard, tune=tune,
        )  # fmt: skip
        bench = config_from(BenchmarkConfig, config_file, overrides, set_)
        if bench.task == "prerank":
            _prerank_benchmark(bench)
            return
        names = bench.methods or list(losses.CASCADE_METHODS)
        for name in names:
            if name not in losses.REGISTRY:
                raise ValueError(f"unknown method {name!r}; known methods: {', '.join(losses.REGISTRY)}")
        data_dir = resolve_data(bench.data, bench.stages)
        out_dir = bench.out or Path(
            f"benchmark-{bench.stages}stage" if bench.data is None else f"benchmark-{data_dir.name}"
        )
        base = bench.train_config(data=data_dir)
        with _progress() as progress:
            bar = progress.add_task("benchmark", total=len(names) * bench.repeats, info="")

            def on_run(method: str, seed: int, metrics: dict) -> None:
                progress.update(
                    bar,
                    advance=1,
                    info=f"{method} seed {seed}: joint recall {metrics['test']['joint_recall']:.4f}",
                )

            results = run_benchmark(
                methods=names, data=data_dir, out_dir=out_dir, repeats=bench.repeats, base=base, on_run=on_run,
                run_columns=_catalogue_columns(catalogue),
            )  # fmt: skip
    except (*_user_errors(), ImportError) as exc:
        raise _fail(str(exc)) from None
    console.print(markdown_table(results["summary"]), markup=False, highlight=False, soft_wrap=True)
    _print_outputs(out_dir, bench.tensorboard)


def _prerank_benchmark(bench) -> None:
    """``benchmark --task prerank``: the RankTower paper's pre-ranking comparison on full-stage samples."""
    from .data.cache import cache_dir
    from .datasets.prerank import PROTOCOLS, prepare_prerank_movielens
    from .experiments.prerank import run_prerank_benchmark

    data_dir = bench.data
    if data_dir is None:
        data_dir = cache_dir() / "datasets" / PROTOCOLS[bench.protocol][0]
        if not (data_dir / "schema.json").is_file():
            threads = bench.threads if isinstance(bench.threads, int) else 1  # the sample build: one is fastest
            options = {"progress": True, "threads": threads, "protocol": bench.protocol}
            with_movielens_source(lambda src, url: prepare_prerank_movielens(data_dir, src=src, url=url, **options))
    default_out = "benchmark-prerank" if bench.protocol == "paper" else "benchmark-prerank-time"
    out_dir = bench.out or Path(default_out if bench.data is None else f"benchmark-{data_dir.name}")
    base = bench.train_config(data=None)
    with _progress() as progress:
        task = progress.add_task("prerank benchmark", total=None, info="")

        def on_run(row: str, seed: int, metrics: dict) -> None:
            recall = next((f"{k} {v:.4f}" for k, v in metrics["test"].items() if k.startswith("recall@")), "")
            info = f"{row} seed {seed}: {recall}"
            progress.update(task, advance=1, info=info)

        run_prerank_benchmark(data=data_dir, out_dir=out_dir, repeats=bench.repeats, models=bench.methods,
                              ablations=bench.ablations, base=base, on_run=on_run, tune=bench.tune)  # fmt: skip
    console.print((out_dir / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    _print_outputs(out_dir, bench.tensorboard)


def _print_outputs(out_dir: Path, tensorboard: Path | None) -> None:
    """Where a benchmark wrote its results (and its TensorBoard logs)."""
    import json

    from .experiments.results import chart_file

    chart = chart_file(json.loads((out_dir / "results.json").read_text()))
    console.print(
        f"results: {out_dir}/results.{{json,csv,md}}, chart: {out_dir}/{chart}, report: {out_dir}/report.html",
        soft_wrap=True,
    )
    if tensorboard is not None:
        console.print(f"TensorBoard logs: tensorboard --logdir {tensorboard}", soft_wrap=True)


@app.command()
def report(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...",
            help="Run folders (written by `train`) and/or benchmark results (a folder with results.json, or the file).",
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output file: .html (tables, charts, provenance) or .png (the charts).")
    ] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="Title of the HTML report.")] = None,
) -> None:
    """Compare runs in one self-contained file: metrics table, joint-recall chart, loss curves, config differences."""
    from .experiments.report import write_report

    try:
        path = write_report(inputs, out, title=title)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(f"report: {path}", soft_wrap=True)


config_app = typer.Typer(help="Show the configuration options and their defaults.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    benchmark: Annotated[bool, typer.Option("--benchmark", help="The benchmark's options instead of train's.")] = False,
) -> None:
    """Print every option with its default, as YAML (usable as a --config file)."""
    import yaml

    from .experiments.config import BenchmarkConfig
    from .training.config import TrainConfig

    model = BenchmarkConfig if benchmark else TrainConfig
    console.print(yaml.safe_dump(model().model_dump(mode="json"), sort_keys=False), markup=False, highlight=False)


@prepare_app.command("movielens-100k")
def prepare_movielens_cmd(
    src: Annotated[
        Path | None,
        typer.Option(help="Local copy: GroupLens (u.data...) or RecBole (.inter...) files, or the zip."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output dataset folder (default: the user cache).")] = None,
    stages: Annotated[int, typer.Option(help="2 (4 groups x 10 candidates) or 3 (5 groups x 10).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the funnel simulation (the dataset version is fixed by it).")] = 0,
) -> None:
    """Build the MovieLens-100K full-stage cascade dataset (downloads the official zip on first use)."""
    from .datasets.movielens import ML100K_URL, prepare_movielens

    try:
        _check_options(seed=seed)
        target = out or default_dataset_dir(stages)
        url = os.environ.get(MOVIELENS_URL_ENV) or ML100K_URL
        schema = prepare_movielens(target, src=src, stages=stages, seed=seed, url=url, progress=True)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(_partition_table(f"{schema.name} -> {target}", schema))


@prepare_app.command("kuairand-pure")
def prepare_kuairand_cmd(
    src: Annotated[
        Path | None,
        typer.Option(help="Local copy: a folder with KuaiRand-Pure.tar.gz, or its extracted KuaiRand-Pure/data files."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output dataset folder (default: the user cache).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the full-stage sampling.")] = 0,
) -> None:
    """Build RankTower's KuaiRand-Pure pre-ranking dataset (downloads the official archive on first use)."""
    from .data.cache import cache_dir
    from .datasets.kuairand import build_kuairand_pure

    target = out or cache_dir() / "datasets" / "kuairand-pure"
    try:
        built = build_kuairand_pure(target, src=src, seed=seed, progress=True)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(_partition_table(f"{built.samples.schema.name} -> {target}", built.samples.schema))


def _partition_table(title: str, schema) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("partition", "role", "requests", "from", "to"):
        table.add_column(col)
    for p in schema.partitions:
        table.add_row(p.name, p.role, str(p.num_requests), p.start, p.end)
    return table


@prepare_app.command("recflow")
def prepare_recflow_cmd(
    src: Annotated[
        Path, typer.Argument(help="RecFlow folder: all_stage/, request_id_dict/, seq_effective_50_dict/, others/.")
    ],
    out: Annotated[Path, typer.Argument(help="Output dataset folder.")],
    stages: Annotated[int, typer.Option(help="2 (rank_pos, rank_neg, coarse_neg, prerank_neg) or 3 (+ rerank).")] = 2,
    days: Annotated[
        str | None, typer.Option(help="Days to convert, e.g. 2024-01-13..2024-02-04 or a,b,c (default: all).")
    ] = None,
    test_days: Annotated[int, typer.Option(help="Last days used as the test partition.")] = 1,
    valid_days: Annotated[int, typer.Option(help="Days before the test days held out for validation.")] = 0,
) -> None:
    """Convert RecFlow's published files into the request-list store (one partition per day)."""
    from .datasets.recflow import convert_recflow

    try:
        schema = convert_recflow(
            src, out, stages=stages, days=days, test_days=test_days, valid_days=valid_days, progress=True
        )
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(_partition_table(f"{schema.name} -> {out}", schema))


@prepare_app.command("table")
def prepare_table_cmd(
    src: Annotated[
        Path | None,
        typer.Argument(help="Long table: Parquet, CSV or JSON-lines file(s), or a folder (hive folders allowed)."),
    ] = None,
    out: Annotated[Path | None, typer.Argument(help="Output dataset folder.")] = None,
    mapping: Annotated[Path | None, typer.Option(help="YAML mapping of columns (see --example).")] = None,
    example: Annotated[bool, typer.Option("--example", help="Print a commented example mapping and exit.")] = False,
    on_error: Annotated[
        str, typer.Option(help="raise (default): stop at the first bad row; drop: drop bad rows and count them.")
    ] = "raise",
    threads: Annotated[int, typer.Option(help="DuckDB threads.")] = 2,
    memory_limit: Annotated[str, typer.Option(help="DuckDB memory limit; past it DuckDB spills to disk.")] = "1GB",
) -> None:
    """Convert your own cascade logs (one row per request x candidate) into the request-list store."""
    from .datasets.table import convert_table
    from .datasets.table_mapping import EXAMPLE_MAPPING, load_mapping

    if example:
        typer.echo(EXAMPLE_MAPPING, nl=False)
        return
    if src is None or out is None or mapping is None:
        raise _fail("prepare table needs SRC, OUT and --mapping FILE (or --example to print a mapping)")
    if on_error not in ("raise", "drop"):
        raise _fail(f"--on-error {on_error!r}: expected raise or drop")
    try:
        report = convert_table(
            src,
            out,
            load_mapping(mapping),
            on_error="drop" if on_error == "drop" else "raise",
            threads=threads,
            memory_limit=memory_limit,
        )
    except (*_user_errors(), ModuleNotFoundError) as exc:
        raise _fail(str(exc)) from None
    console.print(_partition_table(f"{report.schema.name} -> {out}", report.schema))
    console.print(f"{report.rows:,} rows -> {report.requests:,} requests in {report.seconds:.1f} s")
    for reason, count in report.dropped.items():
        console.print(f"dropped {count:,} row(s): {reason}")


@prepare_app.command("synthetic")
def prepare_synthetic_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    requests: Annotated[int, typer.Option(help="Requests in all.")] = 100_000,
    days: Annotated[int, typer.Option(help="Days (one partition each; the last is the test day).")] = 7,
    stages: Annotated[int, typer.Option(help="2 or 3 cascade stages.")] = 2,
    layout: Annotated[
        str, typer.Option(help="store (our Parquet store) or recflow (RecFlow's published layout).")
    ] = "store",
    seed: Annotated[int, typer.Option(help="Seed of the simulated world and funnel.")] = 0,
    candidates: Annotated[
        int | None,
        typer.Option(
            help="Candidates per request (store layout; default 10 per funnel group). The lowest group "
            "(prerank_neg) takes the rest, e.g. 1000 or 10000, as a production pre-ranking stage scores."
        ),
    ] = None,
) -> None:
    """Simulate a production funnel (seeded world, noisy multi-stage cascade) at any scale, day by day."""
    from .datasets.synthetic import simulate

    try:
        _check_options(seed=seed, requests=requests, days=days)
        schema = simulate(
            out, requests=requests, days=days, stages=stages, layout=layout, seed=seed, progress=True,
            candidates=candidates,
        )  # fmt: skip
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    if schema is None:
        console.print(
            f"wrote RecFlow-layout files to {out}; convert with: cascade-ranking prepare recflow {out} DATA",
            soft_wrap=True,
        )
    else:
        console.print(_partition_table(f"{schema.name} -> {out}", schema))


# ------------------------------------------------------------------------------------------------------------
# serving: the trained cascade over the whole catalogue
# ------------------------------------------------------------------------------------------------------------


def _load_recommender(source: Path, data: Path | None, keep: str | None, index: str, threads: int | None):
    """The recommender of a run folder or an export, with the command line's serving options."""
    from .serving.export import load_recommender

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        from .serving.index import import_faiss

        import_faiss().omp_set_num_threads(threads)
    return load_recommender(source, data=data, keep=_csv_ints(keep, "--keep"), index=_index_options(index))


@app.command()
def recommend(
    source: Annotated[Path, typer.Argument(help="A run folder written by `train`, or an export (`export`).")],
    requests: Annotated[Path, typer.Option(help="Request Parquet file (columns: see README, Serving).")],
    out: Annotated[Path, typer.Option(help="Output Parquet file: request_id, rank, item.<key>, score.<stage>.")],
    k: Annotated[int, typer.Option(help="Items per request.")] = 10,
    keep: KeepOpt = None,
    index: IndexOpt = "exact",
    exclude_history: Annotated[
        bool, typer.Option("--exclude-history/--keep-history", help="Never recommend an item of the history.")
    ] = True,
    data: Annotated[Path | None, typer.Option(help="Dataset folder of a run (default: the run's).")] = None,
    threads: ServeThreadsOpt = None,
) -> None:
    """Recommend the top k catalogue items for every request of a Parquet file (batch)."""
    import pyarrow.parquet as pq

    from .data.atomic import atomic_path
    from .serving import read_requests

    try:
        rec = _load_recommender(source, data, keep, index, threads)
        reqs = read_requests(requests, rec.schema)
        result = rec.recommend(reqs, k, exclude_history=exclude_history)
        table = result.to_table(rec.catalogue.key)
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    except (*_user_errors(), ImportError) as exc:
        raise _fail(str(exc)) from None
    per = {n: f"{v / max(len(reqs), 1):.2f} ms" for n, v in result.latency_ms.items()}
    console.print(
        f"{len(reqs)} requests -> {table.num_rows} recommendations in {out} "
        f"(catalogue {rec.catalogue.size} items, keep {list(rec.keep)}; per request: {per})",
        soft_wrap=True,
    )


@app.command()
def serve(
    source: Annotated[Path, typer.Argument(help="A run folder written by `train`, or an export (`export`).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    keep: KeepOpt = None,
    index: IndexOpt = "exact",
    data: Annotated[Path | None, typer.Option(help="Dataset folder of a run (default: the run's).")] = None,
    threads: ServeThreadsOpt = None,
) -> None:
    """Serve the cascade over HTTP: POST /recommend, GET /health, GET /metadata (see README, Serving)."""
    from .serving.app import serve as run_server

    try:
        rec = _load_recommender(source, data, keep, index, threads)
    except (*_user_errors(), ImportError) as exc:
        raise _fail(str(exc)) from None
    err_console.print(
        f"serving {rec.catalogue.size} items, keep {list(rec.keep)}, on http://{host}:{port} "
        "(POST /recommend, GET /health, GET /metadata)",
        soft_wrap=True,
    )
    run_server(rec, host=host, port=port)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `train`.")],
    out: Annotated[Path, typer.Argument(help="The export folder to write (a previous export is replaced).")],
    keep: KeepOpt = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder of the run (default: the run's).")] = None,
) -> None:
    """Export the cascade for serving: torch.export programs per stage, item tables, catalogue, manifest."""
    from .serving import Recommender
    from .serving.export import export_recommender

    try:
        rec = Recommender.from_run(run_dir, data=data, keep=_csv_ints(keep, "--keep"))
        export_recommender(rec, out)
    except (*_user_errors(), ImportError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"exported {len(rec.stages)} stages and {rec.catalogue.size} items to {out}", soft_wrap=True)


def main() -> None:
    """The ``cascade-ranking`` console entry point (idle OpenMP workers sleep: set before torch is imported)."""
    from .training.threads import passive_openmp_wait

    passive_openmp_wait()
    app()


if __name__ == "__main__":
    main()
