"""The benchmarks' own code: experiments, peer preparation and the targets the result tables are judged by.

Only the scripts in benchmarks/ and their tests (benchmarks/tests) use it; the wheel holds none of it. A script run
as ``python benchmarks/X.py`` finds this package because Python puts the script's folder (benchmarks/) first on
``sys.path``; benchmarks/tests/conftest.py does the same for the tests.
"""
