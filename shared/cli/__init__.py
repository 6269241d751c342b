"""The `fusionq` command line: ``parser`` declares it, ``commands`` does it, ``outputs`` writes its files."""

from __future__ import annotations

import logging
import sys

from shared.cli.parser import build_parser
from shared.errors import FusionqError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Model-loading chatter would bury the progress bars.
    for noisy in ("transformers", "huggingface_hub", "kombu.connection"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    settings = None
    try:
        from shared.settings import get_settings

        settings = get_settings()
        return args.func(args, settings)
    except FusionqError as exc:
        print(f"fusionq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _unreachable_service(exc, settings)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"fusionq {args.command}: error: {message}", file=sys.stderr)
        return 2


def _unreachable_service(exc: Exception, settings) -> str | None:
    """The message for a database or broker that went away mid-command (the stages raise these raw,
    because workers retry them); None for anything else."""
    import sqlalchemy as sa

    if settings is None:
        return None
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        from shared.db.engine import database_unreachable

        return database_unreachable(settings.effective_database_url, exc)
    from workers.dispatch import broker_failure

    return broker_failure(settings.effective_broker_url, exc)


if __name__ == "__main__":
    sys.exit(main())
