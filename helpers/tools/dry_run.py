"""``--dry-run``: what a long command would do, with its arguments checked, and nothing done.

Every setting is already validated when the command line is parsed; a dry run adds what can be
checked without training: the method grammar against the backbone's architecture, the data's
splits, the output paths, and the plan (runs, notebooks, steps). A backbone or corpus that is
not on this machine (a Hub id, a path on a GPU server) is named as such rather than fetched: a
dry run reaches no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..backbone import HUB_ID, backbone_config, hub_cached
from ..config import BenchGrid, RunConfig, TimingConfig
from ..corpora import ADAPTERS, load_data
from ..files import check_output_file, check_writable
from ..manifests import check_splits
from ..device import resolve_device
from ..methods import check_fits, parse_method, timing_grid, training_grid
from ..paths import NOTEBOOK_DIR, shown
from .bench import grid_plan, grid_plan_stem
from .run_notebooks import series


def here(path: str) -> bool:
    return Path(path).expanduser().exists()


def backbone_here(spec: str) -> bool:
    """Whether the backbone's architecture can be read here (bundled, preset, folder, cached)."""
    return spec == "tiny" or spec.startswith("random:") or here(spec) or hub_cached(spec)


def backbone_line(spec: str) -> str:
    """The backbone's family and size, or why they are not known here."""
    if not backbone_here(spec):
        if HUB_ID.match(spec):
            return f"{spec}: a Hub id, downloaded on the first real run"
        raise FileNotFoundError(f"backbone {spec}: no such folder, preset or Hub id")
    config = backbone_config(spec)
    return (f"{spec}: {config.model_type}, {config.num_hidden_layers} transformer layers of "
            f"width {config.hidden_size}")


def device_here(device: str) -> bool:
    try:
        resolve_device(device)
        return True
    except ValueError:
        return False


def device_line(device: str) -> str:
    return resolve_device(device) if device_here(device) else f"{device}: not on this machine"


def data_line(spec: str) -> str:
    """The clips per split, with the splits checked, or a note that the data is elsewhere."""
    kind, _, path = spec.partition(":")
    location = path if kind in ADAPTERS else spec
    if spec != "bundled" and not here(location):
        return f"{spec}: not on this machine (the real run stops here if it is still missing)"
    manifest = load_data(spec)
    check_splits(manifest, spec)
    counts = manifest.groupby("split").size()
    return f"{spec}: " + ", ".join(f"{split} {count}" for split, count in counts.items())


def method_line(name: str, architecture=None) -> str:
    """The parsed method, checked against ``architecture`` (a backbone config) when given."""
    method = parse_method(name)
    if architecture is not None:
        check_fits(method, architecture)
    return f"{method.name} ({method.kind}, {method.precision})"


def plan_train(config: RunConfig, out: str | None) -> list[str]:
    check_writable(config.results_root)
    if out:
        check_output_file(out)
    architecture = backbone_config(config.backbone) if backbone_here(config.backbone) else None
    return [f"method: {method_line(config.method, architecture)}",
            f"backbone: {backbone_line(config.backbone)}", f"data: {data_line(config.data)}",
            f"training: {config.num_epochs} epochs at lr {config.lr:g}, batches of "
            f"{config.max_batch_seconds:g} s of audio, crops of {config.max_clip_seconds:g} s, "
            f"seed {config.seed}", f"device: {device_line(config.device)}",
            f"result: {shown(out) if out else shown(Path(config.results_root) / 'runs')}"]


def plan_bench(settings: RunConfig, timing: TimingConfig, grid: BenchGrid) -> list[str]:
    root = check_writable(settings.results_root)
    if grid.loader_only:
        return [f"loader: the input pipeline on {data_line(settings.data)}, against the model",
                f"results: {shown(root / 'loader.jsonl')}"]
    backbone = timing.backbone if grid.timing_only else settings.backbone
    lines = [f"backbone: {backbone_line(backbone)}", f"device: {device_line(settings.device)}"]
    if not (backbone_here(backbone) and device_here(settings.device)):
        # what fits the backbone and the device is not known here: the grid, unfiltered
        methods = grid.method_names or (timing_grid() if grid.timing_only else training_grid())
        stem = grid_plan_stem(backbone, timing, grid)
        lines.append("(methods that do not fit the backbone or the device are left out by the "
                     "real run)")
    else:
        backbone, methods, stem = grid_plan(settings, timing, grid)
    # each method was checked against the backbone by grid_plan, where it is here
    lines.append("methods: " + ", ".join(method_line(m) for m in methods))
    if grid.timing_only:
        runs = len(methods) * grid.repeats
        lines.append(f"timing: {runs} timed runs ({grid.repeats} rounds), {timing.phase}, "
                     f"{timing.batch_size} x {timing.clip_seconds:g} s, {timing.num_steps} "
                     f"steps after {timing.warmup}")
    else:
        rates = grid.learning_rates
        search = len(rates) * len(methods) if len(rates) > 1 else 0
        lines += [f"data: {data_line(settings.data)}",
                  f"training: up to {search} learning-rate runs (seed 0, rates "
                  f"{grid.lrs}), then {grid.seeds} seed(s) per method: at most "
                  f"{search + grid.seeds * len(methods)} runs of {settings.num_epochs} epochs, "
                  f"{grid.jobs} at once"]
    return lines + [f"results: {shown(root / (stem + '.jsonl'))} (added to what is there)"]


def plan_series(results_root: str, in_place: bool, smoke: bool) -> list[str]:
    check_writable(results_root)
    out = NOTEBOOK_DIR if in_place else Path(results_root) / "notebooks"
    notebooks = [str(path.relative_to(NOTEBOOK_DIR)) for path in series()]
    return [f"notebooks ({len(notebooks)}, in order{', SMOKE mode' if smoke else ''}): "
            + ", ".join(notebooks), f"executed copies: {shown(out)}"]


def plan_gpu_check(results_root: str, steps: list[str]) -> list[str]:
    import torch  # (torch) only for the CUDA question

    known = ("timing", "bundled", "torchrun", "notebooks")
    unknown = sorted(set(steps) - set(known))
    if unknown:
        raise ValueError(f"--steps: unknown step(s) {unknown}; choose among {list(known)}")
    cuda = (f"CUDA GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
            "no CUDA GPU here: the real run says so and does nothing")
    return [f"steps: {', '.join(steps)}", cuda,
            f"results: {shown(check_writable(Path(results_root) / 'gpu'))}/<device>/"]


def report(command: str, lines: list[str]) -> None:
    print(f"python -m helpers {command} --dry-run: the settings are valid; the plan:")
    for line in lines:
        print(f"  {line}")


def plan_sample(out: str, clips_per_speaker: int) -> list[str]:
    check_writable(out, "--out")
    espeak = shutil.which("espeak-ng") or "not installed: apt-get install espeak-ng"
    return [f"corpus: {clips_per_speaker} clips per speaker into {shown(Path(out))}",
            f"espeak-ng: {espeak}"]


def plan_pretrain(args) -> list[str]:
    """The pretraining recipe's plan (``pretrain-backbone``'s options)."""
    check_writable(args.out, "--out")
    speech = Path(args.speech_dir)
    made = (speech / "transcripts.csv").is_file()
    return [f"speech: {args.clips} synthetic clips in {shown(speech)} "
            f"({'already made' if made else 'made first, with espeak-ng'})",
            f"pretraining: {args.steps} steps of {args.batch_size} clips at lr {args.lr:g}, "
            f"width {args.width}, seed {args.seed}",
            f"backbone, probes and model card: {shown(Path(args.out))}"]
