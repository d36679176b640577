"""`genserve build-store`: train (or reuse), evaluate, export, calibrate and publish the zoo.

Idempotent: a model whose latest store version was built from the same data, config and
code (its `build_key`) is left alone, and a checkpoint trained with the same key is reused.
"""

from __future__ import annotations

import asyncio
import functools
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import service
from service.engine import SamplerOptions, build_engine, inline_caller, noise_rng
from service.manifest import SCHEMA_VERSION, DatasetSpec, Manifest, VectorSpec
from service.resources import available_cores
from service.runtime import BackendName, DeviceRequest, open_backend
from service.store import IntegrityError, ModelStore, ModelVersion, StoreError

from .build_jobs import BuildJob, BuildOutcome, run_jobs
from .checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, read_info, run_key
from .classifier import load_or_train_classifier
from .data import ImageDataset, SplitFractions, Splits, load_dataset, make_splits
from .evaluate import EvalSettings, ModelScores, score_model
from .export import export_graphs
from .families import GenerativeModel, check_family, default_config
from .outlier_calibration import calibrate
from .pipeline import data_for, gan_validator
from .quality import Sampler, SamplingChoice
from .runtime import configure_threads
from .train import default_train_config, train_run, training_key

DEFAULT_FAMILIES = ("flow", "vae", "gan", "pixelcnn", "diffusion")
# Estimator sizes the service uses by default, and so the calibration scores use.
SERVING_SAMPLES = {"flow": 8, "vae": 32, "pixelcnn": 1, "diffusion": 16}
# Everything between a checkpoint and its published version, the manifest's evaluation
# included: editing any of these re-publishes (without retraining).
_EXPORT_SOURCES = (
    "export.py",
    "pixelcnn_steps.py",
    "build.py",
    "evaluate.py",
    "quality.py",
    "classifier.py",
    "outlier_calibration.py",
    "ood_sets.py",
    "ood_metrics.py",
    "vectors/publish.py",
    "vectors/baselines.py",
    "graphdef.py",
)


def model_name(family: str, dataset: str, conditional: bool) -> str:
    """Store name of a model: <family>-<dataset>[-uncond]."""
    stem = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return f"{family}-{stem.lower()}{'' if conditional else '-uncond'}"


def export_fingerprint() -> str:
    """Hash of the code that turns a checkpoint into a store version."""
    import hashlib

    here = Path(__file__).parent
    svc = Path(service.__file__).parent
    h = hashlib.sha256()
    for f in [
        *(here / s for s in _EXPORT_SOURCES),
        svc / "manifest.py",
        svc / "outliers.py",
        *sorted((svc / "engine").glob("*.py")),
    ]:
        h.update(f.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "genserve": service.__version__,
        "python": platform.python_version(),
    }


def served_backend_for(training_device: str) -> tuple[BackendName, DeviceRequest]:
    """The backend that draws a build's samples and calibrates it through the exported
    graphs: ONNX Runtime on the CPU (what the service runs by default), but TorchScript on
    CUDA for a model trained on a GPU, where the sampling choice's thousands of denoiser or
    PixelCNN passes on one CPU thread would take longer than the training did."""
    if training_device.startswith("cuda"):
        return "torchscript", "cuda"
    return "onnxruntime", "cpu"


def training_fields(
    config: dict[str, Any],
    optimizer: dict[str, Any],
    seed: int,
    record: dict[str, Any],
    key: str,
    cut_short: bool,
) -> dict[str, Any]:
    """The manifest's `training` record from a run's settings and its fit() record."""
    return {
        "config": config,
        "optimizer": optimizer,
        "seed": seed,
        "duration_s": float(record.get("duration_s", 0.0)),
        "epochs": int(record.get("epochs", 0)),
        "best_epoch": int(record.get("best_epoch", 0)),
        "stopped": str(record.get("stopped", "")),
        "device": str(record.get("device", "cpu")),
        "checkpoint_key": key,
        "max_epochs": record.get("max_epochs"),
        "time_limit_minutes": record.get("time_limit_minutes"),
        "cut_short": cut_short,
    }


def _up_to_date(store: ModelStore, name: str, build_key: str) -> ModelVersion | None:
    """The latest version if it was built from the same key and ran its course: a version
    a time limit cut short is what one machine reached in the time, so a build retries."""
    try:
        version = store.open(name)
    except StoreError:
        return None
    m = version.manifest
    return version if m.build_key == build_key and not m.training.cut_short else None


