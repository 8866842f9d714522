"""Test-session settings shared by every test module."""

from hypothesis import settings

# Reproducible property tests in CI: the same examples on every run, no per-example deadline
# (the reference processor pads to 10 080 patches at budget 1120; timing is not what these tests check).
settings.register_profile("default", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("default")
