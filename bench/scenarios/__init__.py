"""One module per benchmark scenario; each has ``async def run(bench) -> None`` adding rows to ``bench.results``."""
