"""``python -m driftline.streams`` runs the ``driftline`` command."""

from driftline.streams.cli.main import main

main()
