"""`genserve` command line: train, evaluate, export, build-store, store, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    help="genserve: train, evaluate, export and serve deep generative models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()

DEFAULT_CHECKPOINTS = Path("checkpoints")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs -> dict; values parsed as JSON when they can be (numbers, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _positive(value: float | None, flag: str) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter("must be a positive number of minutes", param_hint=flag)
    return value


# A limit exists only when asked for: by default training ends by its epoch budget or
# early stopping, so a model does not depend on the machine's speed or load.
MaxMinutesOption = Annotated[
    float | None,
    typer.Option(
        callback=lambda v: _positive(v, "--max-minutes"),
        help="Wall-clock limit on each model's training, checked after each epoch (default: none). "
        "A model it cuts short is marked so in its checkpoint, manifest and listings.",
    ),
]


def _store_root(store: Path | None) -> Path:
    from service.config import load_settings

    return store or load_settings().model_store


StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Model store root (default: $GENSERVE_MODEL_STORE or model_store)."),
]


def checkpoint_path(root: Path, family: str, dataset: str, conditional: bool, seed: int) -> Path:
    """Where `train` puts a run by default: checkpoints/<family>-<dataset>[-uncond]-s<seed>."""
    name = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return root / f"{family}-{name}{'' if conditional else '-uncond'}-s{seed}"


@app.command()
def train(
    family: Annotated[str | None, typer.Option(help="flow | vae | gan | pixelcnn (vectors: flow)")] = None,
    dataset: Annotated[
        str,
        typer.Option(
            help="Images: digits | mnist5k | path/to/images.npz. Vectors: sbi:<task> (two_moons, slcp, "
            "gaussian_linear, gaussian_mixture) | tabular:<name> (breast_cancer, wine, iris, diabetes) | "
            "path/to/vectors.csv | path/to/vectors.npz (x of shape [N, D])"
        ),
    ] = "digits",
    conditional: Annotated[bool, typer.Option("--conditional/--unconditional")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and noise.")] = 0,
    max_minutes: MaxMinutesOption = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Architecture override key=value (repeatable).")
    ] = None,
    train_set: Annotated[
        list[str] | None, typer.Option("--train-set", help="Optimiser override key=value (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint directory.")] = None,
    checkpoints: Annotated[
        Path, typer.Option(help="Root for default checkpoint paths.")
    ] = DEFAULT_CHECKPOINTS,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    method: Annotated[
        str, typer.Option(help="SBI: npe (posterior p(θ|x)) | nle (likelihood p(x|θ))")
    ] = "npe",
    simulations: Annotated[int, typer.Option(min=20, help="SBI: the simulation budget.")] = 10_000,
    inliers: Annotated[
        str | None, typer.Option(help="Tabular: keep only this class (outlier models).")
    ] = None,
    features: Annotated[str | None, typer.Option(help=".csv: feature columns, comma-separated.")] = None,
    context: Annotated[str | None, typer.Option(help=".csv: context columns, comma-separated.")] = None,
    label_column: Annotated[str | None, typer.Option(help=".csv: the label column.")] = None,
    store: StoreOption = None,
    name: Annotated[str | None, typer.Option(help="Vectors: store name (default from the data).")] = None,
) -> None:
    """Train one model. Images: write its checkpoint (state dict + JSON config), published by
    `genserve export`. Vectors: train, export, evaluate and publish it into the store."""
    from .train import train_run
    from .vectors.pipeline import is_vector_data

    train_overrides = parse_overrides(train_set)
    if max_minutes is not None:
        train_overrides["max_minutes"] = max_minutes
    if epochs is not None:
        train_overrides["max_epochs"] = epochs
    if is_vector_data(dataset):
        from .vectors.pipeline import VectorRecipe
        from .vectors.publish import build_vector_model

        if family not in (None, "flow"):
            raise typer.BadParameter("vector data is modelled by flows", param_hint="--family")
        recipe = VectorRecipe(
            dataset,
            method,
            simulations,
            inliers,
            tuple(features.split(",")) if features else None,
            tuple(context.split(",")) if context else None,
            label_column,
            parse_overrides(set_),
            train_overrides,
        )
        outcome = build_vector_model(
            _store_root(store), recipe, seed, console, conditional=conditional, name=name
        )
        console.print(f"{outcome.action}: {outcome.name} v{outcome.version} ({outcome.seconds:.0f}s)")
        return
    if family is None:
        raise typer.BadParameter("name a family for image data", param_hint="--family")
    target = out or checkpoint_path(checkpoints, family, dataset, conditional, seed)
    if target.exists() and not target.is_dir():  # found now, not after minutes of training
        raise typer.BadParameter(f"{target} is a file, not a folder", param_hint="--out")
    validator = None
    if family == "gan":
        validator = _gan_validator(dataset, seed, checkpoints)
    result = train_run(
        family,
        dataset,
        conditional,
        seed,
        config_overrides=parse_overrides(set_),
        train_overrides=train_overrides,
        device=device,
        checkpoint_dir=target,
        validator=validator,
    )
    rec = result.info.record
    console.print(
        f"[green]trained[/] {family} on {result.data.spec.name}: "
        f"best validation {rec['best_validation']:.4f} at epoch {rec['best_epoch']} "
        f"({rec['stopped']}, {rec['duration_s']:.0f}s) -> {target}"
    )
    if rec.get("cut_short"):
        console.print(
            f"[bold red]WARNING[/]: the time limit cut this run short at epoch {rec['epochs']} of "
            f"{rec['max_epochs']}; its checkpoint (and anything exported from it) is marked cut short"
        )


def _gan_validator(dataset: str, seed: int, cache: Path) -> Any:
    from .data import load_dataset, make_splits
    from .pipeline import gan_validator

    data = load_dataset(dataset)
    splits = make_splits(data.y, len(data), seed=seed)
    return gan_validator(data, splits, cache, seed)


@app.command()
def evaluate(
    checkpoint: Annotated[
        list[Path] | None, typer.Option(help="Checkpoint directories (repeatable).")
    ] = None,
    family: Annotated[list[str] | None, typer.Option(help="Evaluate default checkpoints of these.")] = None,
    dataset: Annotated[str, typer.Option()] = "digits",
    conditional: Annotated[bool, typer.Option("--conditional/--unconditional")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoints: Annotated[Path, typer.Option()] = DEFAULT_CHECKPOINTS,
    report: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path(
        "reports/evaluation.json"
    ),
) -> None:
    """Score checkpoints on the test split beside classical baselines; print and save a report."""
    from .pipeline import evaluate_checkpoints

    dirs = list(checkpoint or [])
    for fam in family or ([] if dirs else ["flow", "vae", "gan", "pixelcnn"]):
        dirs.append(checkpoint_path(checkpoints, fam, dataset, conditional, seed))
    missing = [d for d in dirs if not (d / "checkpoint.json").exists()]
    if missing:
        raise typer.BadParameter(
            f"no checkpoint at {', '.join(map(str, missing))}; run `genserve train` first"
        )
    evaluate_checkpoints(dirs, report, checkpoints, console)
    console.print(f"report written to {report}")


@app.command("ood-eval")
def ood_eval(
    store: StoreOption = None,
    dataset: Annotated[str, typer.Option()] = "digits",
    novelty: Annotated[
        bool, typer.Option("--novelty/--no-novelty", help="Also run one-class novelty (retrains).")
    ] = True,
    classes: Annotated[
        list[int] | None, typer.Option("--class", help="Held-out classes for novelty (default all).")
    ] = None,
    novelty_minutes: MaxMinutesOption = None,
    novelty_epochs: Annotated[
        float,
        typer.Option(
            help="Novelty models train this share of their default epochs "
            "(1.0 = the served recipe; 0.3 gives a run about half as long).",
        ),
    ] = 1.0,
    report: Annotated[Path, typer.Option(help="JSON report.")] = Path("reports/ood-eval.json"),
    markdown: Annotated[Path | None, typer.Option(help="Also write the tables as markdown.")] = None,
) -> None:
    """Outlier-detection evaluation: every likelihood family x every score vs classical detectors."""
    from .ood_eval import evaluate_novelty, evaluate_store, render_markdown

    result = evaluate_store(_store_root(store), dataset, console=console)
    result.settings["novelty_minutes"] = novelty_minutes if novelty else None
    result.settings["novelty_epochs"] = novelty_epochs if novelty else None
    if novelty:
        result.protocols["novelty"] = evaluate_novelty(
            dataset, classes, novelty_minutes, epoch_scale=novelty_epochs, console=console
        )
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.model_dump_json(indent=1))
    text = render_markdown(result)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    console.print(text, markup=False, highlight=False)
    console.print(f"report written to {report}")


@app.command("sbi-eval")
def sbi_eval_cmd(
    store: StoreOption = None,
    observations: Annotated[int, typer.Option(min=1, max=10, help="Benchmark observations per task.")] = 10,
    model: Annotated[list[str] | None, typer.Option(help="Only these NPE models (default: all).")] = None,
    report: Annotated[Path, typer.Option(help="JSON report.")] = Path("reports/sbi-eval.json"),
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as markdown.")] = None,
    draws: Annotated[
        int, typer.Option(min=100, help="Posterior and reference draws (sbibm: 10,000).")
    ] = 10_000,
) -> None:
    """C2ST of every NPE posterior in the store against reference posteriors, as sbibm computes it."""
    from .vectors.sbi_eval import markdown as to_markdown
    from .vectors.sbi_eval import sbi_eval

    results = sbi_eval(_store_root(store), observations, model, say=console.print, draws=draws)
    if not results:
        raise typer.BadParameter(
            "no NPE models in the store (genserve build-store --suite sbi)", param_hint="--store"
        )
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(results, indent=2))
    table = to_markdown(results)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(table + "\n")
    console.print(table, markup=False, highlight=False)
    console.print(f"report written to {report}")


@app.command("build-store")
def build_store_cmd(
    store: StoreOption = None,
    checkpoints: Annotated[Path, typer.Option(help="Checkpoint cache.")] = DEFAULT_CHECKPOINTS,
    dataset: Annotated[str, typer.Option()] = "digits",
    family: Annotated[list[str] | None, typer.Option(help="Families to build (default: all four).")] = None,
    conditional: Annotated[bool, typer.Option("--conditional/--unconditional")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[
        bool, typer.Option(help="Publish even where a name's latest version is another kind of model.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Models built at once, one single-threaded process each (default: cores)."),
    ] = None,
    max_minutes: MaxMinutesOption = None,
    suite: Annotated[
        str,
        typer.Option(
            help="digits: the four image families (on --dataset); sbi: NPE posteriors of sbibm's "
            "two_moons, slcp, gaussian_linear, gaussian_mixture at 10,000 simulations; tabular: "
            "an outlier model of breast_cancer's benign records."
        ),
    ] = "digits",
) -> None:
    """Train (or reuse), evaluate, export and publish a zoo; does nothing if up to date."""
    import time

    from rich.table import Table

    from service.resources import available_cores

    from .build import DEFAULT_FAMILIES, build_store

    start = time.monotonic()
    root = _store_root(store)
    families = tuple(family or DEFAULT_FAMILIES)
    limit = {} if max_minutes is None else {"max_minutes": max_minutes}
    if suite != "digits":
        from .vectors.suites import SUITES, build_suite

        if suite not in SUITES:
            raise typer.BadParameter(f"choose from digits, {', '.join(SUITES)}", param_hint="--suite")
        outcomes = build_suite(
            root, suite, seed, workers or available_cores(), force=force, train_overrides=limit
        )
    else:
        outcomes = build_store(
            root,
            checkpoints,
            dataset,
            families,
            conditional,
            seed,
            console=console,
            force=force,
            workers=workers,
            train_overrides=dict.fromkeys(families, limit),
        )
    table = Table(title=f"model store {root}")
    for col in ("model", "version", "action", "trained", "seconds"):
        table.add_column(col)
    for o in outcomes:
        trained = ("[bold red]CUT SHORT[/]" if o.cut_short else "yes") if o.trained else "no"
        table.add_row(o.name, str(o.version), o.action, trained, f"{o.seconds:.0f}")
    console.print(table)
    console.print(f"build-store finished in {time.monotonic() - start:.0f}s")
    cut = [o.name for o in outcomes if o.cut_short]
    if cut:
        console.print(
            f"[bold red]WARNING[/]: the {max_minutes or 0:g}-minute limit cut short the training of "
            f"{', '.join(cut)}; they are published marked cut short and depend on this machine's "
            "speed and load. Build without --max-minutes for the recipes' models."
        )


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory to export.")],
    store: StoreOption = None,
    name: Annotated[str | None, typer.Option(help="Store name (default <family>-<dataset>).")] = None,
    checkpoints: Annotated[Path, typer.Option(help="Classifier cache.")] = DEFAULT_CHECKPOINTS,
    force: Annotated[
        bool, typer.Option(help="Publish even if the name's latest version is another kind of model.")
    ] = False,
) -> None:
    """Evaluate a checkpoint, export its graphs (ONNX + TorchScript, parity-checked), publish."""
    from .build import export_checkpoint

    version = export_checkpoint(
        checkpoint,
        _store_root(store),
        checkpoints,
        name,
        step=lambda text: console.print(f"  {text}"),
        force=force,
    )
    console.print(f"[green]published[/] {version.name} v{version.version} -> {version.path}")


store_app = typer.Typer(help="Inspect and verify the model store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("list")
def store_list(store: StoreOption = None) -> None:
    """Models and versions in the store."""
    from rich.table import Table

    from service.store import ModelStore, StoreError

    ms = ModelStore(_store_root(store))
    table = Table(title=str(ms.root))
    for col in ("model", "versions", "family", "test bpd", "training", "created"):
        table.add_column(col)
    cut: list[str] = []
    for model in ms.names():
        try:
            m = ms.open(model, verify=False).manifest
            bpd = m.evaluation.get("test_bpd")
            t = m.training
            training = f"{t.epochs} epochs, {t.stopped}"
            if t.cut_short:
                training = f"[bold red]CUT SHORT[/] at epoch {t.epochs}" + (
                    f" of {t.max_epochs}" if t.max_epochs else ""
                )
                cut.append(f"{model} v{m.version}")
            table.add_row(
                model,
                ", ".join(map(str, ms.versions(model))),
                m.family,
                "—" if bpd is None else f"{bpd:.3f}",
                training,
                m.created,
            )
        except StoreError as exc:
            try:
                versions = ", ".join(map(str, ms.versions(model)))
            except StoreError:  # the model folder itself cannot be read
                versions = "?"
            table.add_row(model, versions, "?", "?", "?", f"unreadable: {exc}")
    console.print(table)
    if cut:
        console.print(
            f"[bold red]WARNING[/]: {', '.join(cut)}: training was cut short by a time limit; "
            "these models depend on the machine that built them (rebuild without a limit)"
        )


@store_app.command("show")
def store_show(
    name: str,
    version: Annotated[int | None, typer.Option()] = None,
    store: StoreOption = None,
    full: Annotated[bool, typer.Option(help="Include split indices and calibration scores.")] = False,
) -> None:
    """Print a version's manifest (summarised unless --full)."""
    from service.store import ModelStore

    mv = ModelStore(_store_root(store)).open(name, version, verify=False)
    data = mv.manifest.model_dump(mode="json")
    if not full:
        for key in ("validation", "calibration", "test"):
            data["split"][key] = f"<{len(data['split'][key])} indices>"
        if data.get("calibration"):
            for key in ("log_likelihood",):
                data["calibration"][key] = f"<{len(data['calibration'][key])} values>"
            for table in ("scores", "scores_given_labels"):
                if data["calibration"].get(table):
                    data["calibration"][table] = {
                        k: f"<{len(v)} values>" for k, v in data["calibration"][table].items()
                    }
    console.print_json(json.dumps(data))


