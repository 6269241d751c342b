"""The `fusionq` argument parser: every command, option and help text."""

from __future__ import annotations

import argparse

from shared.cli.commands import (
    cmd_classifiers,
    cmd_classify,
    cmd_db,
    cmd_demo,
    cmd_evaluate,
    cmd_job,
    cmd_layers,
    cmd_llm_stats,
    cmd_score,
    cmd_serve,
    cmd_train,
)
from shared.fusion.operators import OPERATORS
from shared.fusion.training import TrainingConfig
from shared.vocab import FinetuneMethod, Mode, Pooling, Precision, values


def _add_encoder_options(parser: argparse.ArgumentParser, *, layers: bool = True) -> None:
    parser.add_argument("--encoder", action="append",
                        help="Hugging Face id or local path; repeat for several encoders "
                             "(default: FUSIONQ_DEFAULT_ENCODER, MiniLM)")
    if layers:
        parser.add_argument("--layers", default="auto",
                            help="auto (chosen on validation, default), or a hidden-state index or comma list")
    parser.add_argument("--pooling", choices=list(values(Pooling)),
                        help="default: last for decoder LLMs, mean otherwise")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default 256)")
    parser.add_argument("--precision", choices=list(values(Precision)),
                        help="encoder number format (default FUSIONQ_ENCODER_PRECISION, auto: bf16 where the "
                             "hardware runs it faster than fp32, else fp32; fp16 on CUDA; int8 on a CPU through ONNX "
                             "Runtime, faster where the CPU has VNNI or AMX and slightly lossy, needs pip install "
                             "'fusionq[onnx]')")


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
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
    train.add_argument("--unlabeled", help="CSV of texts without labels (a text column; any label column is "
                                           "ignored) for one round of self-training (encoder-only classifiers; with "
                                           "--finetune the backbone is fine-tuned again on the pseudo-labels)")
    train.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    _add_encoder_options(train)
    _add_fusion_options(train)
    train.add_argument("--ensemble", type=int, metavar="N",
                       help="networks (seeds) averaged in the chosen classifier (default %d; 1: a single network, "
                            "the fastest fit)" % TrainingConfig().ensemble)
    train.add_argument("--llm", action="append",
                       help="LLM source fused with the encoder: local, api, hf:MODEL or openai:MODEL@URL; repeatable. "
                            "Training texts are scored through the cache (a second fit asks nothing new)")
    train.add_argument("--finetune", choices=list(values(FinetuneMethod)),
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
    classify.add_argument("--id-column", help="the input's id column, copied into the predictions "
                                               "(default: the column named id, when there is one)")
    classify.add_argument("--no-text", action="store_true", help="leave the text out of the predictions CSV "
                                                                  "(for big jobs)")
    classify.add_argument("--mode", default="fast", choices=list(values(Mode)),
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

    serve = sub.add_parser("serve", help="the HTTP API for other services (pip install 'fusionq[api]')")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; another needs FUSIONQ_API_KEYS)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.set_defaults(func=cmd_serve)
    return parser


