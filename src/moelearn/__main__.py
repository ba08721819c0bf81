"""The command line's entry point (``moelearn`` and ``python -m moelearn``)."""

import sys


def run() -> int:
    """Import and run the command line; an interrupt while the modules load
    (before :func:`moelearn.cli.main`'s error boundary exists) is one line and
    exit status 130, as one during a command is."""
    try:
        from moelearn.cli import main
    except KeyboardInterrupt:
        print("moelearn: interrupted; no output written", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
