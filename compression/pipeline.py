"""Pipelines (issue 15): an ordered list of stages from a YAML/JSON file, run with a checkpoint per stage, a
results JSONL and a per-stage table (accuracy, weight bytes, MACs, BitOps), resumable after an interruption.

A file::

    data: digits          # optional: the data spec (edgepack.pipeline_data), --data overrides it
    seed: 0               # optional
    batch_size: 100       # optional
    stages:
      - recipe: {recipe: {"fc*": {method: hashed, ratio: 0.125}}, epochs: 2}
      - prune: {sparsity: 0.9, epochs: 2}

``OUTDIR/NN-<stage>.safetensors`` is written atomically after stage NN with every transform so far, so it
loads with ``load_checkpoint`` (``edgepack export`` / ``inspect`` take it as it is); ``pipeline.jsonl``
holds row 0 (the input model, measured the same way) and one row per stage; ``summary.md`` the table.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from edgepack.errors import EdgepackError

from .checkpoint import builder_name, load_checkpoint, read_checkpoint_fields, save_checkpoint
from .common import evaluating
from .stages import STAGES, StageData, StageError, StageReport, run_stage, stage_parameters, stage_report

MAX_PIPELINE_BYTES = 1 << 20
RESULTS = "pipeline.jsonl"
SUMMARY = "summary.md"
_CHECKPOINT = re.compile(r"(\d{2,})-[A-Za-z0-9_.-]+\.safetensors")
_TOP_KEYS = {"stages", "data", "seed", "batch_size"}


@dataclass
class Pipeline:
    """A checked pipeline file: the stages as (name, params) in order, and its optional data spec and seed."""

    stages: list[tuple[str, dict]]
    data: str | None = None
    seed: int = 0
    batch_size: int = 100
    folder: Path | None = None  # the file's folder: a relative data path in the file is taken from there


def _plain(value, where: str):
    """``value`` as JSON data (tuples become lists), or a StageError naming ``where``."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise StageError(f"{where}: {error}; pipeline parameters must be plain data (numbers, strings, true/false, "
                         "null, lists, maps)") from None
    return json.loads(text)


def _required(function: Callable) -> set[str]:
    """The keyword parameters of a stage that have no default (a pipeline entry must give them)."""
    return {p.name for p in list(inspect.signature(function).parameters.values())[2:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty}


def check_stages(stages) -> list[tuple[str, dict]]:
    """Each entry (``{name: params}`` or ``(name, params)``) checked before anything runs: a registered stage,
    parameters it accepts (as ``run_stage`` checks), the ones it needs, plain data. Errors name the entry."""
    if not isinstance(stages, (list, tuple)) or not stages:
        raise StageError(f"a pipeline needs a non-empty list of stages, got {stages!r:.80}; e.g. "
                         "stages: [{prune: {sparsity: 0.9}}]")
    checked = []
    for number, entry in enumerate(stages, 1):
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise StageError(f"pipeline entry {number}: one stage per entry ({{name: params}}), got keys "
                                 f"{sorted(map(str, entry))}; registered stages: {', '.join(sorted(STAGES))}")
            (name, params), = entry.items()
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            name, params = entry
        elif isinstance(entry, str):
            name, params = entry, {}
        else:
            raise StageError(f"pipeline entry {number}: expected {{stage name: params}}, got {entry!r:.80}")
        params = {} if params is None else params
        where = f"pipeline entry {number} {name!r}"
        if name not in STAGES:
            raise StageError(f"{where}: unknown stage; registered: {', '.join(sorted(STAGES))}")
        if not isinstance(params, dict):
            raise StageError(f"{where}: its parameters must be a map (name: value), got {params!r:.80}")
        unknown = set(params) - stage_parameters(STAGES[name])
        if unknown:
            raise StageError(f"{where}: unknown parameters {sorted(unknown)}; valid: "
                             f"{sorted(stage_parameters(STAGES[name]))}")
        missing = _required(STAGES[name]) - set(params)
        if missing:
            raise StageError(f"{where}: needs the parameters {sorted(missing)}")
        checked.append((name, _plain(params, where)))
    return checked


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors / aliases: a few hundred bytes of nested aliases expand to gigabytes once walked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_settings_file(path: Path, what: str):
    """A YAML / JSON settings file (a pipeline, the order search's stages) as plain data: at most
    MAX_PIPELINE_BYTES, no YAML aliases; a missing, large or malformed file is a StageError naming it."""
    if not path.is_file():
        raise StageError(f"{what} {str(path)!r} does not exist (no such file)")
    if path.stat().st_size > MAX_PIPELINE_BYTES:
        raise StageError(f"{what} {path}: {path.stat().st_size:,} bytes; a {what} is at most {MAX_PIPELINE_BYTES:,}")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_NoAliasLoader)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise StageError(f"{what} {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{' '.join(str(error).split())}") from None


