"""Command implementations of the ``lensml`` CLI, one module per pipeline.

:mod:`lensml.cli` builds the command tree ``lensml <verb> <pipeline>`` (``train``,
``evaluate`` and ``predict`` each have one subcommand per pipeline: ``generic``, ``clusters``,
...) from the typer functions defined here. The modules only define functions; every heavy
import (torch, astropy, Lightning) happens inside a command's body, so ``lensml --help`` stays
fast. To add a pipeline's commands, write ``lensml/commands/<pipeline>.py`` with ``train``,
``evaluate`` and ``predict`` functions and list the module in :data:`lensml.cli.PIPELINES`.
"""
