"""`make bench`: the project's own benchmarks. Each module measures one budget of DESIGN.md or
an issue and prints a table; `python -m aibaas.bench --help` lists them."""
