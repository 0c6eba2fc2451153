"""The pure-Python heart of tidings: events, aggregates, dispatch, the unit of work. No I/O."""
