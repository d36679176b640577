"""`genserve store list | show | verify`: inspect and verify the model store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .cli_common import StoreOption, console, store_root

store_app = typer.Typer(help="Inspect and verify the model store.", no_args_is_help=True)


@store_app.command("list")
def store_list(store: StoreOption = None) -> None:
    """Models and versions in the store."""
    from rich.table import Table

    from service.store import ModelStore, StoreError

    ms = ModelStore(store_root(store))
    table = Table(title=str(ms.root))
    for col in ("model", "versions", "family", "data", "test", "training", "created"):
        table.add_column(col)
    cut: list[str] = []
    for model in ms.names():
        try:
            m = ms.open(model, verify=False).manifest
            bpd, nats = m.evaluation.get("test_bpd"), m.evaluation.get("test_log_likelihood")
            test = f"{bpd:.3f} bpd" if bpd is not None else f"{nats:.3f} nats" if nats is not None else "—"
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
                m.dataset.kind,
                test,
                training,
                m.created,
            )
        except StoreError as exc:
            try:
                versions = ", ".join(map(str, ms.versions(model)))
            except StoreError:  # the model folder itself cannot be read
                versions = "?"
            table.add_row(model, versions, "?", "?", "?", "?", f"unreadable: {exc}")
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

    mv = ModelStore(store_root(store)).open(name, version, verify=False)
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

    ms = ModelStore(store_root(store))
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
