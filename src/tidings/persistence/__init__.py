"""Stores: one module per technology (memory, sqlite, postgres), behind small protocols."""
