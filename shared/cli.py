"""The `fusionq` command line."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from shared.errors import FusionqError


def _encoder_spec(args, settings):
    from shared.encoders.spec import EncoderSpec, parse_layers

    return EncoderSpec(model=args.encoder or settings.default_encoder, layers=parse_layers(args.layers),
                       pooling=args.pooling, max_length=args.max_length)


def cmd_db(args, settings) -> int:
    from shared.db import engine

    url = settings.effective_database_url
    if args.action == "upgrade":
        engine.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        engine.downgrade(url, args.revision or "base")
    print(f"{engine.current_revision(engine.get_engine(url)) or 'empty'} (head: {engine.head_revision(url)})")
    return 0


def cmd_train(args, settings) -> int:
    from shared.textio import read_labelled
    from shared.trainer import train_classifier

    data = read_labelled(args.data)
    dev = read_labelled(args.dev) if args.dev else None
    result = train_classifier(settings=settings, name=args.name, data=data, dev=dev,
                              encoder=_encoder_spec(args, settings), show_progress=not args.quiet)
    row = result.classifier
    print(json.dumps({"classifier": f"{row.name}@{row.version}", "labels": row.labels, "multi_label": row.multi_label,
                      "artifact": row.artifact_uri, "validation": result.validation,
                      "seconds": round(result.seconds, 1)}, indent=2))
    return 0


def cmd_classify(args, settings) -> int:
    from shared.client import FusionqClient
    from shared.evaluation import classify_with_progress
    from shared.textio import read_texts

    texts = read_texts(args.input, column=args.text_column)
    with FusionqClient(settings) as client:
        results = classify_with_progress(client, texts, args.classifier, mode=args.mode, show_progress=not args.quiet,
                                         timeout=args.timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = next((list(r.probabilities) for r in results if r.probabilities), [])
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "status", "labels", "confidence", *[f"p_{name}" for name in labels], "error"])
        for r in results:
            writer.writerow([r.position, r.status, "|".join(r.labels),
                             "" if r.confidence is None else f"{r.confidence:.6f}",
                             *[f"{r.probabilities[name]:.6f}" if r.probabilities else "" for name in labels],
                             r.error or ""])
    failed = sum(r.status == "failed" for r in results)
    print(f"wrote {len(results)} predictions to {out}" + (f" ({failed} failed: see the error column)" if failed else ""))
    return 0


def cmd_evaluate(args, settings) -> int:
    from shared.client import FusionqClient
    from shared.evaluation import evaluate_classifier
    from shared.textio import read_labelled

    data = read_labelled(args.data)
    out_dir = Path(args.out_dir or f"fusionq-eval-{args.classifier.replace('@', '-v')}")
    with FusionqClient(settings) as client:
        report = evaluate_classifier(client, classifier=args.classifier, data=data, out_dir=out_dir,
                                     show_progress=not args.quiet)
    print(f"{report['classifier']}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
          f"ECE {report['ece']:.4f}")
    for row in report["coverage_accuracy"]:
        print(f"  most confident {row['coverage']:.0%}: accuracy {row['accuracy']:.4f}")
    print(f"report: {out_dir / 'report.md'}, {out_dir / 'metrics.json'}")
    return 0


def cmd_demo(args, settings) -> int:
    from shared.demo import run_demo

    name = args.name or ("demo" if not args.data else Path(args.data).resolve().name)
    out_dir = Path(args.out_dir or f"fusionq-eval-{name}")
    run_demo(settings, data_dir=Path(args.data) if args.data else None, name=name, out_dir=out_dir,
             max_train=args.max_train, encoder=_encoder_spec(args, settings), show_progress=not args.quiet)
    return 0


def cmd_classifiers(args, settings) -> int:
    from shared.db.engine import ensure_schema, session_for
    from shared.db.registry import list_classifiers

    url = settings.effective_database_url
    ensure_schema(url, auto_upgrade=url.startswith("sqlite"))
    with session_for(url) as session:
        rows = list_classifiers(session=session)
        if not rows:
            print("no classifiers yet: train one with `fusionq train --data train.csv --name NAME`")
        for row in rows:
            val = row.metrics.get("validation", {}).get("accuracy_calibrated")
            print(f"{row.name}@{row.version}\t{len(row.labels)} labels{' (multi-label)' if row.multi_label else ''}"
                  f"\tencoder {row.encoder_spec['model']}\tvalidation accuracy {val if val is None else round(val, 4)}"
                  f"\t{row.created_at:%Y-%m-%d %H:%M}")
    return 0


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", help="Hugging Face id or local path (default: FUSIONQ_DEFAULT_ENCODER, MiniLM)")
    parser.add_argument("--layers", default="-1", help="hidden-state index or comma list, concatenated (default -1)")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "last"])
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default 256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionq", description="Queue-based text classification with fused signals.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="migrate the database (alembic)")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: base)")
    db.set_defaults(func=cmd_db)

    train = sub.add_parser("train", help="train a classifier and publish it to the registry")
    train.add_argument("--data", required=True, help="CSV with text,label (or text,labels with |-joined names)")
    train.add_argument("--name", required=True, help="registry name; each training adds a version")
    train.add_argument("--dev", help="validation CSV (default: a stratified 15%% split of --data)")
    _add_encoder_options(train)
    train.set_defaults(func=cmd_train)

    classify = sub.add_parser("classify", help="classify a CSV of texts through the service")
    classify.add_argument("--classifier", required=True, help="NAME or NAME@VERSION")
    classify.add_argument("--in", dest="input", required=True, help="CSV with a text column")
    classify.add_argument("--out", required=True, help="predictions CSV to write")
    classify.add_argument("--text-column", default="text")
    classify.add_argument("--mode", default="fast", choices=["fast"])
    classify.add_argument("--timeout", type=float, help="seconds to wait for the job")
    classify.set_defaults(func=cmd_classify)

    evaluate = sub.add_parser("evaluate", help="accuracy, F1, calibration and coverage on a labelled CSV")
    evaluate.add_argument("--classifier", required=True, help="NAME or NAME@VERSION")
    evaluate.add_argument("--data", required=True, help="labelled CSV (text,label or text,labels)")
    evaluate.add_argument("--out-dir", help="where metrics.json and report.md go (default fusionq-eval-NAME)")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="train + classify + evaluate on the shipped sample or a folder")
    demo.add_argument("--data", help="folder with train.csv and test.csv (default: the shipped sample)")
    demo.add_argument("--name", help="classifier name (default: demo, or the folder's name)")
    demo.add_argument("--max-train", type=int, help="train on a stratified sample of at most this many texts")
    demo.add_argument("--out-dir", help="where the evaluation report goes (default fusionq-eval-NAME)")
    _add_encoder_options(demo)
    demo.set_defaults(func=cmd_demo)

    listing = sub.add_parser("classifiers", help="list the registry")
    listing.set_defaults(func=cmd_classifiers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Model-loading chatter would bury the progress bars.
    for noisy in ("transformers", "huggingface_hub", "kombu.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from shared.settings import get_settings

        return args.func(args, get_settings())
    except FusionqError as exc:
        print(f"fusionq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
