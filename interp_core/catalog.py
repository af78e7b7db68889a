"""What the dashboard can show: the datasets and runs found on disk (no Streamlit here).

Roots (each overridable with an environment variable, which the tests use):

- shipped data: ``sample_data/`` (``INTERP_SAMPLE_DATA``) with ``data/<dataset>/`` and
  ``runs/<dataset>/<run>/``;
- the user's runs: ``runs/`` at the repository root (``INTERP_RUNS_DIR``), where the Train page
  writes; background jobs keep their bookkeeping in ``runs/.jobs`` (skipped by ``find_runs``);
- the user's datasets: ``data/`` at the repository root (``INTERP_DATA_DIR``).

A run's ``config["data"]`` is its dataset's path, relative to the run folder when both lie inside
the repository (``interp_core.runs.portable_path``), absolute otherwise. Older runs recorded an
absolute path of the machine that trained them: those are mapped to a known dataset by folder
name, so the app works from any clone path.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import open_split
from .data.dataset import class_dirs, list_images
from .errors import InterpError
from .runs import find_runs, read_config, read_history, recorded_path, run_status, safe_child

REPO = Path(__file__).resolve().parents[1]


def sample_root() -> Path:
    """The shipped sample data folder (``data/`` and ``runs/`` inside)."""
    return Path(os.environ.get("INTERP_SAMPLE_DATA", REPO / "sample_data"))


def user_runs_root() -> Path:
    """Where the user's own runs (and the Train page's jobs) live."""
    return Path(os.environ.get("INTERP_RUNS_DIR", REPO / "runs"))


def user_data_root() -> Path:
    """Where the user's own datasets may be put (ImageFolder layout of DESIGN.md)."""
    return Path(os.environ.get("INTERP_DATA_DIR", REPO / "data"))


def jobs_root() -> Path:
    """Bookkeeping folder of the background training jobs."""
    return user_runs_root() / ".jobs"


# -- datasets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry:
    """A dataset folder found on disk."""

    name: str
    path: Path
    source: str  # "shipped" | "yours"
    description: str = ""

    @property
    def label(self) -> str:
        return self.name if self.source == "shipped" else f"{self.name} (yours)"


def _dataset_description(path: Path) -> str:
    meta = path / "dataset.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("description", ""))
        except (OSError, json.JSONDecodeError):
            return ""
    return ""


def _datasets_under(root: Path, source: str) -> list[DatasetEntry]:
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and (p / "train").is_dir():
            out.append(DatasetEntry(p.name, p.resolve(), source, _dataset_description(p)))
        elif p.is_file() and p.suffix.lower() == ".npz":
            out.append(DatasetEntry(p.stem, p.resolve(), source, "MedMNIST-style .npz"))
    return out


def list_datasets() -> list[DatasetEntry]:
    """Shipped datasets first, then the user's; names are unique (a user's clash gets a suffix)."""
    found = _datasets_under(sample_root() / "data", "shipped")
    names = {d.name for d in found}
    for d in _datasets_under(user_data_root(), "yours"):
        name = d.name if d.name not in names else f"{d.name}-yours"
        names.add(name)
        found.append(DatasetEntry(name, d.path, d.source, d.description))
    return found


