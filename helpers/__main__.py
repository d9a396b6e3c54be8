"""Command line: ``python -m helpers --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .data import SAMPLE_DIR, load_manifest, sample_manifest

RESULTS_DIR = Path("results")


def bench(args: argparse.Namespace) -> None:
    """Train the full method briefly and print a one-row results table."""
    from .experiments import METHODS, append_result, run

    manifest = load_manifest(args.manifest) if args.manifest else sample_manifest()
    record = run(METHODS["full"], manifest, backbone=args.backbone, seed=args.seed,
                 num_epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    append_result(record, args.out)
    columns = ["method", "trainable_params", "seconds_per_epoch", *[c for c in record if
               c.startswith("peak_")], "test_ccc_arousal", "test_ccc_valence",
               "test_ccc_dominance", "test_ccc_mean"]
    print(pd.DataFrame([record])[columns].round(3).to_string(index=False))
    print(f"\nappended to {args.out}")


def make_sample_command(args: argparse.Namespace) -> None:
    """Regenerate the bundled corpus (audio, labels.csv, DATASHEET.md)."""
    from .corpus import make_sample
    from .datasheet import write_datasheet

    manifest = make_sample(args.out, seed=args.seed, clips_per_speaker=args.clips_per_speaker)
    write_datasheet(args.out, seed=args.seed)
    print(f"{len(manifest)} clips written to {args.out}")


def pretrain_command(args: argparse.Namespace) -> None:
    """Synthesise the pretraining speech (once) and pretrain the bundled tiny backbone."""
    from .pretrain import make_pretraining_speech, pretrain

    speech = Path(args.speech_dir)
    if not (speech / "transcripts.csv").is_file():
        make_pretraining_speech(speech, num_clips=args.clips, seed=args.seed + 1234)
    summary = pretrain(speech, args.out, num_steps=args.steps, batch_size=args.batch_size,
                       prosody_weight=args.prosody_weight, seed=args.seed)
    print(f"backbone saved to {args.out} after {summary['steps']} steps "
          f"(final CTC loss {summary['curve'][-1][1]:.3f})")


def main_job(args: argparse.Namespace) -> None:
    """The main job on the bundled default; says plainly what does not exist yet."""
    if not (SAMPLE_DIR / "labels.csv").is_file():
        sys.exit("The bundled corpus (data_sample/labels.csv) is not there yet: create it with "
                 "`python -m helpers make-sample`.")
    notebooks = sorted(Path("notebooks").glob("*.ipynb"))
    if not notebooks:
        print("The notebook series is not written yet; running the benchmark of the full "
              "finetuning method on the bundled corpus instead.\n")
    bench(args)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    for name, function, text in [("run", main_job, "the main job on the bundled default"),
                                  ("bench", bench, "train and measure, print a results table")]:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--manifest", help="a manifest CSV (default: the bundled corpus)")
        sub.add_argument("--backbone", default="tiny", help="tiny, a Hub id, a folder, "
                         "or random:wav2vec2-base / random:wav2vec2-large")
        sub.add_argument("--epochs", type=int, default=2)
        sub.add_argument("--batch-size", type=int, default=8)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--device", default="cpu")
        sub.add_argument("--out", default=str(RESULTS_DIR / "bench.jsonl"))
        sub.set_defaults(function=function)
    sample = commands.add_parser("make-sample", help="regenerate the bundled corpus "
                                 "(needs espeak-ng)", description=make_sample_command.__doc__)
    sample.add_argument("--out", default=str(SAMPLE_DIR))
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--clips-per-speaker", type=int, default=72)
    sample.set_defaults(function=make_sample_command)
    backbone = commands.add_parser("pretrain-backbone", help="pretrain the bundled tiny "
                                   "backbone (needs espeak-ng)", description=pretrain_command.__doc__)
    backbone.add_argument("--out", default=str(SAMPLE_DIR / "backbone"))
    backbone.add_argument("--speech-dir", default="build/pretraining_speech")
    backbone.add_argument("--clips", type=int, default=3600)
    backbone.add_argument("--steps", type=int, default=1200)
    backbone.add_argument("--batch-size", type=int, default=16)
    backbone.add_argument("--prosody-weight", type=float, default=1.0)
    backbone.add_argument("--seed", type=int, default=0)
    backbone.set_defaults(function=pretrain_command)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.function(args)


if __name__ == "__main__":
    main()
