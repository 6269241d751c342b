"""The `fusionq` command line."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from shared.errors import FusionqError
from shared.serving import MODES


def _classifier_options(args, settings) -> dict:
    """AutoFusionClassifier arguments from the encoder (and, for train, fusion/LLM/fine-tuning) options."""
    from shared.encoders.spec import parse_layers

    layers = getattr(args, "layers", "auto")
    options = {"encoders": args.encoder or [settings.default_encoder],
               "layers": "auto" if layers == "auto" else parse_layers(layers),
               "pooling": args.pooling, "max_length": args.max_length}
    if getattr(args, "fusion", None):
        options["fusion"] = args.fusion
    if getattr(args, "llm", None):
        options["llms"] = args.llm
    if getattr(args, "finetune", None):
        from shared.encoders.finetune import FinetuneConfig

        options["finetune"] = FinetuneConfig(method=args.finetune, epochs=args.epochs, learning_rate=args.learning_rate,
                                             load_in_4bit=args.load_in_4bit)
    if getattr(args, "escalate_accuracy", None) is not None:
        from shared.fusion.escalation import EscalationTarget

        options["escalation"] = EscalationTarget(share=None, kept_accuracy=args.escalate_accuracy)
    elif getattr(args, "escalate_share", None) is not None:
        from shared.fusion.escalation import EscalationTarget

        options["escalation"] = EscalationTarget(share=args.escalate_share)
    return options


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
    result = train_classifier(settings=settings, name=args.name, data=data, dev=dev, show_progress=not args.quiet,
                              **_classifier_options(args, settings))
    row, report = result.classifier, result.report
    validation = {k: v for k, v in result.validation.items() if k != "patterns"}
    print(json.dumps({"classifier": f"{row.name}@{row.version}", "labels": row.labels, "multi_label": row.multi_label,
                      "artifact": row.artifact_uri, "chosen": report["chosen"], "validation": validation,
                      "llm": report["llm"] or "none configured: encoder-only classifier (fast mode)",
                      "seconds": round(result.seconds, 1)}, indent=2))
    return 0


def cmd_layers(args, settings) -> int:
    from shared.autofusion import AutoFusionClassifier
    from shared.reports import write_layer_report
    from shared.textio import read_labelled

    data = read_labelled(args.data)
    dev = read_labelled(args.dev) if args.dev else None
    options = _classifier_options(args, settings)
    clf = AutoFusionClassifier(settings=settings, show_progress=not args.quiet, **options)
    report = clf.layer_report(data, dev)
    out_dir = Path(args.out_dir or f"fusionq-layers-{Path(args.data).stem}")
    paths = write_layer_report(report, out_dir, data_source=data.source)
    for entry in report:
        print(entry["encoder"])
        for r in entry["rows"]:
            print(f"  layer {r['layer']:>3}: validation score {r['val_score']:.4f}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_classify(args, settings) -> int:
    from shared.client import FusionqClient
    from shared.evaluation import classify_with_progress
    from shared.textio import read_texts

    texts = read_texts(args.input, column=args.text_column)
    with FusionqClient(settings) as client:
        job_id, results = classify_with_progress(
            client, texts, args.classifier, mode=args.mode, show_progress=not args.quiet, timeout=args.timeout,
            budget_share=args.budget_share, budget_items=args.budget_items, budget_usd=args.budget_usd)
        stats = client.stats(job_id)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = next((list(r.probabilities) for r in results if r.probabilities), [])
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "status", "labels", "confidence", *[f"p_{name}" for name in labels],
                         "signals", "flags", "error"])
        for r in results:
            writer.writerow([r.position, r.status, "|".join(r.labels),
                             "" if r.confidence is None else f"{r.confidence:.6f}",
                             *[f"{r.probabilities[name]:.6f}" if r.probabilities else "" for name in labels],
                             "|".join(r.signals), "|".join(r.flags), r.error or ""])
    stats_path = out.with_suffix(".stats.json")
    stats_path.write_text(stats.model_dump_json(indent=2) + "\n", encoding="utf-8")
    failed = sum(r.status == "failed" for r in results)
    print(f"wrote {len(results)} predictions to {out}" + (f" ({failed} failed: see the error column)" if failed else ""))
    tiers = ", ".join(f"{t.source}: {t.done} answered, {t.failed + t.skipped} missing" for t in stats.tiers) or "none"
    print(f"job {job_id}: {stats.n_escalated} items escalated ({tiers}), LLM cost ${stats.llm_cost_usd:.4f}, "
          f"flags {stats.flags or 'none'}; stats in {stats_path}")
    return 0


def cmd_job(args, settings) -> int:
    from shared.client import FusionqClient

    with FusionqClient(settings) as client:
        print(client.stats(args.job_id).model_dump_json(indent=2))
    return 0


def cmd_evaluate(args, settings) -> int:
    from shared.client import FusionqClient
    from shared.evaluation import evaluate_classifier, evaluate_llm
    from shared.textio import read_labelled

    data = read_labelled(args.data)
    if args.llm:
        out_dir = Path(args.out_dir or "fusionq-eval-llm")
        report = evaluate_llm(settings, llm=args.llm, data=data, out_dir=out_dir, show_progress=not args.quiet)
        print(f"LLM calls: {report['llm_methods']}, cost ${report['llm_cost_usd']:.4f}")
    elif not args.through_service:
        from shared.autofusion import AutoFusionClassifier
        from shared.reports import compare_modes

        out_dir = Path(args.out_dir or f"fusionq-eval-{args.classifier.replace('@', '-v')}")
        clf = AutoFusionClassifier.from_registry(args.classifier, settings=settings)
        clf.show_progress = not args.quiet
        report = compare_modes(clf, data, out_dir, name=args.classifier, show_progress=not args.quiet)
        for mode, r in report["modes"].items():
            print(f"{mode:>12}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}, ECE {r['ece']:.4f}, "
                  f"escalated {r['escalated_share']:.1%}, LLM calls/1k {r['llm_calls_per_1000']:.0f}, "
                  f"cost/1k ${r['llm_cost_per_1000_usd']:.4f}, {r['wall_seconds']:.1f} s")
        print(f"report: {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'}, {out_dir / 'coverage.png'}")
        return 0
    else:
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


def cmd_score(args, settings) -> int:
    from shared.llm.run import parse_labels, score_texts
    from shared.textio import read_texts

    labels = parse_labels(args.labels)
    texts = read_texts(args.input, column=args.text_column)
    scores = score_texts(settings, llm=args.llm, labels=labels, multi_label=args.multi_label, texts=texts,
                         show_progress=not args.quiet, timeout=args.timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "method", *[f"p_{n}" for n in labels.names], "tokens_in", "tokens_out",
                         "cost_usd", "latency_ms", "error"])
        for i, s in enumerate(scores):
            probs = [f"{p:.6f}" for p in s.probabilities] if s.probabilities is not None else [""] * len(labels.names)
            writer.writerow([i, s.method, *probs, s.tokens_in, s.tokens_out, f"{s.cost_usd:.8f}",
                             f"{s.latency_ms:.1f}", s.error or ""])
    counts = {m: sum(s.method == m for s in scores) for m in ("logprobs", "vote", "failed")}
    print(f"wrote {len(scores)} scores to {out}: {counts}, spent ${sum(s.spent_usd for s in scores):.4f}")
    return 0


def _database_session(settings):
    """A session on the configured database, migrated first where that is allowed."""
    from shared.db.engine import ensure_schema, session_for

    url = settings.effective_database_url
    ensure_schema(url)
    return session_for(url)


def cmd_llm_stats(args, settings) -> int:
    from shared.llm.cache import stats

    with _database_session(settings) as session:
        rows = stats(session=session)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no LLM calls recorded yet")
    for r in rows:
        print(f"{r['provider']} / {r['model']}: {r['calls']} calls ({r['failed']} failed, {r['votes']} votes), "
              f"cache hit rate {r['cache_hit_rate']:.1%} ({r['cache_hits']} hits), tokens {r['tokens_in']} in / "
              f"{r['tokens_out']} out, cost ${r['cost_usd']:.4f}, latency ms p50 {r['latency_ms_p50']} "
              f"p90 {r['latency_ms_p90']} p99 {r['latency_ms_p99']}")
    return 0


def cmd_demo(args, settings) -> int:
    from shared.demo import run_demo

    name = args.name or ("demo" if not args.data else Path(args.data).resolve().name)
    out_dir = Path(args.out_dir or f"fusionq-eval-{name}")
    run_demo(settings, data_dir=Path(args.data) if args.data else None, name=name, out_dir=out_dir,
             max_train=args.max_train, show_progress=not args.quiet, **_classifier_options(args, settings))
    return 0


def cmd_classifiers(args, settings) -> int:
    from shared.db.registry import list_classifiers
    from shared.encoders.spec import specs_from_dict

    with _database_session(settings) as session:
        rows = list_classifiers(session=session)
        if not rows:
            print("no classifiers yet: train one with `fusionq train --data train.csv --name NAME`")
        for row in rows:
            val = row.metrics.get("validation", {}).get("accuracy_calibrated")
            print(f"{row.name}@{row.version}\t{len(row.labels)} labels{' (multi-label)' if row.multi_label else ''}"
                  f"\tencoders {', '.join(s.model for s in specs_from_dict(row.encoder_spec))}\tvalidation accuracy {val if val is None else round(val, 4)}"
                  f"\t{row.created_at:%Y-%m-%d %H:%M}")
    return 0


def _add_encoder_options(parser: argparse.ArgumentParser, *, layers: bool = True) -> None:
    parser.add_argument("--encoder", action="append",
                        help="Hugging Face id or local path; repeat for several encoders "
                             "(default: FUSIONQ_DEFAULT_ENCODER, MiniLM)")
    if layers:
        parser.add_argument("--layers", default="auto",
                            help="auto (chosen on validation, default), or a hidden-state index or comma list")
    parser.add_argument("--pooling", choices=["mean", "cls", "last"],
                        help="default: last for decoder LLMs, mean otherwise")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default 256)")


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    from shared.fusion.operators import OPERATORS

    parser.add_argument("--fusion", default="auto", choices=["auto", *OPERATORS],
                        help="how several layers/encoders are fused (default auto: chosen on validation)")


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
    _add_fusion_options(train)
    train.add_argument("--llm", action="append",
                       help="LLM source fused with the encoder: local, api, hf:MODEL or openai:MODEL@URL; repeatable. "
                            "Training texts are scored through the cache (a second fit asks nothing new)")
    train.add_argument("--finetune", choices=["full", "lora"],
                       help="fine-tune the backbone first: full (all weights) or lora (adapters, for decoder LLMs)")
    train.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    train.add_argument("--learning-rate", type=float, help="fine-tuning learning rate (default 5e-5 full, 2e-4 LoRA)")
    train.add_argument("--load-in-4bit", action="store_true", help="LoRA over 4-bit weights (needs CUDA + bitsandbytes)")
    escalate = train.add_mutually_exclusive_group()
    escalate.add_argument("--escalate-share", type=float,
                          help="escalation threshold sends this share of items to the LLM path (default 0.2)")
    escalate.add_argument("--escalate-accuracy", type=float,
                          help="escalation threshold keeps on the fast path the items reaching this accuracy")
    train.set_defaults(func=cmd_train)

    layers = sub.add_parser("layers", help="validation score per hidden layer (table + PNG plot)")
    layers.add_argument("--data", required=True, help="labelled CSV (text,label or text,labels)")
    layers.add_argument("--dev", help="validation CSV (default: a stratified 15%% split of --data)")
    layers.add_argument("--out-dir", help="where layers.csv/.json/.md/.png go (default fusionq-layers-DATA)")
    _add_encoder_options(layers, layers=False)
    layers.set_defaults(func=cmd_layers)

    classify = sub.add_parser("classify", help="classify a CSV of texts through the service")
    classify.add_argument("--classifier", required=True, help="NAME or NAME@VERSION")
    classify.add_argument("--in", dest="input", required=True, help="CSV with a text column")
    classify.add_argument("--out", required=True, help="predictions CSV to write")
    classify.add_argument("--text-column", default="text")
    classify.add_argument("--mode", default="fast", choices=list(MODES),
                          help="fast: encoder only; auto: escalate unsure items up the LLM tiers; full: every LLM "
                               "tier for every item; llm: the first tier's LLM alone")
    budget = classify.add_mutually_exclusive_group()
    budget.add_argument("--budget-share", type=float, help="auto: at most this share of the items may escalate")
    budget.add_argument("--budget-items", type=int, help="auto: at most this many items may escalate")
    classify.add_argument("--budget-usd", type=float, help="auto: at most this many dollars of LLM calls")
    classify.add_argument("--timeout", type=float, help="seconds to wait for the job")
    classify.set_defaults(func=cmd_classify)

    job = sub.add_parser("job", help="a job's escalations per tier, LLM cost, budget and flags (JSON)")
    job.add_argument("job_id")
    job.set_defaults(func=cmd_job)

    evaluate = sub.add_parser("evaluate", help="accuracy, F1, calibration and coverage on a labelled CSV")
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument("--classifier", help="NAME or NAME@VERSION")
    target.add_argument("--llm", help="evaluate an LLM alone: local, api, hf:MODEL or openai:MODEL@URL")
    evaluate.add_argument("--data", required=True, help="labelled CSV (text,label or text,labels)")
    evaluate.add_argument("--out-dir", help="where the report files go (default fusionq-eval-NAME)")
    evaluate.add_argument("--through-service", action="store_true",
                          help="classify through the queue and workers (fast mode) instead of comparing the modes "
                               "in this process")
    evaluate.set_defaults(func=cmd_evaluate)

    score = sub.add_parser("score", help="per-class LLM scores for a CSV of texts")
    score.add_argument("--llm", required=True,
                       help="local / api (the configured sources; through the queue when a broker is set), "
                            "or hf:MODEL / openai:MODEL@URL (in this process)")
    score.add_argument("--labels", required=True, help="comma-separated classes, optionally name=description")
    score.add_argument("--multi-label", action="store_true", help="one yes/no question per class")
    score.add_argument("--in", dest="input", required=True, help="CSV with a text column")
    score.add_argument("--out", required=True, help="scores CSV to write")
    score.add_argument("--text-column", default="text")
    score.add_argument("--timeout", type=float, help="seconds to wait for a queued job")
    score.set_defaults(func=cmd_score)

    llm = sub.add_parser("llm", help="LLM usage")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True)
    llm_stats = llm_sub.add_parser("stats", help="calls, cache hit rate, tokens, cost and latency per provider/model")
    llm_stats.add_argument("--json", action="store_true")
    llm_stats.set_defaults(func=cmd_llm_stats)

    demo = sub.add_parser("demo", help="train + classify + evaluate on the shipped sample or a folder")
    demo.add_argument("--data", help="folder with train.csv and test.csv (default: the shipped sample)")
    demo.add_argument("--name", help="classifier name (default: demo, or the folder's name)")
    demo.add_argument("--max-train", type=int, help="train on a stratified sample of at most this many texts")
    demo.add_argument("--out-dir", help="where the evaluation report goes (default fusionq-eval-NAME)")
    _add_encoder_options(demo)
    _add_fusion_options(demo)
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
