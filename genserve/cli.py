"""The online commands of `genserve`: `sample` and `score` against a running server,
through `genserve.client`, writing .png / .npy / .npz files."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client, GenserveError, ProblemError, Samples

console = Console(stderr=True)

UrlOption = Annotated[str, typer.Option(envvar="GENSERVE_URL", help="The server's base URL.")]
TokenOption = Annotated[
    str | None, typer.Option(envvar="GENSERVE_API_TOKEN", help="Access token (GENSERVE_API_TOKEN).")
]
LabelsOption = Annotated[
    str | None,
    typer.Option(help="One class (index or name) for all, or a comma-separated list, one per row."),
]
TimeoutOption = Annotated[
    float | None, typer.Option(help="Seconds for the whole call (the server stops there).")
]


def parse_labels(text: str | None) -> int | str | list[int | str] | None:
    """`3` / `seven` / `1,2,3` -> what the client takes (plain integers are indices)."""
    if text is None:
        return None
    items: list[int | str] = [int(p) if p.strip().isdigit() else p.strip() for p in text.split(",")]
    return items if len(items) > 1 else items[0]


def read_inputs(path: Path) -> np.ndarray:
    """Inputs from an .npy file, or the `inputs` array of an .npz file."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "inputs" not in z.files:
                raise typer.BadParameter(f"{path} holds {z.files}, not `inputs`")
            return z["inputs"]
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    raise typer.BadParameter(f"{path}: give an .npy file (or an .npz holding `inputs`)")


def _fail(exc: GenserveError) -> typer.Exit:
    """One line per error, with the fields the server named."""
    where = f" ({', '.join(exc.fields)})" if isinstance(exc, ProblemError) and exc.fields else ""
    console.print(f"[red]error:[/] {exc}{where}")
    return typer.Exit(1)


def _spinner(text: str) -> Progress:
    return Progress(TextColumn(text), BarColumn(), TimeElapsedColumn(), console=console, transient=True)


def register_online(app: typer.Typer) -> None:
    """Add `sample` and `score` to the `genserve` command line."""

    @app.command()
    def sample(
        model: Annotated[str, typer.Argument(help="A loaded model's name.")],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="samples.png (a captioned grid) or samples.npy")
        ],
        n: Annotated[int, typer.Option("-n", help="How many samples.")] = 16,
        labels: LabelsOption = None,
        seed: Annotated[
            int | None, typer.Option(help="Noise seed (printed when drawn by the server).")
        ] = None,
        temperature: Annotated[float | None, typer.Option(help="Latent or softmax temperature.")] = None,
        url: UrlOption = "http://127.0.0.1:8000",
        token: TokenOption = None,
        timeout: TimeoutOption = None,
    ) -> None:
        """Draw samples from a running server and write them to a file."""
        if out.suffix not in (".png", ".npy"):
            raise typer.BadParameter("--out must end in .png or .npy")
        with Client(url, token, timeout=timeout) as gs, _spinner(f"sampling {n} from {model}") as bar:
            bar.add_task("", total=None)
            try:
                if out.suffix == ".png":
                    png, drawn_seed = gs.sample_png(
                        model, n, parse_labels(labels), seed=seed, temperature=temperature
                    )
                    out.write_bytes(png)
                else:
                    drawn: Samples = gs.sample(
                        model, n, parse_labels(labels), seed=seed, temperature=temperature
                    )
                    np.save(out, drawn.samples)
                    drawn_seed = drawn.seed
            except GenserveError as exc:
                raise _fail(exc) from None
        console.print(f"wrote {out} ({n} samples of {model}, seed {drawn_seed})")

    @app.command()
    def score(
        model: Annotated[str, typer.Argument(help="A loaded model's name.")],
        inputs: Annotated[Path, typer.Argument(help="inputs.npy, or an .npz holding `inputs`.")],
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="scores.npz (every column) or scores.csv")
        ] = None,
        labels: LabelsOption = None,
        chunk: Annotated[int, typer.Option(help="Rows per request (progress is shown per request).")] = 1000,
        importance_samples: Annotated[
            int | None, typer.Option(help="Estimator samples (VAE K, flow S).")
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Estimator seed (default 0).")] = None,
        url: UrlOption = "http://127.0.0.1:8000",
        token: TokenOption = None,
        timeout: TimeoutOption = None,
    ) -> None:
        """Score inputs on a running server: log-likelihood, bits/dim, posterior, outliers."""
        x = read_inputs(inputs)
        lab = parse_labels(labels)
        if isinstance(lab, list) and len(lab) != len(x):
            raise typer.BadParameter(f"{len(lab)} labels for {len(x)} rows")
        parts: list[dict[str, np.ndarray]] = []
        with (
            Client(url, token, timeout=timeout) as gs,
            Progress(
                TextColumn("scoring"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} rows"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar,
        ):
            task = bar.add_task("", total=len(x))
            for start in range(0, len(x), max(1, chunk)):
                rows = slice(start, start + max(1, chunk))
                part_labels = lab[rows] if isinstance(lab, list) else lab
                try:
                    scored = gs.log_likelihood(
                        model, x[rows], part_labels, importance_samples=importance_samples, seed=seed
                    )
                except GenserveError as exc:
                    raise _fail(exc) from None
                parts.append(scored.columns)
                bar.advance(task, len(x[rows]))
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if out is None:
            _print_table(columns, sys.stdout)
        elif out.suffix == ".csv":
            with out.open("w", newline="") as f:
                _print_table(columns, f)
        else:
            np.savez(out, allow_pickle=False, **columns)
        if out is not None:
            console.print(f"wrote {out} ({len(x)} rows scored by {model})")


def _print_table(columns: dict[str, np.ndarray], stream: io.TextIOBase | Any) -> None:
    """One CSV row per input: the per-row columns, the posterior as one column per class."""
    names: list[str] = []
    cells: list[np.ndarray] = []
    for k, v in columns.items():
        if v.ndim == 1:
            names.append(k)
            cells.append(v)
        else:
            names += [f"{k}[{i}]" for i in range(v.shape[1])]
            cells += [v[:, i] for i in range(v.shape[1])]
    writer = csv.writer(stream)
    writer.writerow(names)
    for row in zip(*cells, strict=True):
        writer.writerow([f"{c:.6g}" if isinstance(c, float | np.floating) else c for c in row])
