"""Launchable scripts in the reference project's forms (``python -m ispo.scripts.run_ddp``)."""
