"""`python -m tasks.install_mnist [--dir DIR] [--quiet]`: put MNIST in place (idempotent).

`make install` runs it; see `tasks.datasets.install_mnist` for where the data comes from.
"""

from __future__ import annotations

import argparse
import sys

from tasks.datasets import MNIST_ENV, DatasetError, install_mnist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.install_mnist",
                                     description="put MNIST's four IDX files in place")
    parser.add_argument("--dir", default=None,
                        help=f"target folder (default: ${MNIST_ENV} or <env>/share/sgsweep/mnist)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        install_mnist(args.dir, quiet=args.quiet)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
