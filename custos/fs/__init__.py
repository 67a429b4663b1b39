"""Local files: the safe directory walk, parallel SHA-256, and the one writer of private files."""
