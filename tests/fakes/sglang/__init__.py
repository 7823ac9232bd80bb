"""A stand-in for the `sglang` package in tests: ``python -m sglang.launch_server`` runs
:mod:`.launch_server`, which speaks SGLang's wire format (see that module). Never installed; the
tests put ``tests/fakes`` on the engine's PYTHONPATH."""
