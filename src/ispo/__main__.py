"""``python -m ispo`` is the ``ispo`` command."""

from ispo.cli.main import main

if __name__ == "__main__":
    main()
