"""One module per scenario; each ``async def run(bench, ...)`` puts what it measured in ``bench.results``."""
