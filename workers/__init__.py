"""Pure stage logic: one module per stage, each with ``NAME`` and ``async def process(batch, ctx)``."""
