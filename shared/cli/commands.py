"""What each `fusionq` command does: read its inputs, call the service, write files, print a summary.

Each command imports what it needs when it runs, so `fusionq --help` and light commands stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shared.cli.outputs import check_output_dir, check_output_file, write_predictions_csv, write_scores_csv
from shared.vocab import ScoreMethod


def connect(settings, **options):
    """A client wired to the dispatcher its settings ask for (Celery on the broker, or the embedded
    worker), connected when the first job is sent. ``options``: FusionqClient's."""
    from shared.client import FusionqClient
    from workers.dispatch import dispatcher_for

    return FusionqClient(settings, dispatcher_factory=dispatcher_for, **options)


def _classifier_options(args, settings) -> dict:
    """AutoFusionClassifier arguments from the encoder (and, for train, fusion/LLM/fine-tuning) options."""
    from shared.encoders.spec import parse_layers

    layers = getattr(args, "layers", "auto")
    options = {"encoders": args.encoder or [settings.default_encoder],
               "layers": "auto" if layers == "auto" else parse_layers(layers),
               "pooling": args.pooling, "max_length": args.max_length, "precision": args.precision}
    if getattr(args, "fusion", None):
        options["fusion"] = args.fusion
    if getattr(args, "llm", None):
        options["llms"] = args.llm
    if getattr(args, "finetune", None):
        from shared.encoders.finetune import FinetuneConfig

        options["finetune"] = FinetuneConfig(method=args.finetune, epochs=args.epochs, learning_rate=args.learning_rate,
                                             load_in_4bit=args.load_in_4bit)
    if getattr(args, "ensemble", None) is not None:
        from shared.errors import ConfigError
        from shared.fusion.training import TrainingConfig

        if args.ensemble < 1:
            raise ConfigError(f"--ensemble {args.ensemble}: give at least 1 network")
        options["training"] = TrainingConfig(ensemble=args.ensemble)
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
    from shared.textio import read_labelled, read_texts
    from shared.service.training import train_classifier

    data = read_labelled(args.data)
    dev = read_labelled(args.dev) if args.dev else None
    unlabeled = read_texts(args.unlabeled) if args.unlabeled else None
    result = train_classifier(settings=settings, name=args.name, data=data, dev=dev, unlabeled=unlabeled,
                              show_progress=not args.quiet, **_classifier_options(args, settings))
    print(json.dumps(result.as_json(), indent=2) if args.json else result.summary())
    return 0


