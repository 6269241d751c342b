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
