"""Development tools of study-embed: the project-local PostgreSQL cluster (`make db-up`) and the
loopback embedding server that the tests and the benchmarks run.  Importable from a checkout
(`make deps` installs it in editable mode); never shipped in the wheel, never on the listener's
runtime path."""