def cmd_layers(args, settings) -> int:
    from shared.service.autofusion import AutoFusionClassifier
    from shared.reports import write_layer_report
    from shared.textio import read_labelled

    out_dir = Path(args.out_dir or f"fusionq-layers-{Path(args.data).stem}")
    check_output_dir(out_dir)
    data = read_labelled(args.data)
    dev = read_labelled(args.dev) if args.dev else None
    options = _classifier_options(args, settings)
    clf = AutoFusionClassifier(settings=settings, show_progress=not args.quiet, **options)
    report = clf.layer_report(data, dev)
    paths = write_layer_report(report, out_dir, data_source=data.source)
    for entry in report:
        print(entry["encoder"])
        for r in entry["rows"]:
            print(f"  layer {r['layer']:>3}: validation score {r['val_score']:.4f}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


EXIT_ALL_FAILED = 3  # the job ran, but no item got a prediction (usage and input errors exit 2)


def cmd_classify(args, settings) -> int:
    from shared.evaluation import classify_with_progress
    from shared.textio import read_texts_and_ids

    out = Path(args.out)
    stats_path = out.with_suffix(".stats.json")
    check_output_file(out)
    check_output_file(stats_path)
    texts, ids = read_texts_and_ids(args.input, column=args.text_column, id_column=args.id_column,
                                    default_id_column="id")
    with connect(settings) as client:
        job_id, results = classify_with_progress(
            client, texts, args.classifier, mode=args.mode, show_progress=not args.quiet, timeout=args.timeout,
            budget_share=args.budget_share, budget_items=args.budget_items, budget_usd=args.budget_usd)
        stats = client.stats(job_id)
    write_predictions_csv(out, results, stats.labels, ids=ids, texts=None if args.no_text else texts)
    stats_path.write_text(stats.model_dump_json(indent=2) + "\n", encoding="utf-8")
    failed = sum(r.status == "failed" for r in results)
    print(f"wrote {len(results)} predictions to {out}" + (f" ({failed} failed: see the error column)" if failed else ""))
    tiers = ", ".join(f"{t.source}: {t.done} answered, {t.failed + t.skipped} missing" for t in stats.tiers) or "none"
    print(f"job {job_id}: {stats.n_escalated} items escalated ({tiers}), LLM cost ${stats.llm_cost_usd:.4f}, "
          f"flags {stats.flags or 'none'}; stats in {stats_path}")
    if results and failed == len(results):
        first = next(r.error for r in results if r.error)
        print(f"fusionq classify: every item failed (first error: {first})", file=sys.stderr)
        return EXIT_ALL_FAILED
    return 0


def cmd_job(args, settings) -> int:

    with connect(settings) as client:
        print(client.stats(args.job_id).model_dump_json(indent=2))
    return 0


def cmd_evaluate(args, settings) -> int:
    from shared.evaluation import evaluate_classifier, evaluate_llm, metrics_line, scored_line
    from shared.textio import read_labelled

    data = read_labelled(args.data)
    if args.llm:
        out_dir = Path(args.out_dir or "fusionq-eval-llm")
        with connect(settings) as client:
            report = evaluate_llm(settings, llm=args.llm, data=data, out_dir=out_dir, show_progress=not args.quiet,
                                  client=client)
        print(f"LLM calls: {report['llm_methods']}, cost ${report['llm_cost_usd']:.4f}")
    elif not args.through_service:
        from shared.service.autofusion import AutoFusionClassifier
        from shared.reports import compare_modes

        out_dir = Path(args.out_dir or f"fusionq-eval-{args.classifier.replace('@', '-v')}")
        clf = AutoFusionClassifier.from_registry(args.classifier, settings=settings)
        clf.show_progress = not args.quiet
        report = compare_modes(clf, data, out_dir, name=args.classifier, show_progress=not args.quiet)
        for mode, r in report["modes"].items():
            print(f"{mode:>12}: {metrics_line(r, report['multi_label'])}, "
                  f"escalated {r['escalated_share']:.1%}, LLM calls/1k {r['llm_calls_per_1000']:.0f}, "
                  f"cost/1k ${r['llm_cost_per_1000_usd']:.4f}, {r['wall_seconds']:.1f} s")
        print(f"report: {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'}, {out_dir / 'coverage.png'}")
        return 0
    else:
        out_dir = Path(args.out_dir or f"fusionq-eval-{args.classifier.replace('@', '-v')}")
        with connect(settings) as client:
            report = evaluate_classifier(client, classifier=args.classifier, data=data, out_dir=out_dir,
                                         show_progress=not args.quiet)
    print(f"{report['classifier']}: {metrics_line(report, report['multi_label'])}; {scored_line(report)}")
    for row in report["coverage_accuracy"]:
        print(f"  most confident {row['coverage']:.0%}: accuracy {row['accuracy']:.4f}")
    print(f"report: {out_dir / 'report.md'}, {out_dir / 'metrics.json'}")
    return 0


def cmd_score(args, settings) -> int:
    from shared.llm.prompts import parse_labels
    from shared.scoring import score_texts
    from shared.textio import read_texts

    labels = parse_labels(args.labels)
    out = Path(args.out)
    check_output_file(out)
    texts = read_texts(args.input, column=args.text_column)
    with connect(settings) as client:
        scores = score_texts(settings, llm=args.llm, labels=labels, multi_label=args.multi_label, texts=texts,
                             show_progress=not args.quiet, timeout=args.timeout, client=client)
    write_scores_csv(out, scores, labels.names)
    counts = {str(m): sum(s.method == m for s in scores) for m in ScoreMethod}
    print(f"wrote {len(scores)} scores to {out}: {counts}, spent ${sum(s.spent_usd for s in scores):.4f}")
    return 0


def _database_session(settings):
    """A session on the configured database, migrated first where that is allowed."""
    from shared.db.engine import ensure_schema, session_for

    url = settings.effective_database_url
    ensure_schema(url)
    return session_for(url)


def cmd_llm_stats(args, settings) -> int:
    from shared.db.llm import answer_stats

    with _database_session(settings) as session:
        rows = answer_stats(session=session)
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
    check_output_dir(out_dir)
    run_demo(settings, connect=connect, data_dir=Path(args.data) if args.data else None, name=name, out_dir=out_dir,
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




LOOPBACK = ("127.0.0.1", "::1", "localhost")


def cmd_serve(args, settings) -> int:
    from shared.errors import ConfigError
    from shared.gc_freeze import freeze_what_is_alive, watch_full_collections

    try:
        import uvicorn

        from shared.api.app import create_api
    except ImportError as exc:
        raise ConfigError(f"fusionq serve needs the api extra ({exc.name} is missing): pip install 'fusionq[api]'") from None
    if not settings.api_keys and args.host not in LOOPBACK:
        raise ConfigError(f"--host {args.host} would let anyone on the network submit jobs: set FUSIONQ_API_KEYS "
                          "(comma-separated keys) or serve on 127.0.0.1")
    client = connect(settings, listen_on_submit=False)  # request threads wait through the API's NoticeHub
    api = create_api(settings, client)
    guard = "API keys required" if settings.api_keys else "no FUSIONQ_API_KEYS set: loopback only, no key asked"
    print(f"fusionq API on http://{args.host}:{args.port} (docs at /docs; {guard})", file=sys.stderr, flush=True)
    # What the server has loaded lives as long as it does: no request pays for walking it in a full
    # collection (~90 ms here); embedded workers freeze again after they load their models.
    freeze_what_is_alive()
    watch_full_collections()
    try:
        uvicorn.run(api, host=args.host, port=args.port, log_level="warning")
    finally:
        client.close()
    return 0
