"""What the tests share that is not a test: helpers and fixtures (registered as
pytest plugins in tests/conftest.py). No test module imports another test module."""
