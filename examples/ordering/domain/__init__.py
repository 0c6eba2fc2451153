"""The ordering domain: pure Python, using only tidings' public API."""
