"""Model checkpoints: any recommender's `state_dict()` in one safetensors file.

A checkpoint holds the learned model, not the users: the contexts a model learned
alongside (the worker's user table, or `streamrec train`'s dict) are not in it.

File layout (`FORMAT_VERSION` 2):

- Each tensor of the state dict is a safetensors tensor named by its path in the dict,
  keys joined with "/" (for instance `gru/weight_ih`), contiguous and on the CPU.
- Everything else (numbers, strings, None, bools, lists and dicts of those) is one
  UTF-8 JSON document stored as the uint8 tensor `__streamrec_state__`:
  `{"state": <the state dict, tensors replaced by null>, "tensors": {name: path}}`,
  where a path lists the dict keys (strings) and list positions (ints) leading to the
  tensor. Dict order is kept, because it is state: `CoVisitation` breaks ties by it.
  The JSON lives in the body rather than the safetensors header because safetensors
  caps the header at 100 MB, and co-visitation counts alone were 2 MB after 70k clicks.
- The header's metadata holds only short strings: `format` ("streamrec-checkpoint"),
  `format_version`, `model_name`, `version`, `created_at` (ISO 8601, UTC),
  `content_sha256`, `build` (JSON of the `build_recommender` keyword arguments that
  rebuild the model: `dim` and `seed` where the model has them) and `metadata` (JSON of
  the caller's own metadata).

Two hashes:

- The file hash, sha256 of the whole file, is written to `<path>.sha256` in
  `sha256sum` format. `load_checkpoint` checks it (or `expected_sha256`) before parsing
  anything and refuses a file without one. The sidecar sits next to the file, so it
  catches corruption and truncation; to refuse a deliberately swapped file, pass
  `expected_sha256` from configuration.
- The content hash identifies the learned state whatever the file's name, version or
  save time: sha256 over, in order, `b"streamrec-checkpoint/2"` (the format version),
  the model name, the `build` JSON, the state JSON document, then for each tensor in
  sorted name order its name, dtype (`str(tensor.dtype)`), shape (JSON list) and raw bytes (C order,
  little-endian as safetensors stores them). Each part goes in as its length (8 bytes,
  little-endian) followed by its bytes, so no two different contents hash alike. It
  does not cover `version`, `created_at` or `metadata`. It ends the default version,
  so saving the same state twice gives versions that differ only in the timestamp.

Hyperparameters that a model keeps outside its `state_dict()` (the torch model's
learning rate, for instance) are not saved: loading rebuilds the model with
`build_recommender`'s defaults for them.

Loading never unpickles: the file is read once, hashed, and parsed by
`safetensors.torch.load` (tensors) and `json` (the header and the state document).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from model.base import ItemIndex, Recommender
from model.registry import build_recommender

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "check_version",
    "load_checkpoint",
    "save_checkpoint",
    "sidecar_path",
]

FORMAT = "streamrec-checkpoint"
# 2: the torch model's state has every part (co-occurrence memory, gap and kind rows,
# the full mixer and its challenger); version 1 files may lack some and are refused.
FORMAT_VERSION = 2
STATE_TENSOR = "__streamrec_state__"
_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_Path = list[str | int]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or must not be loaded; the message is one
    line naming the file."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself.

    `file_sha256` is the hash of the whole file (the sidecar's, what `expected_sha256`
    pins); `content_sha256` the hash of the learned state (see the module docstring).
    `build` holds the `build_recommender` arguments the model is rebuilt with.
    """

    path: Path
    model_name: str
    version: str
    content_sha256: str
    file_sha256: str
    created_at: datetime
    build: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: Recommender,
    path: str | os.PathLike[str],
    *,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Write `model`'s state to `path` and its file hash to `<path>.sha256`.

    `version` defaults to `<model.name>-<UTC yyyymmddThhmmssZ>-<12 hex of the content
    hash>`; a given one must be 1-128 characters of letters, digits and `._:+-`.
    `metadata` must be JSON-serialisable (it is returned in `CheckpointInfo.metadata`).

    Atomic: the file and the sidecar are each written to a temporary file in the same
    directory and renamed into place, so a reader sees an old or a new file, never a
    partial one (in the instant between the two renames the pair disagrees, and a load
    is refused rather than wrong). Overwrites existing files. Blocks for the time it
    takes to copy the state and write it; do not call it while another thread trains
    the model.

    TypeError if the state holds something other than tensors, numbers, strings, None,
    bools, lists, tuples (loaded back as lists) and dicts with string keys; ValueError
    for a bad version or metadata; CheckpointError if the file cannot be written.
    """
    path = Path(path)
    if version is not None:
        check_version(version)
    try:
        metadata_json = json.dumps(dict(metadata or {}), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc

    build = {key: getattr(model, key) for key in ("dim", "seed") if hasattr(model, key)}
    build_json = json.dumps(build)
    tensors: dict[str, torch.Tensor] = {}
    tensor_paths: dict[str, _Path] = {}
    state = model.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"{model.name} state_dict() returned a {type(state).__name__}, not a dict")
    skeleton = _flatten(state, [], tensors, tensor_paths)
    state_json = json.dumps(
        {"state": skeleton, "tensors": tensor_paths}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    content_sha256 = _content_hash(model.name, build_json, state_json, tensors)

    created_at = datetime.now(UTC).replace(microsecond=0)
    if version is None:
        version = f"{model.name}-{created_at:%Y%m%dT%H%M%SZ}-{content_sha256[:12]}"
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_name": model.name,
        "version": version,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "content_sha256": content_sha256,
        "build": build_json,
        "metadata": metadata_json,
    }
    tensors[STATE_TENSOR] = torch.frombuffer(bytearray(state_json), dtype=torch.uint8)

    try:
        with _atomic_target(path) as temporary:
            safetensors.torch.save_file(tensors, temporary, metadata=header)
            file_sha256 = _file_sha256(temporary)
        with _atomic_target(sidecar_path(path)) as temporary:
            Path(temporary).write_text(f"{file_sha256}  {path.name}\n")
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    return CheckpointInfo(
        path=path,
        model_name=model.name,
        version=version,
        content_sha256=content_sha256,
        file_sha256=file_sha256,
        created_at=created_at,
        build=build,
        metadata=json.loads(metadata_json),
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    index: ItemIndex | None = None,
    expected_sha256: str | None = None,
    dim: int | None = None,
) -> tuple[Recommender, CheckpointInfo]:
    """The model saved at `path`, ready to recommend and keep learning, and its info.

    The file's sha256 must equal `expected_sha256`, or else the one in `<path>.sha256`;
    with neither, the file is refused. Only then is it parsed, the content hash checked,
    and the model rebuilt with `build_recommender(model_name, index=index, **build)` and
    given the state; the torch model upserts every item vector into `index`. The model's
    `version` is set to the checkpoint's, so recommendation events name the learned
    state they came from rather than the code. `dim`, if given, is the vector
    dimension the caller's index expects: a model with another dimension is refused
    before anything reaches the index.

    Reads the whole file into memory once. CheckpointError, with a one-line message
    naming the file, for a missing or unreadable file, a missing sidecar, a hash
    mismatch, a file that is not a streamrec checkpoint (or a truncated one), an
    unknown format version or model name, and a state the model refuses.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint file at {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc

    expected = _expected_sha256(path, expected_sha256)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} has sha256 {actual}, expected {expected}; refusing to load it"
        )

    header, tensors = _parse(path, data)
    model_name = header["model_name"]
    try:
        build = json.loads(header["build"])
        metadata = json.loads(header["metadata"])
        state_json = bytes(tensors.pop(STATE_TENSOR).numpy())
        document = json.loads(state_json.decode())
        created_at = datetime.fromisoformat(header["created_at"])
        check_version(header["version"])
        if not isinstance(build, dict) or not isinstance(document, dict):
            raise ValueError("build arguments and state must be JSON objects")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is a damaged streamrec checkpoint: {_one_line(exc)}"
        ) from None
    content_sha256 = _content_hash(model_name, header["build"], state_json, tensors)
    if content_sha256 != header["content_sha256"]:
        raise CheckpointError(
            f"checkpoint {path} content does not match its content hash; refusing to load it"
        )
    if dim is not None and build.get("dim") not in (None, dim):
        raise CheckpointError(
            f"checkpoint {path} holds a {build['dim']}-dim {model_name} model, expected dim {dim}"
        )

    try:
        model = build_recommender(model_name, index=index, **build)
        model.load_state_dict(_unflatten(document, tensors))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not load into {model_name!r}: {_one_line(exc)}"
        ) from exc
    info = CheckpointInfo(
        path=path,
        model_name=model_name,
        version=header["version"],
        content_sha256=content_sha256,
        file_sha256=actual,
        created_at=created_at,
        build=build,
        metadata=metadata,
    )
    model.version = info.version
    return model, info


