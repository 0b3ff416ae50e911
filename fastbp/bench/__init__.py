"""Benchmarks: fastbp against its CPU peers (``python -m fastbp.bench peers``, ``rnn``) and start-up time (``start``)."""
