"""Benchmarks: fastbp against its CPU peers (``python -m fastbp.bench peers``, ``rnn``)
and its start-up time (``python -m fastbp.bench start``)."""