def load_pipeline(source) -> Pipeline:
    """A pipeline from a YAML/JSON file (``str`` / ``Path``) or an already-parsed mapping, checked up front."""
    folder = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        source = read_settings_file(path, "pipeline file")
        folder = path.resolve().parent
    if not isinstance(source, dict):
        raise StageError(f"a pipeline is a map with 'stages' (and optional data, seed, batch_size), got "
                         f"{type(source).__name__}")
    unknown = set(source) - _TOP_KEYS
    if unknown or "stages" not in source:
        raise StageError(f"pipeline: {'unknown keys ' + str(sorted(unknown)) if unknown else 'no stages'}; "
                         f"valid keys: {sorted(_TOP_KEYS)} (stages required)")
    data, seed, batch_size = source.get("data"), source.get("seed", 0), source.get("batch_size", 100)
    if data is not None and not isinstance(data, str):
        raise StageError(f"pipeline: data must be a data spec string (e.g. digits, mnist[:2000], kws:DIR, "
                         f"FILE.npz), got {data!r}")
    for key, value, low in (("seed", seed, 0), ("batch_size", batch_size, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise StageError(f"pipeline: {key} must be an integer >= {low}, got {value!r}")
    return Pipeline(check_stages(source["stages"]), data, seed, batch_size, folder)


def checkpoint_name(number: int, stage: str) -> str:
    """``NN-<stage>.safetensors``: the checkpoint after stage ``number`` (1-based)."""
    return f"{number:02d}-{stage}.safetensors"


def check_fits(model: nn.Module, data: StageData) -> None:
    """Run one example through ``model``: a shape that does not fit, or fewer outputs than classes, is a
    StageError naming the shapes."""
    example = data.example
    try:
        with evaluating(model):
            output = model(example)
    except Exception as error:
        raise StageError(f"the model does not take the data's inputs: one example is {list(example.shape)} "
                         f"(batch 1), and the model raised {type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}") from None
    classes = int(max(data.train[1].max(), data.val[1].max())) + 1
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] < classes:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise StageError(f"the model's output for one example {list(example.shape)} is {shape}; the data's labels "
                         f"need logits [1, >= {classes}] (labels 0..{classes - 1})")


def fingerprint(model: nn.Module, data: StageData, builder: str, kwargs: dict, recipe, transforms) -> str:
    """A digest of what a run starts from: the input model's tensors and how it is built, the data, its seed
    and batch size. A recorded run is resumed only from the same start."""
    digest = hashlib.sha256(json.dumps([builder, kwargs, recipe, transforms, data.seed, data.batch_size],
                                       sort_keys=True, default=str).encode())
    tensors = sorted(model.state_dict().items())
    tensors += [(f"data.{split}.{i}", t) for split in ("train", "val", "test")
                for i, t in enumerate(getattr(data, split) or ())]
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def json_default(value):
    """numpy / torch scalars and arrays in a report's ``extra`` as plain numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _read_rows(path: Path) -> list[dict]:
    """The recorded rows in order (row 0 first); a line cut short by a crash and what follows are ignored."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict) or row.get("index") != len(rows):
            break
        rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Replace the results file with ``rows`` (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, default=json_default) + "\n" for row in rows))
    os.replace(tmp, path)