def publish_model(
    store: ModelStore,
    name: str,
    model: GenerativeModel,
    info: CheckpointInfo,
    data: ImageDataset,
    splits: Splits,
    evaluate: Callable[[Sampler], ModelScores],
    build_key: str,
    step: Callable[[str], None] = lambda _s: None,
) -> ModelVersion:
    """Export, check, evaluate, calibrate and atomically publish one model as a new version.

    `step` hears about each stage as it starts (the whole takes minutes).

    Sample quality and calibration scores are computed through the exported ONNX graphs
    with the service's own engine: what gets measured is what gets served.
    """
    te = splits.test
    x_ho = torch.as_tensor(data.x[te])
    y_ho = torch.as_tensor(data.y[te]) if (model.conditional and data.y is not None) else None
    rec = info.record
    with store.staging(name) as stage:
        step("exporting graphs (ONNX + TorchScript) and checking parity")
        graphs, gaps = export_graphs(model, stage.path, x_ho, y_ho)
        family_info: dict[str, Any] = {
            **model.export_info(),
            "estimator": model.estimator,
            "default_samples": SERVING_SAMPLES.get(model.family, 0),
            "parity": gaps,
            "opset": 18,
        }
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "family": model.family,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "description": (
                f"{'class-conditional ' if model.conditional else ''}{model.family} on {data.spec.name}"
            ),
            "dataset": data.spec.model_dump(),
            "conditioning": {"conditional": model.conditional, "class_prior": info.class_prior},
            "family_info": family_info,
            "graphs": [g.model_dump() for g in graphs],
            "evaluation": {},
            "split": {
                "dataset": info.dataset,
                "seed": info.split_seed,
                "fractions": info.split_fractions,
                "validation": splits.validation.tolist(),
                "calibration": splits.calibration.tolist(),
                "test": splits.test.tolist(),
            },
            "training": training_fields(
                info.config, info.train, info.split_seed, rec, info.key, info.cut_short
            ),
            "versions": _versions(),
            "build_key": build_key,
        }
        provisional = Manifest.model_validate(
            {
                **fields,
                "name": name,
                "version": 1,
                "calibration": None,
                "files": [e.model_dump() for e in stage.file_entries()],
            }
        )
        backend = open_backend(
            provisional.graphs,
            stage.path,
            *served_backend_for(str(rec.get("device", "cpu"))),
            torch.get_num_threads(),
        )
        engine = build_engine(provisional, inline_caller(backend))

        def served_samples(
            n: int, labels: torch.Tensor | None, seed: int, choice: SamplingChoice
        ) -> torch.Tensor:
            lab = None if labels is None else labels.numpy().astype(np.int64)
            options = SamplerOptions(steps=choice.steps, guidance=choice.guidance)
            drawn = engine.sample(n, lab, noise_rng(seed), choice.temperature, options=options)
            return torch.from_numpy(asyncio.run(drawn))

        step("evaluating on the test split (likelihood, baselines, sample quality)")
        scores = evaluate(served_samples)
        fields["evaluation"] = scores.model_dump()
        if scores.sampling_validation_fid is not None:
            fields["sampling"] = {
                "default_temperature": scores.sample_temperature,
                "default_steps": scores.sample_steps,
                "default_guidance": scores.sample_guidance,
                "selected_by": scores.sampling_selected_by,
                "validation_fid": scores.sampling_validation_fid,
            }
        if engine.can_score:
            step("calibrating outlier scores on the calibration split")
        calibration = (
            asyncio.run(calibrate(engine, data, splits, SERVING_SAMPLES[engine.family]))
            if engine.can_score
            else None
        )
        backend.close()
        fields["calibration"] = None if calibration is None else calibration.model_dump()
        return stage.commit(fields)


def evaluate_and_publish(
    store: ModelStore,
    name: str,
    model: GenerativeModel,
    info: CheckpointInfo,
    data: ImageDataset,
    splits: Splits,
    cache: Path | None,
    build_key: str,
    settings: EvalSettings | None = None,
    step: Callable[[str], None] = lambda _s: None,
) -> ModelVersion:
    """Score on the test split (with the cached judge) and publish."""
    settings = settings or EvalSettings.for_dims(data.spec.dims)
    classifier = None
    if data.y is not None:
        classifier, _ = load_or_train_classifier(
            data, splits, cache, seed=info.split_seed, epochs=settings.classifier_epochs
        )

    def evaluate(sampler: Sampler) -> ModelScores:
        return score_model(
            model,
            name,
            data,
            splits,
            classifier,
            info.class_prior,
            training=info.training_summary,
            settings=settings,
            sampler=sampler,
        )

    try:
        return publish_model(store, name, model, info, data, splits, evaluate, build_key, step)
    except IntegrityError as exc:  # pragma: no cover - would be a bug in the exporter
        raise RuntimeError(f"publishing {name} failed verification: {exc}") from exc


