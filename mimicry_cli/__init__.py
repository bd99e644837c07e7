"""The ``mimicry`` console script: the composition root of the project.

The core library (:mod:`mimicry`) imports none of the applications; ``training``, ``serving`` and ``audit``
build on it; this package is the only one that wires them together (the import-linter contracts in
pyproject.toml check both). :mod:`mimicry_cli.main` holds the Typer app, :mod:`mimicry_cli.commands` its
sub-commands, :mod:`mimicry_cli.stack` the local-stack process supervisor behind ``mimicry stack``.

Start-up stays light: ``mimicry --help`` imports no torch, BentoML, captum or ONNX Runtime; every command
imports what it drives when it runs.
"""
