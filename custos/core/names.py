"""The shapes of names and ids every room checks: model names and 64-hex SHA-256 ids."""

from __future__ import annotations

import re

# Lowercase, starts with a letter or digit, at most 63 characters: safe in a path,
# a URL, a Store key and a Transit key name.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