def check_same_kind(
    store: ModelStore, name: str, family: str, conditional: bool, spec: DatasetSpec | VectorSpec
) -> None:
    """Refuse to publish under `name` a model of another kind than its latest version: a
    client asking for `gan-digits` must not silently get a VAE, another data shape, or a
    `y` input over another number of classes."""
    try:
        latest = store.open(name, verify=False).manifest
    except StoreError:  # no version yet, or a damaged one: nothing to be consistent with
        return
    data = latest.dataset
    classes = data.num_classes if latest.conditioning.conditional else 0
    theirs = (latest.family, latest.conditioning.conditional, classes, data.signature(), data.summary())
    ours = (family, conditional, spec.num_classes if conditional else 0, spec.signature(), spec.summary())
    if theirs[:4] != ours[:4]:

        def kind(family: str, conditional: bool, classes: int, _sig: Any, summary: str) -> str:
            how = f"conditional ({classes} classes)" if conditional else "unconditional"
            return f"{how} {family} on {summary}"

        raise StoreError(
            f"{name} v{latest.version} is a {kind(*theirs)}; refusing to publish a {kind(*ours)} "
            f"under that name (choose another --name, or pass --force)"
        )


def export_checkpoint(
    checkpoint: Path,
    store_root: Path,
    cache: Path | None,
    name: str | None = None,
    step: Callable[[str], None] = lambda _s: None,
    force: bool = False,
) -> ModelVersion:
    """`genserve export`: publish one trained checkpoint as a new store version."""
    configure_threads()  # the same figures as build-store's, whatever the core count
    model, info = load_checkpoint(checkpoint)
    data, splits = data_for(info)
    name = name or model_name(info.family, info.dataset, info.conditional)
    build_key = run_key({"train": info.key, "export": export_fingerprint(), "schema": SCHEMA_VERSION})
    store = ModelStore(store_root)
    with store.lock(name, on_wait=lambda: step(f"waiting for another publisher of {name}")):
        if not force:
            check_same_kind(store, name, info.family, info.conditional, data.spec)
        return evaluate_and_publish(store, name, model, info, data, splits, cache, build_key, step=step)


def _say(console: Console, name: str, text: str) -> None:
    console.print(f"  {name}: {text}")


def build_store(
    store_root: Path,
    checkpoints: Path,
    dataset: str = "digits",
    families: tuple[str, ...] = DEFAULT_FAMILIES,
    conditional: bool = True,
    seed: int = 0,
    console: Console | None = None,
    progress: bool = True,
    config_overrides: dict[str, dict[str, Any]] | None = None,
    train_overrides: dict[str, dict[str, Any]] | None = None,
    eval_settings: EvalSettings | None = None,
    force: bool = False,
    workers: int | None = None,
) -> list[BuildOutcome]:
    """Build (or confirm) one store version per family; returns what was done.

    A name whose latest version is another kind of model (family, conditioning, data
    shape, levels or classes) is refused before training, unless `force`.

    Models that need building are built `workers` at a time (default: one per core this
    process may use), each in a single-threaded process; the result is the same for any
    number of workers.

    The overrides (family -> settings) exist for tests and experiments; the default zoo
    uses the defaults tuned for each family.
    """
    console = console or Console()
    for family in families:  # before any training: a typo must not cost the ones before it
        check_family(family)
    if store_root.exists() and not store_root.is_dir():
        raise StoreError(f"the model store {store_root} is a file, not a folder")
    configure_threads()
    store = ModelStore(store_root)
    data = load_dataset(dataset)
    fractions = SplitFractions()
    splits = make_splits(data.y, len(data), seed=seed, fractions=fractions)
    outcomes: dict[str, BuildOutcome] = {}
    jobs: list[BuildJob] = []
    for family in families:
        start = time.monotonic()
        name = model_name(family, dataset, conditional)
        arch = (config_overrides or {}).get(family, {})
        optim = (train_overrides or {}).get(family, {})
        config = default_config(family, data.spec, **arch)
        tcfg = default_train_config(family, data.spec, **optim)
        key = training_key(
            family, data, conditional, config.model_dump(mode="json"), tcfg, (seed, seed), fractions
        )
        build_key = run_key({"train": key, "export": export_fingerprint(), "schema": SCHEMA_VERSION})
        # An up-to-date model needs no lock (so a read-only store that is complete builds
        # fine); the job checks again under the model's publish lock.
        current = _up_to_date(store, name, build_key)
        if current is not None:
            console.print(f"[green]up to date[/] {name} v{current.version}")
            outcomes[family] = BuildOutcome(
                name, "up to date", current.version, time.monotonic() - start, False
            )
            continue
        if not force:  # before any training: minutes must not be spent on a refused publish
            check_same_kind(store, name, family, conditional, data.spec)
        jobs.append(
            BuildJob(
                store_root,
                checkpoints,
                name,
                family,
                dataset,
                conditional,
                seed,
                key,
                build_key,
                arch=arch,
                optim=optim,
                eval_settings=eval_settings,
                force=force,
            )
        )
    if jobs and data.y is not None:
        # The judge every model's evaluation (and the GAN's selection) needs, trained once
        # here and cached, rather than by several workers at once.
        for epochs in {
            (eval_settings or EvalSettings.for_dims(data.spec.dims)).classifier_epochs,
            (eval_settings or EvalSettings()).classifier_epochs,
        }:
            load_or_train_classifier(data, splits, checkpoints, seed=seed, epochs=epochs)
    count = min(workers or available_cores(), len(jobs))
    for job, outcome in zip(jobs, run_jobs(jobs, count, build_job, console, progress), strict=True):
        outcomes[job.family] = outcome
    return [outcomes[f] for f in families]


