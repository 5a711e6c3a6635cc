"""``python -m ispo`` is the ``ispo`` command."""

from ispo.cli import main

if __name__ == "__main__":
    main()
