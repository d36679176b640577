"""The model store: publish atomically, verify hashes, refuse what is not allowed."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from service.manifest import SCHEMA_VERSION, Manifest
from service.store import (
    MANIFEST,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    ModelStore,
    StoreError,
)


def write_graph_files(folder: Path) -> None:
    """A real TorchScript archive and an (opaque to the store) ONNX file."""

    class Gen(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z * 2

    torch.jit.save(torch.jit.script(Gen()), str(folder / "generate.pt"))
    (folder / "generate.onnx").write_bytes(b"\x08\x07onnx-bytes" * 10)


def fields(**over: Any) -> dict[str, Any]:
    """Manifest fields (minus name/version/files) of a small unconditional GAN."""
    base: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "family": "gan",
        "created": "2026-01-01T00:00:00+00:00",
        "description": "test",
        "dataset": {
            "name": "toy",
            "shape": [1, 2, 2],
            "levels": 4,
            "label_names": None,
            "source": "",
        },
        "conditioning": {"conditional": False, "class_prior": None},
        "family_info": {"latent_dim": 2},
        "graphs": [
            {
                "name": "generate",
                "description": "G",
                "inputs": [{"name": "z", "dtype": "float32", "shape": ["batch", 2]}],
                "outputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 2, 2]}],
                "files": {"onnx": "generate.onnx", "torchscript": "generate.pt"},
            }
        ],
        "evaluation": {},
        "calibration": None,
        "split": {
            "dataset": "toy",
            "seed": 0,
            "fractions": {},
            "validation": [],
            "calibration": [],
            "test": [],
        },
        "training": {
            "config": {},
            "optimizer": {},
            "seed": 0,
            "duration_s": 1.0,
            "epochs": 1,
            "best_epoch": 1,
            "stopped": "test",
            "device": "cpu",
            "checkpoint_key": "k",
        },
        "versions": {},
        "build_key": "b",
    }
    base.update(over)
    return base


def publish(store: ModelStore, name: str = "gan-toy", **over: Any) -> int:
    with store.staging(name) as stage:
        write_graph_files(stage.path)
        return stage.commit(fields(**over)).version


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_publish_list_open_verify(store: ModelStore) -> None:
    assert store.names() == []
    assert publish(store) == 1
    assert publish(store, build_key="c") == 2
    assert store.names() == ["gan-toy"]
    assert store.versions("gan-toy") == [1, 2]
    latest = store.open("gan-toy")
    assert latest.version == 2 and latest.manifest.build_key == "c"
    assert store.open("gan-toy", 1).manifest.build_key == "b"
    assert {f.path for f in latest.manifest.files} == {"generate.onnx", "generate.pt"}
    # nothing but the version folders and the publish bookkeeping is left behind
    left = sorted(p.name for p in (store.root / "gan-toy").iterdir())
    assert left == [".lock", ".next-version", "1", "2"]


def test_missing_model_and_version(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        store.open("nope")
    publish(store)
    with pytest.raises(ModelNotFoundError):
        store.open("gan-toy", 7)


@pytest.mark.parametrize("target", ["generate.onnx", "generate.pt", MANIFEST, "manifest.sha256"])
def test_flipped_byte_is_caught(store: ModelStore, target: str) -> None:
    publish(store)
    path = store.root / "gan-toy" / "1" / target
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        store.verify("gan-toy", 1)


@pytest.mark.parametrize("step", ["hash", "manifest", "fsync", "verify", "rename"])
def test_interrupted_publish_leaves_no_version(store: ModelStore, step: str) -> None:
    publish(store)

    def crash(at: str) -> None:
        if at == step:
            raise RuntimeError(f"simulated crash at {at}")

    with pytest.raises(RuntimeError, match="simulated"), store.staging("gan-toy") as stage:
        write_graph_files(stage.path)
        stage.commit(fields(build_key="new"), on_step=crash)
    assert store.versions("gan-toy") == [1]
    assert store.open("gan-toy").manifest.build_key == "b"
    left = sorted(p.name for p in (store.root / "gan-toy").iterdir())
    assert left == [".lock", ".next-version", "1"]  # no staging folder left behind


def test_hard_crash_leftovers_are_invisible_and_collectable(store: ModelStore) -> None:
    """A killed process leaves its staging folder (even with a manifest); it is never listed."""
    publish(store)
    leftover = store.root / "gan-toy" / ".staging-deadbeef"
    leftover.mkdir()
    write_graph_files(leftover)
    (leftover / MANIFEST).write_text("{}")
    assert store.versions("gan-toy") == [1]
    assert store.open("gan-toy").version == 1
    with pytest.raises(RuntimeError, match="lock"):  # a live publisher may own it
        store.remove_stale_staging("gan-toy")
    assert publish(store) == 2  # the next publish, holding the lock, collects it
    assert not leftover.exists()


def test_version_numbers_are_never_reused(store: ModelStore) -> None:
    assert [publish(store) for _ in range(3)] == [1, 2, 3]
    shutil.rmtree(store.root / "gan-toy" / "3")  # an operator deletes a bad latest version
    assert publish(store) == 4  # a client pinned to 3 can never get other content
    (store.root / "gan-toy" / ".next-version").unlink()  # an older store without the record
    assert publish(store) == 5


def test_publishers_take_turns(store: ModelStore) -> None:
    """A second publisher (another build-store) waits for the first to finish, so it can
    see the version just published rather than publish a duplicate."""
    other = ModelStore(store.root)
    order: list[str] = []
    with store.lock("gan-toy"):

        def second() -> None:
            with other.lock("gan-toy"):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive()  # blocked on the lock
        order.append("first")
    thread.join(timeout=5)
    assert order == ["first", "second"]


def test_the_lock_is_per_thread_and_shared_by_store_objects(store: ModelStore) -> None:
    # Two threads sharing one store object still take turns.
    entered = threading.Event()

    def second() -> None:
        with store.lock("gan-toy"):
            entered.set()

    with store.lock("gan-toy"):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(5)
    thread.join()
    # In one thread: re-entrant through any store object on the same root (no deadlock),
    # and a nested publish never deletes the outer one's live staging folder.
    other = ModelStore(store.root)
    with store.staging("gan-toy") as outer, other.staging("gan-toy") as inner:
        write_graph_files(inner.path)
        assert inner.commit(fields()).version == 1
        assert outer.path.exists()
        write_graph_files(outer.path)
        assert outer.commit(fields()).version == 2


def test_version_bookkeeping_is_checked(store: ModelStore) -> None:
    publish(store)
    record = store.root / "gan-toy" / ".next-version"
    record.write_text("garbage")
    with pytest.raises(StoreError, match="damaged"):
        publish(store)
    record.write_text("2\n")
    (store.root / "gan-toy" / "2").write_text("a file where version 2 would go")
    assert publish(store) == 3  # moves past a taken number instead of failing
    os.symlink(store.root / "gan-toy" / "1", store.root / "gan-toy" / "4")
    assert publish(store) == 5  # and past a link planted at the next number
    lock = store.root / "gan-toy" / ".lock"
    lock.unlink()
    os.mkfifo(lock)  # a FIFO must not hang the publisher
    with pytest.raises(StoreError, match="not a regular file"):
        publish(store)


def test_a_lock_released_on_another_thread_is_released(store: ModelStore) -> None:
    """A context entered on one thread and exited on another (as a thread pool may do)."""
    context = store.lock("gan-toy")
    context.__enter__()
    thread = threading.Thread(target=lambda: context.__exit__(None, None, None))
    thread.start()
    thread.join(timeout=5)
    done = threading.Event()

    def publish_later() -> None:
        publish(ModelStore(store.root))
        done.set()

    threading.Thread(target=publish_later).start()
    assert done.wait(10)  # not wedged


def test_one_unreadable_model_does_not_hide_the_others(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(store, "gan-toy")
    publish(store, "vae-toy")
    real = ModelStore.versions

    def versions(self: ModelStore, name: str) -> list[int]:
        if name == "gan-toy":
            raise StoreError("cannot read gan-toy (Permission denied)")
        return real(self, name)

    monkeypatch.setattr(ModelStore, "versions", versions)
    assert store.names() == ["gan-toy", "vae-toy"]  # listed, to fail when opened
    assert store.open("vae-toy").version == 1
    with pytest.raises(StoreError, match="Permission denied"):
        store.open("gan-toy")


def test_a_file_where_a_model_folder_belongs_is_a_store_error(store: ModelStore) -> None:
    store.root.mkdir()
    (store.root / "gan-toy").write_text("not a folder")
    with pytest.raises(StoreError, match="is a file"):
        publish(store)


@pytest.mark.parametrize(
    "name", ["..", "../x", "/etc", "a/b", "x/../y", "", "UPPER", ".hidden", "a..b", "a b"]
)
def test_traversal_and_odd_names_refused(store: ModelStore, name: str) -> None:
    with pytest.raises(InvalidNameError):
        store.open(name)


def test_symlinks_out_of_the_store_refused(store: ModelStore, tmp_path: Path) -> None:
    publish(store)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "evil")
    with pytest.raises(InvalidNameError):
        store.open("evil")
    os.symlink(store.root / "gan-toy" / "1", store.root / "gan-toy" / "5")
    assert store.versions("gan-toy") == [1]  # a linked version is not listed
    with pytest.raises(InvalidNameError):
        store.open("gan-toy", 5)


def test_non_allowlisted_files_refused(store: ModelStore) -> None:
    publish(store)
    (store.root / "gan-toy" / "1" / "weights.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError, match="not an allowed format"):
        store.verify("gan-toy", 1)
    with (
        pytest.raises(IntegrityError, match="not an allowed file"),
        store.staging("gan-toy") as stage,
    ):
        write_graph_files(stage.path)
        (stage.path / "model.pkl").write_bytes(b"x")
        stage.commit(fields())


def test_pickled_state_dict_disguised_as_torchscript_refused(store: ModelStore) -> None:
    with (
        pytest.raises(IntegrityError, match="not a TorchScript archive"),
        store.staging("gan-toy") as stage,
    ):
        write_graph_files(stage.path)
        torch.save({"w": torch.zeros(2)}, stage.path / "generate.pt")
        stage.commit(fields())
    assert store.versions("gan-toy") == []


def test_manifest_schema_rejects_missing_and_extra_fields() -> None:
    good = {**fields(), "name": "gan-toy", "version": 1, "files": []}
    # the graph names files the list lacks: that alone is an error
    with pytest.raises(ValidationError, match="unlisted file"):
        Manifest.model_validate(good)
    entry = {"sha256": "0" * 64, "bytes": 1}
    good["files"] = [
        {"path": "generate.onnx", "format": "onnx", **entry},
        {"path": "generate.pt", "format": "torchscript", **entry},
    ]
    Manifest.model_validate(good)
    missing = {k: v for k, v in good.items() if k != "family"}
    with pytest.raises(ValidationError, match="family"):
        Manifest.model_validate(missing)
    with pytest.raises(ValidationError, match="surprise"):
        Manifest.model_validate({**good, "surprise": 1})
    nested_extra = {**good, "training": {**good["training"], "extra": 1}}
    with pytest.raises(ValidationError):
        Manifest.model_validate(nested_extra)
    wrong_graphs = {**good, "family": "flow"}
    with pytest.raises(ValidationError, match="a flow model has graphs"):
        Manifest.model_validate(wrong_graphs)


def test_sampling_record_is_optional_and_checked() -> None:
    entry = {"sha256": "0" * 64, "bytes": 1}
    files = [
        {"path": "generate.onnx", "format": "onnx", **entry},
        {"path": "generate.pt", "format": "torchscript", **entry},
    ]
    good = {**fields(), "name": "gan-toy", "version": 1, "files": files}
    assert Manifest.model_validate(good).default_temperature == 1.0  # stores built before the field
    chosen = {
        "default_temperature": 0.9,
        "selected_by": "validation",
        "validation_fid": {"1": 2.0, "0.9": 1.5},
    }
    assert Manifest.model_validate({**good, "sampling": chosen}).default_temperature == 0.9
    with pytest.raises(ValidationError, match="default_temperature"):
        Manifest.model_validate({**good, "sampling": {**chosen, "default_temperature": 0}})


def test_manifest_that_lies_about_its_folder(store: ModelStore) -> None:
    publish(store)
    publish(store)
    # copy version 1 over version 2's folder: hashes match, but the manifest says "1"
    v1, v2 = store.root / "gan-toy" / "1", store.root / "gan-toy" / "2"
    for f in v1.iterdir():
        (v2 / f.name).write_bytes(f.read_bytes())
    with pytest.raises(IntegrityError, match="folder is gan-toy/2"):
        store.verify("gan-toy", 2)


def test_a_version_folder_without_a_manifest_fails_instead_of_hiding(store: ModelStore) -> None:
    # Publishing renames a complete folder into place, so a numbered folder without a
    # manifest is damage: skipping it would silently serve the older version.
    publish(store)
    publish(store)
    (store.root / "gan-toy" / "2" / MANIFEST).unlink()
    assert store.versions("gan-toy") == [1, 2]
    with pytest.raises(IntegrityError, match=r"manifest\.json missing"):
        store.open("gan-toy")
    assert store.open("gan-toy", 1).version == 1
    assert publish(store) == 3  # never reuses the damaged number


def test_only_canonical_numbers_are_versions(store: ModelStore) -> None:
    publish(store)
    (store.root / "gan-toy" / "08").mkdir()
    (store.root / "gan-toy" / "+9").mkdir()
    assert store.versions("gan-toy") == [1]
    assert store.open("gan-toy").version == 1


def test_an_unreadable_store_is_a_store_error(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so the refusal is simulated where the store reads
    publish(store)
    real_iterdir, real_open = Path.iterdir, Path.open

    def refused(self: Path, *a: Any, **k: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(
        Path, "iterdir", lambda self: refused(self) if self == store.root else real_iterdir(self)
    )
    with pytest.raises(StoreError, match=r"cannot read the store .*Permission denied"):
        store.names()
    monkeypatch.setattr(Path, "iterdir", real_iterdir)
    monkeypatch.setattr(
        Path,
        "open",
        lambda self, *a, **k: refused(self) if self.suffix == ".onnx" else real_open(self, *a, **k),
    )
    with pytest.raises(
        IntegrityError, match=r"generate.onnx: unreadable \(generate.onnx: Permission denied\)"
    ):
        store.verify("gan-toy")


@pytest.mark.parametrize(
    ("family_info", "says"),
    [
        ({}, "family_info.latent_dim must be an integer >= 1"),
        ({"latent_dim": "8"}, "family_info.latent_dim"),
        ({"latent_dim": 0}, "family_info.latent_dim"),
        ({"latent_dim": 2, "default_samples": -1}, "family_info.default_samples"),
    ],
)
def test_family_info_the_engines_read_is_checked(family_info: dict[str, Any], says: str) -> None:
    entry = {"sha256": "0" * 64, "bytes": 1}
    files = [
        {"path": "generate.onnx", "format": "onnx", **entry},
        {"path": "generate.pt", "format": "torchscript", **entry},
    ]
    good = {**fields(), "name": "gan-toy", "version": 1, "files": files}
    Manifest.model_validate(good)
    with pytest.raises(ValidationError, match=says):
        Manifest.model_validate({**good, "family_info": family_info})


def test_an_integrity_error_survives_pickling() -> None:
    """build-store's worker processes raise it to their parent."""
    import pickle

    from service.store import IntegrityError

    err = pickle.loads(pickle.dumps(IntegrityError("m/1", ["a.onnx: hash mismatch", "b"])))
    assert (err.where, err.problems, str(err)) == (
        "m/1",
        ["a.onnx: hash mismatch", "b"],
        "m/1: a.onnx: hash mismatch; b",
    )


