"""The shared library by which threadpoolctl finds fastbp's thread pool.

threadpoolctl lists thread pools by the shared libraries loaded in the process
and matches them by file name; fastbp's thread count lives in Python
(``fastbp._backend``), so this empty compiled module is what its controller
matches (see ``fastbp/_threadpool.py``). Its name starts with "_fastbp" so that
no other library's file can match.
"""
