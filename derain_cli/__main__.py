"""``python -m derain_cli``: the ``derain`` command (torchrun launches it this way)."""

from derain_cli.cli import main

if __name__ == "__main__":
    main()