def build_job(job: BuildJob, console: Console, progress: bool) -> BuildOutcome:
    """Build one model under its publish lock: a concurrent build-store waits, then finds it
    up to date instead of publishing a twin."""
    start = time.monotonic()
    store = ModelStore(job.store_root)
    waiting = functools.partial(console.print, f"waiting for another publisher of {job.name}")
    with store.lock(job.name, on_wait=waiting):
        current = _up_to_date(store, job.name, job.build_key)
        if current is not None:
            console.print(f"[green]up to date[/] {job.name} v{current.version}")
            return BuildOutcome(job.name, "up to date", current.version, time.monotonic() - start, False)
        return _build_one(store, job, console, progress, start)


def _reusable(ckpt: Path, key: str, console: Console) -> tuple[GenerativeModel, CheckpointInfo] | None:
    """The checkpoint at `ckpt` if it was trained with `key`, ran its course and loads intact."""
    try:
        if not (ckpt / "checkpoint.json").exists() or (info := read_info(ckpt)).key != key:
            return None
        if info.cut_short:
            # A cut run is what one machine reached in the time: training again may go further.
            console.print(f"[yellow]not reusing checkpoint[/] {ckpt}: a time limit cut it short")
            return None
        found = load_checkpoint(ckpt)
    except CheckpointError as exc:  # e.g. a run killed while saving: train again
        console.print(f"[yellow]not reusing checkpoint[/] {ckpt}: {exc}")
        return None
    console.print(f"reusing checkpoint {ckpt}")
    return found


def _build_one(
    store: ModelStore, job: BuildJob, console: Console, progress: bool, start: float
) -> BuildOutcome:
    """Train (or reuse a checkpoint), evaluate and publish one family (under its lock)."""
    data = load_dataset(job.dataset)
    splits = make_splits(data.y, len(data), seed=job.seed, fractions=SplitFractions())
    if not job.force:
        check_same_kind(store, job.name, job.family, job.conditional, data.spec)
    suffix = "" if job.conditional else "-uncond"
    ckpt = job.checkpoints / f"{job.family}-{data.spec.name}{suffix}-s{job.seed}"
    say = functools.partial(_say, console, job.name)
    trained = False
    if (found := _reusable(ckpt, job.key, console)) is not None:
        model, info = found
    else:
        validator = None
        if job.family == "gan":
            epochs = (job.eval_settings or EvalSettings()).classifier_epochs
            validator = gan_validator(data, splits, job.checkpoints, job.seed, epochs)
        if not progress:
            budget = default_train_config(job.family, data.spec, **job.optim).max_epochs
            say(f"training ({budget} epochs at most)")
        result = train_run(
            job.family,
            job.dataset,
            job.conditional,
            job.seed,
            config_overrides=job.arch,
            train_overrides=job.optim,
            fractions=SplitFractions(),
            checkpoint_dir=ckpt,
            progress=progress,
            validator=validator,
            say=console.print,
        )
        model, info = result.model, result.info
        trained = True
        rec = info.record
        say(
            f"trained: {rec['epochs']} epochs ({rec['stopped']}, best at {rec['best_epoch']}), "
            f"{rec['duration_s']:.0f} s"
        )
    version = evaluate_and_publish(
        store,
        job.name,
        model,
        info,
        data,
        splits,
        job.checkpoints,
        job.build_key,
        job.eval_settings,
        step=say,
    )
    elapsed = time.monotonic() - start
    cut = version.manifest.training.cut_short
    console.print(
        f"[green]published[/] {job.name} v{version.version} in {elapsed:.0f}s"
        + (" [bold red](CUT SHORT by its time limit)[/]" if cut else "")
    )
    return BuildOutcome(job.name, "published", version.version, elapsed, trained, cut)