def test_a_pixelcnn_s_step_graphs_must_fit_each_other_and_the_images() -> None:
    """The engine sizes its caches from these shapes: a mismatch fails the version at
    load, never a request."""

    def graph(name: str, inputs: dict[str, list[Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "description": name,
            "inputs": [
                {"name": n, "dtype": "int64" if n in ("row", "pos") else "float32", "shape": s}
                for n, s in inputs.items()
            ],
            "outputs": [{"name": "out", "dtype": "float32", "shape": ["batch"]}],
            "files": {"onnx": f"{name}.onnx"},
        }

    def manifest(x_left_width: int, with_pixel: bool = True) -> dict[str, Any]:
        graphs = [
            graph("logits", {"x": ["batch", 1, 2, 2]}),
            graph(
                "row_step",
                {"x_above": ["batch", 1, 1, 2], "v_cache": ["batch", 3, 4, 1, 2], "row": ["batch"]},
            ),
        ]
        if with_pixel:
            shapes = {
                "x_left": ["batch", 1, 1, x_left_width],
                "h_cache": ["batch", 3, 4, 1],
                "vh": ["batch", 3, 8],
                "pos": ["batch", 2],
            }
            graphs.append(graph("pixel_step", shapes))
        entry = {"sha256": "0" * 64, "bytes": 1, "format": "onnx"}
        files = [{"path": f"{g['name']}.onnx", **entry} for g in graphs]
        return {
            **fields(family="pixelcnn", family_info={}),
            "graphs": graphs,
            "name": "p",
            "version": 1,
            "files": files,
        }

    Manifest.model_validate(manifest(2))
    with pytest.raises(ValidationError, match="do not fit"):
        Manifest.model_validate(manifest(3))
    with pytest.raises(ValidationError, match="come together"):
        Manifest.model_validate(manifest(2, with_pixel=False))
