"""``python -m ncli`` and the ``ncli`` script: Ctrl-C is handled from the first moment
(``ncli.interrupts``), before the command line's imports (typer, rich, numpy, torch) begin."""

from ncli import interrupts


def main() -> None:
    interrupts.install()
    from ncli.cli import main as run

    run()


if __name__ == "__main__":
    main()
