"""`genserve evaluate | ood-eval | sbi-eval`: measuring models, beside baselines and references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import DEFAULT_CHECKPOINTS, MaxMinutesOption, StoreOption, checkpoint_path, console
from .cli_common import store_root as _store_root


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
    from .build import DEFAULT_FAMILIES
    from .pipeline import evaluate_checkpoints

    dirs = list(checkpoint or [])
    for fam in family or ([] if dirs else list(DEFAULT_FAMILIES)):
        dirs.append(checkpoint_path(checkpoints, fam, dataset, conditional, seed))
    missing = [d for d in dirs if not (d / "checkpoint.json").exists()]
    if missing:
        raise typer.BadParameter(
            f"no checkpoint at {', '.join(map(str, missing))}; run `genserve train` first"
        )
    evaluate_checkpoints(dirs, report, checkpoints, console)
    console.print(f"report written to {report}")


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


def sbi_eval_cmd(
    store: StoreOption = None,
    observations: Annotated[
        int, typer.Option(min=0, max=10, help="Benchmark observations per task (0: the context check only).")
    ] = 10,
    model: Annotated[list[str] | None, typer.Option(help="Only these NPE models (default: all).")] = None,
    report: Annotated[Path, typer.Option(help="JSON report.")] = Path("reports/sbi-eval.json"),
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as markdown.")] = None,
    draws: Annotated[
        int, typer.Option(min=100, help="Posterior and reference draws (sbibm: 10,000).")
    ] = 10_000,
    first: Annotated[
        int,
        typer.Option(
            min=1, max=10, help="The first observation (runs are per observation: split a long run)."
        ),
    ] = 1,
) -> None:
    """C2ST of every NPE posterior in the store against reference posteriors, as sbibm computes it."""
    from .vectors.sbi_eval import markdown as to_markdown
    from .vectors.sbi_eval import sbi_eval

    results = sbi_eval(_store_root(store), observations, model, say=console.print, draws=draws, first=first)
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


def register_evaluation(app: typer.Typer) -> None:
    """Add the evaluation commands to `app`."""
    app.command()(evaluate)
    app.command("ood-eval")(ood_eval)
    app.command("sbi-eval")(sbi_eval_cmd)
