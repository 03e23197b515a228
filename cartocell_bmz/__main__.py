"""``python -m cartocell_bmz`` runs the command line."""

from cartocell_bmz.cli.app import main

main()
