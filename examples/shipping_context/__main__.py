"""``python -m shipping_context init``: create the shipping context's tables (idempotent)."""

from __future__ import annotations

import asyncio
import os
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from shipping_context.service import create_tables


def main(argv: list[str]) -> int:
    if argv != ["init"]:
        print("usage: python -m shipping_context init   (reads SHIPPING_DB_URL)", file=sys.stderr)
        return 2
    url = os.environ.get("SHIPPING_DB_URL")
    if not url:
        print("SHIPPING_DB_URL is not set", file=sys.stderr)
        return 2

    async def init() -> None:
        engine = create_async_engine(url)
        try:
            await create_tables(engine)
        finally:
            await engine.dispose()

    asyncio.run(init())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