def dataset_summary(path: Path) -> dict[str, Any]:
    """Counts per split, classes, masks and groups of a dataset folder, from the file tree only (the
    images counted as the loader takes them: :func:`interp_core.data.dataset.list_images`)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            splits = {s: len(open_split(path, s)) for s in ("train", "val", "test")}
            classes = open_split(path, "test").classes
        except Exception:  # an unreadable file is listed without details; opening it shows the error
            splits, classes = {}, []
        return {"classes": classes, "splits": splits, "masks": False, "groups": False, "artifacts": False}
    splits: dict[str, int] = {}
    classes: set[str] = set()
    for split in ("train", "val", "test"):
        d = path / split
        if d.is_dir():
            names = class_dirs(d)
            classes.update(names)
            splits[split] = sum(len(list_images(d / c)) for c in names)
    return {"classes": sorted(classes), "splits": splits, "masks": (path / "masks").is_dir(),
            "groups": (path / "groups.csv").is_file(), "artifacts": (path / "artifact_masks").is_dir()}


# -- runs --------------------------------------------------------------------------------------
@dataclass
class RunEntry:
    """A run directory found on disk and what the dashboard needs to show and group it."""

    path: Path
    source: str  # "shipped" | "yours"
    config: dict = field(repr=False)
    dataset: str | None  # name of the known dataset it was trained on, if any
    data_path: Path | None  # that dataset's folder here (None when unknown)
    status: dict = field(default_factory=dict, repr=False)
    rel: str = ""  # path below its root, e.g. "synthetic-he/scaat" or "my-run"

    @property
    def key(self) -> str:
        """Stable identifier for widgets and caches: the absolute path."""
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def objective(self) -> str:
        return str(self.config.get("objective", "?"))

    @property
    def arch(self) -> str:
        return str(self.config.get("arch", "?"))

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes", []))

    @property
    def stamp(self) -> int:
        """Modification time of the weights (ns): a retrained run gets a new cache key."""
        try:
            return (self.path / "model.safetensors").stat().st_mtime_ns
        except OSError:
            return 0

    @property
    def is_training(self) -> bool:
        return self.status.get("state") == "running"

    @property
    def label(self) -> str:
        """Short display name, e.g. ``synthetic-he / scaat`` or ``yours / my-run``."""
        suffix = " (training...)" if self.is_training else ""
        if self.source == "shipped":
            return f"{self.dataset or 'shipped'} / {self.name}{suffix}"
        return f"yours / {self.rel or self.name}{suffix}"


def picker_label(r: RunEntry, dataset: str | None) -> str:
    """A run's name for narrow pickers, the part that differs first: ``scaat`` for a run of the chosen
    dataset, ``scaat (ihc)`` for another dataset's, ``my-run (yours)`` for the user's; a long label
    cut by the picker then loses only the part every run shares."""
    suffix = " (training...)" if r.is_training else ""
    if r.source != "shipped":
        name = r.rel or r.name
        if dataset and name.startswith(f"{dataset}-") and r.dataset == dataset:  # the Train page's default names
            name = name[len(dataset) + 1:]
        return f"{name} (yours){suffix}"
    return (r.name if r.dataset == dataset else f"{r.name} ({r.dataset or 'shipped'})") + suffix


def _map_dataset(cfg: dict, run_dir: Path, datasets: list[DatasetEntry], shipped_runs: Path) -> DatasetEntry | None:
    """The known dataset a run was trained on: same path, else same folder name, else the
    ``runs/<dataset>/`` folder the shipped run sits in."""
    p = recorded_path(cfg, "data", run_dir)
    if p is not None:
        for d in datasets:
            try:
                if p.exists() and p.resolve() == d.path:
                    return d
            except OSError:
                pass
        for d in datasets:
            if p.name == d.path.name or p.stem == d.name:
                return d
    try:
        rel = run_dir.resolve().relative_to(shipped_runs.resolve())
        if len(rel.parts) >= 2:
            for d in datasets:
                if d.name == rel.parts[0]:
                    return d
    except ValueError:
        pass
    return None


def list_runs(datasets: list[DatasetEntry] | None = None) -> list[RunEntry]:
    """Every valid run under the shipped and the user's roots; unreadable ones are skipped."""
    datasets = list_datasets() if datasets is None else datasets
    shipped_runs = sample_root() / "runs"
    out: list[RunEntry] = []
    for root, source in ((shipped_runs, "shipped"), (user_runs_root(), "yours")):
        for path in find_runs(root):
            try:
                cfg = read_config(path)
            except Exception:  # a broken run is not the dashboard's business; it is skipped
                continue
            d = _map_dataset(cfg, path, datasets, shipped_runs)
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.name
            out.append(RunEntry(path.resolve(), source, cfg, d.name if d else None, d.path if d else None,
                                run_status(path), rel))
    return out


