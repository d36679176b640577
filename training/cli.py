"""`genserve` command line: train, evaluate, export, build-store, store, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from genserve.cli import register_online

from .cli_common import DEFAULT_CHECKPOINTS, MaxMinutesOption, StoreOption, checkpoint_path, console
from .cli_common import store_root as _store_root
from .cli_eval import register_evaluation
from .cli_store import store_app

app = typer.Typer(
    help="genserve: train, evaluate, export and serve deep generative models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


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


@app.command()
def train(
    family: Annotated[
        str | None, typer.Option(help="flow | vae | gan | pixelcnn | diffusion (vectors: flow)")
    ] = None,
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


@app.command("build-store")
def build_store_cmd(
    store: StoreOption = None,
    checkpoints: Annotated[Path, typer.Option(help="Checkpoint cache.")] = DEFAULT_CHECKPOINTS,
    dataset: Annotated[str, typer.Option()] = "digits",
    family: Annotated[list[str] | None, typer.Option(help="Families to build (default: all five).")] = None,
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
            help="digits: the five image families (on --dataset); sbi: NPE posteriors of sbibm's "
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


app.add_typer(store_app, name="store")
register_evaluation(app)
register_online(app)


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
