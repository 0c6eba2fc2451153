"""The ``tidings`` command-line tool."""
