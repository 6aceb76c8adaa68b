"""Shared fixtures. Emulator fixtures live in emulator_fixtures.py; database ones in db_fixtures.py."""

pytest_plugins = ["emulator_fixtures", "db_fixtures"]