def append_row(path: Path, row: dict) -> None:
    """Add one stage's row to the results file, flushed to disk before the next stage starts."""
    with path.open("a") as file:
        file.write(json.dumps(row, default=json_default) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _save_checked(model: nn.Module, path: Path, builder, kwargs, recipe, transforms, trusted, data: StageData,
                  where: str) -> None:
    """Save to a temporary name, check it reloads to the same outputs on a few validation inputs, then rename:
    a crash leaves no half-written checkpoint, and a stage without the transform its change needs fails here."""
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    try:
        save_checkpoint(model, tmp, builder, kwargs, recipe=recipe, transforms=transforms)
        try:
            loaded = load_checkpoint(tmp, trust_builder=trusted)
        except EdgepackError as error:
            raise StageError(f"{where}: its checkpoint does not reload ({error}); a stage that changes the "
                             "architecture must return the transform that rebuilds it") from None
        inputs = data.val[0][:8]
        with evaluating(model):
            expected, got = model(inputs), loaded(inputs)
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
            difference = (expected - got).abs().max().item() if expected.shape == got.shape else "shape"
            raise StageError(f"{where}: its reloaded checkpoint computes different outputs (max difference "
                             f"{difference}); the stage's transform does not rebuild what it changed")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _ratio(before: float, after: float) -> str:
    """How many times smaller ``after`` is than ``before``, as "3.25x"."""
    return f"{before / after:.2f}x" if after else "-"


def _notes(extra: dict) -> str:
    """A report's scalar extras, the first ones that fit in 72 characters (e.g. "sparsity=0.9 threshold=0.83")."""
    text = ""
    for key, value in (extra or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        part = f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        if len(text) + len(part) + 1 > 72:
            break
        text = f"{text} {part}" if text else part
    return text


COLUMNS = ("#", "stage", "accuracy", "Δ", "weight bytes", "×", "MACs", "BitOps", "×", "seconds", "notes")


def table_cells(row: dict, start: dict) -> list[str]:
    """One row of the per-stage table: the stage against row 0 (the input model)."""
    delta = "" if row["index"] == 0 else f"{100 * (row['accuracy'] - start['accuracy']):+.2f}"
    return [str(row["index"]), row["stage"], f"{100 * row['accuracy']:.2f}%", delta, f"{row['weight_bytes']:,}",
            _ratio(start["weight_bytes"], row["weight_bytes"]), f"{row['macs']:,}", f"{row['bitops']:,}",
            _ratio(start["bitops"], row["bitops"]), f"{row['seconds']:.1f}", _notes(row.get("extra"))]


_WIDTHS = (3, 14, 9, 7, 13, 7, 12, 15, 7, 8, 0)


def format_line(cells) -> str:
    """A fixed-width line of the printed table (text left, numbers right)."""
    return "  ".join(cell.ljust(width) if i in (1, 10) else cell.rjust(width)
                     for i, (cell, width) in enumerate(zip(cells, _WIDTHS))).rstrip()


def summary_markdown(rows: list[dict], final: Path | None) -> str:
    """The table as Markdown, with the final checkpoint's path."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i in (1, 10) else "--:"
                                                                 for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(table_cells(row, rows[0])) + " |" for row in rows]
    text = "# Pipeline results\n\nAccuracy on the validation split; Δ in points against row 0 (the input model); " \
           "× = row 0 / this row; MACs and BitOps per example.\n\n" + "\n".join(lines) + "\n"
    return text + (f"\nFinal checkpoint: `{final}`\n" if final else "")


def _done_stages(recorded: list[dict], specs: list[dict], out: Path, digest: str, echo) -> int:
    """How many leading stages a rerun may load instead of running: recorded from the same start, the same
    spec as every entry up to there, and its checkpoint still in ``out``. Says why it stops early."""
    if not recorded:
        return 0
    if recorded[0].get("fingerprint") != digest:
        echo("the input model or data differ from the recorded run: running every stage")
        return 0
    done = 0
    for number, spec in enumerate(specs, 1):
        row = recorded[number] if number < len(recorded) else None
        if row is None or row.get("spec") != spec or not (out / checkpoint_name(number, spec["stage"])).is_file():
            if row is not None:
                echo(f"stage {number} {spec['stage']!r} differs from the recorded run (or its checkpoint is gone): "
                     f"running from stage {number}")
            break
        done = number
    if done:
        echo(f"resuming: stages 1..{done} are done (their checkpoints in {out}), skipped")
    return done


def _clear_after(out: Path, done: int) -> None:
    """Remove the summary and the checkpoints of stages after ``done``: they belong to a run that is redone."""
    (out / SUMMARY).unlink(missing_ok=True)
    for path in out.iterdir():
        match = _CHECKPOINT.fullmatch(path.name)
        if match and int(match.group(1)) > done:
            path.unlink()


def run_pipeline(model: nn.Module, data: StageData, stages, output_dir, builder, kwargs: dict | None = None,
                 recipe: dict | None = None, transforms=(), resume: bool = True, progress: bool = True,
                 trust_builder=(), echo: Callable[[str], None] = print) -> tuple[nn.Module, list[StageReport]]:
    """Run ``stages`` in order from ``model`` (built by ``builder(**kwargs)``, ``recipe`` and ``transforms``, as its
    checkpoint says), checkpointing each into ``output_dir``. With ``resume``, every leading stage whose
    checkpoint exists and whose spec (and all before it) equals the recorded one is loaded instead of rerun,
    provided the input model and data are the same. Returns the final model and the reports of rows 0..n."""
    stages = check_stages(stages)
    specs = [{"stage": stage, "params": params} for stage, params in stages]
    kwargs, transforms = dict(kwargs or {}), list(transforms or [])
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise StageError(f"pipeline output {str(out)!r} is a file; with --pipeline, -o names a folder")
    check_fits(model, data)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    name = builder_name(builder)
    trusted = {name, *([trust_builder] if isinstance(trust_builder, str) else trust_builder)}
    digest = fingerprint(model, data, name, kwargs, recipe, transforms)
    recorded = _read_rows(results) if resume else []
    if not resume and (results.exists() or any(_CHECKPOINT.fullmatch(p.name) for p in out.iterdir())):
        echo(f"restart: ignoring what {out} holds")
    done = _done_stages(recorded, specs, out, digest, echo)
    _clear_after(out, done)
    if done:
        rows = recorded[:done + 1]
        last = out / checkpoint_name(done, specs[done - 1]["stage"])
        model = load_checkpoint(last, trust_builder=trusted)
        transforms = read_checkpoint_fields(last).transforms
    else:
        rows = [{"index": 0, "spec": None, "checkpoint": None, "fingerprint": digest,
                 **stage_report("input", model, data, {}).row()}]
    _write_rows(results, rows)
    reports = [_report(row) for row in rows]
    echo(format_line(COLUMNS))
    for row in rows:
        echo(format_line(table_cells(row, rows[0])))

    for number in range(done + 1, len(stages) + 1):
        stage, params = stages[number - 1]
        where = f"stage {number}/{len(stages)} {stage!r}"
        model, report = _run_one(stage, params, model, data, number, progress, where)
        if report.transform is not None:
            transforms = [*transforms, report.transform]
        path = out / checkpoint_name(number, stage)
        _save_checked(model, path, builder, kwargs, recipe, transforms, trusted, data, where)
        row = {"index": number, "spec": specs[number - 1], "checkpoint": path.name, **report.row()}
        append_row(results, row)
        rows.append(json.loads(json.dumps(row, default=json_default)))
        reports.append(report)
        echo(format_line(table_cells(rows[-1], rows[0])))

    final = out / checkpoint_name(len(stages), stages[-1][0])
    (out / SUMMARY).write_text(summary_markdown(rows, final))
    echo(f"final checkpoint: {final} (edgepack export / inspect take it as it is); table: {out / SUMMARY}")
    return model, reports


def _run_one(stage: str, params: dict, model: nn.Module, data: StageData, number: int, progress: bool,
             where: str) -> tuple[nn.Module, StageReport]:
    """One stage, its random state seeded by (data seed, stage number) so a rerun repeats it; errors name it."""
    extra = {"progress": progress} if "progress" in stage_parameters(STAGES[stage]) and "progress" not in params else {}
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(data.seed * 1000 + number)
        try:
            model, report = run_stage(stage, model, data, **params, **extra)
        except EdgepackError as error:
            raise StageError(f"{where}: {error}") from None
    if not report.seconds:
        report.seconds = time.perf_counter() - started
    return model, report


def _report(row: dict) -> StageReport:
    """A recorded row back as a StageReport."""
    fields = inspect.signature(StageReport).parameters
    return StageReport(**{key: row[key] for key in fields if key in row})
