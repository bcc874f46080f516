"""`python -m autoall.cli`."""

from autoall.cli._main import main

main()