def compatible_runs(runs: list[RunEntry], classes: list[str], dataset: str | None = None) -> list[RunEntry]:
    """Runs whose class names equal ``classes``; those trained on ``dataset`` first."""
    ok = [r for r in runs if r.classes == list(classes)]
    return sorted(ok, key=lambda r: (r.dataset != dataset, r.source != "shipped", _objective_rank(r), r.name))


_OBJECTIVE_ORDER = {"erm": 0, "scaat": 1, "ece": 2, "sgt": 3}


def _objective_rank(r: RunEntry) -> int:
    return _OBJECTIVE_ORDER.get(r.objective, 9)


def default_runs(runs: list[RunEntry], dataset: str | None, n: int = 3) -> list[RunEntry]:
    """A sensible first choice: the baseline (ERM) and its retrains of the dataset, at most ``n``."""
    own = [r for r in runs if r.dataset == dataset] or runs
    picked: list[RunEntry] = []
    for objective in ("erm", "scaat", "ece", "sgt"):
        for r in own:
            if r.objective == objective and r not in picked:
                picked.append(r)
                break
    for r in own:
        if len(picked) >= n:
            break
        if r not in picked:
            picked.append(r)
    return picked[:n]


def parent_run(r: RunEntry, runs: list[RunEntry]) -> RunEntry | None:
    """The run ``r`` was fine-tuned from (``config["init"]``) among ``runs``: same path, else the run of
    the same folder name and dataset (an ``init`` path from another machine); None from scratch."""
    init = r.config.get("init")
    if not init:
        return None
    p = Path(str(init))
    try:
        same = [x for x in runs if x.path == p.resolve()]
    except OSError:
        same = []
    return (same or [x for x in runs if x.name == p.name and x.dataset == r.dataset] or [None])[0]


def parent_epochs(r: RunEntry, runs: list[RunEntry]) -> int:
    """Epochs of the run ``r`` was fine-tuned from (0 when trained from scratch or unknown here).

    The ``init`` path may come from another machine: then the run of the same name and dataset is used.
    """
    p = recorded_path(r.config, "init", r.path)
    if p is None:
        return 0
    if p.is_dir():
        return len(read_history(p))
    same = [x for x in runs if x.name == p.name and x.dataset == r.dataset]
    return len(read_history(same[0].path)) if same else 0


def run_summary_row(r: RunEntry) -> dict[str, Any]:
    """One row of the runs table on the Home page."""
    hist = read_history(r.path)
    last = hist[-1] if hist else {}
    best = max((h.get("val_accuracy") or 0.0 for h in hist), default=None)
    return {"run": r.label, "trained on": r.dataset or "unknown", "objective": r.objective.upper(),
            "model": r.arch, "epochs": len(hist) or r.config.get("epochs"),
            "best val. accuracy": None if best is None else round(float(best), 3),
            "started from": Path(r.config["init"]).name if r.config.get("init") else
            (r.config.get("imported_from") or {}).get("file", "scratch"),
            "state": r.status.get("state", "finished"), "last epoch": last.get("epoch")}


def new_run_dir(name: str) -> Path:
    """The folder for a new user run called ``name`` under the user's runs root (checked: plain
    name, inside the root, not an existing finished run)."""
    name = (name or "").strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name):
        raise InterpError("a run name uses letters, digits, '.', '_' or '-' (up to 80), starting with a letter "
                          f"or digit; got {name!r}")
    path = safe_child(user_runs_root(), name)
    if (path / "model.safetensors").is_file() and run_status(path).get("state") == "finished":
        raise InterpError(f"a finished run called {name!r} already exists; choose another name")
    return path
