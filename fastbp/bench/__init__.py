"""Benchmarks that compare fastbp with its CPU peers (``python -m fastbp.bench peers``)."""