@store_app.command("verify")
def store_verify(
    name: Annotated[str | None, typer.Argument(help="One model (default: all).")] = None,
    store: StoreOption = None,
) -> None:
    """Check every file's sha256, the manifest schema and the allowlist; exit 1 on any problem."""
    from service.store import IntegrityError, ModelNotFoundError, ModelStore, StoreError

    ms = ModelStore(_store_root(store))
    models = [name] if name else ms.names()
    if not models:
        # An empty or missing store is a problem here: the image build runs
        # `build-store && store verify` and must not ship a store with nothing in it.
        console.print(f"[red]FAIL[/] {ms.root}: no models in the store")
        raise typer.Exit(1)
    bad = 0
    for model in models:
        try:
            versions = ms.versions(model)  # refuses names that are not plain store entries
            if not versions:
                raise ModelNotFoundError(f"no model named {model!r} in {ms.root}")
        except StoreError as exc:
            bad += 1
            console.print(f"[red]FAIL[/] {model}: {exc}")
            continue
        for v in versions:
            try:
                ms.verify(model, v)
                console.print(f"[green]ok[/]   {model}/{v}")
            except StoreError as exc:
                bad += 1
                # an IntegrityError already starts with its model/version
                said = str(exc) if isinstance(exc, IntegrityError) else f"{model}/{v}: {exc}"
                console.print(f"[red]FAIL[/] {said}")
    if bad:
        raise typer.Exit(1)