def check_version(version: str) -> str:
    """`version` if it is 1-128 letters, digits and `._:+-`, starting with a letter or
    digit (it becomes a Prometheus label and an event field); ValueError otherwise."""
    if not _VERSION_PATTERN.fullmatch(version):
        raise ValueError(
            f"checkpoint version {version!r} must be 1-128 letters, digits or ._:+- "
            "starting with a letter or digit"
        )
    return version


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the file hash of the checkpoint at `path` is kept: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


# Flattening the state dict.


def _flatten(
    value: Any, path: _Path, tensors: dict[str, torch.Tensor], paths: dict[str, _Path]
) -> Any:
    """`value` as JSON-ready data with each tensor moved to `tensors` (and its path to
    `paths`) and replaced by None."""
    if isinstance(value, torch.Tensor):
        name = "/".join(str(part) for part in path) or "tensor"
        while name in tensors or name == STATE_TENSOR:
            name += "'"
        tensor = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory; state dicts usually hold copies.
        if any(_same_storage(tensor, other) for other in tensors.values()):
            tensor = tensor.clone()
        tensors[name] = tensor
        paths[name] = path
        return None
    if isinstance(value, Mapping):
        flat = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"state key {key!r} at {_where(path)} is not a string")
            flat[key] = _flatten(item, [*path, key], tensors, paths)
        return flat
    if isinstance(value, list | tuple):
        return [_flatten(item, [*path, i], tensors, paths) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {_where(path)}")


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _where(path: _Path) -> str:
    return "state" + "".join(f"[{part!r}]" for part in path)


def _unflatten(document: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state = document["state"]
    if not isinstance(state, dict) or set(document["tensors"]) != set(tensors):
        raise ValueError("the state document does not match the tensors")
    for name, path in document["tensors"].items():
        if not path:
            raise ValueError(f"tensor {name!r} has an empty path")
        parent = state
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = tensors[name]
    return state


# Hashing and files.


def _content_hash(
    model_name: str, build_json: str, state_json: bytes, tensors: Mapping[str, torch.Tensor]
) -> str:
    digest = hashlib.sha256()

    def part(data: bytes | memoryview) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for text in (f"{FORMAT}/{FORMAT_VERSION}", model_name, build_json):
        part(text.encode())
    part(state_json)
    for name in sorted(tensors):
        tensor = tensors[name]
        part(name.encode())
        part(str(tensor.dtype).encode())
        part(json.dumps(list(tensor.shape)).encode())
        part(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _parse(path: Path, data: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header metadata and the tensors of a safetensors file already in memory."""
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file: {_one_line(exc)}") from None
    # The layout was validated just above: 8 bytes of header length, then the header.
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    if header.get("format") != FORMAT or STATE_TENSOR not in tensors:
        raise CheckpointError(f"{path} is a safetensors file but not a streamrec checkpoint")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')!r}; "
            f"this streamrec reads version {FORMAT_VERSION}"
        )
    missing = [
        key
        for key in ("model_name", "version", "created_at", "content_sha256", "build", "metadata")
        if key not in header
    ]
    if missing:
        raise CheckpointError(f"{path} is a damaged streamrec checkpoint: no {', '.join(missing)}")
    return header, tensors


def _expected_sha256(path: Path, given: str | None) -> str:
    if given is not None:
        expected = given.strip().lower()
    else:
        sidecar = sidecar_path(path)
        try:
            expected = (sidecar.read_text().split() or [""])[0].lower()
        except FileNotFoundError:
            raise CheckpointError(
                f"no hash for checkpoint {path}: {sidecar.name} is missing and no "
                "expected sha256 was given"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read {sidecar}: {exc}") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise CheckpointError(f"the expected sha256 for {path} is not 64 hex digits")
    return expected


def _file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """A temporary path next to `path`, flushed to disk and renamed onto `path` if the
    block succeeds, removed if anything fails."""
    temporary = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    # safetensors writes files private (0600); a checkpoint should get the mode any
    # other new file of the user's gets (the umask's), which creating one tells us.
    with open(temporary, "xb"):
        mode = os.stat(temporary).st_mode
    try:
        yield temporary
        os.chmod(temporary, mode)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