@app.command()
def serve(
    store: StoreOption = None,
    host: Annotated[str | None, typer.Option(help="Default $GENSERVE_HOST or 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="Default $GENSERVE_PORT or 8000.")] = None,
    backend: Annotated[str | None, typer.Option(help="onnxruntime | torchscript")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    grace_period: Annotated[
        float | None,
        typer.Option(help="Seconds requests may run after SIGTERM. Default $GENSERVE_GRACE_PERIOD_S or 30."),
    ] = None,
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="Build the default store if empty.")
    ] = True,
    checkpoints: Annotated[Path, typer.Option()] = DEFAULT_CHECKPOINTS,
) -> None:
    """Serve the store over HTTP (building the default zoo first if the store is empty).

    SIGTERM or Ctrl+C drains: readiness turns 503, new requests get 503 + Retry-After,
    requests in progress finish (up to the grace period), models are unloaded, exit 0.
    """
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from service.app import create_app
    from service.config import load_settings
    from service.lifecycle import GracefulServer
    from service.runtime import DeviceUnavailableError, resolve_device
    from service.store import ModelStore

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "model_store": store,
            "host": host,
            "port": port,
            "backend": backend,
            "device": device,
            "grace_period_s": grace_period,
        }.items()
        if v is not None
    }
    settings = load_settings(**overrides)
    try:
        where = resolve_device(settings.backend, settings.device)
    except DeviceUnavailableError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if build and not ModelStore(settings.model_store).names():
        from .build import build_store

        console.print(f"model store {settings.model_store} is empty: building the default models first")
        build_store(settings.model_store, checkpoints, console=console)
    console.print(
        f"serving {settings.model_store} with {settings.backend} on {where} at http://{settings.host}:{settings.port}"
    )
    app_ = create_app(settings)
    # uvicorn configures only its own loggers; without this the service's start-up,
    # failure and drain messages would not reach the container log.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["genserve"] = {
        "handlers": ["default"],
        "level": settings.log_level.upper(),
        "propagate": False,
    }
    config = uvicorn.Config(
        app_,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config,
        # The drain already waited for requests; this only bounds closing idle
        # connections and any straggler that raced the drain.
        timeout_graceful_shutdown=3,
    )
    server = GracefulServer(config, app_.state.lifecycle, settings.grace_period_s)
    server.run()  # start-up failures exit 3 from inside uvicorn


def main() -> None:
    """Console-script entry point: a user's bad data or override gets one line, not a traceback."""
    from service.config import ConfigError
    from service.store import StoreError

    from .checkpoint import CheckpointError
    from .data import DataError
    from .families import UnknownFamilyError
    from .runtime import DeviceError
    from .train import SettingsError

    try:
        app()
    except (DataError, SettingsError, ConfigError, UnknownFamilyError, DeviceError, CheckpointError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    except StoreError as exc:  # an unknown model or version, a damaged manifest
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
