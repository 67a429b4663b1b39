"""A short seeded run of bench/fuzz_decoders.py per decoder, and the crashers it found, kept.

The full run (``python bench/fuzz_decoders.py``, 10^6 inputs) is a benchmark; this one is a
few seconds in CI. A decoder may raise only the CustosError subclasses it documents; see the
bench's docstring for the targets and the crash rule.
"""

from __future__ import annotations

import pytest

from bench.fuzz_decoders import SEP, Target, fuzz, main, run_one, targets

TARGETS = targets()

# Inputs the fuzzer found that crashed a decoder once, and their siblings: a lone surrogate
# that cannot be re-encoded (or was accepted into a signature nothing can encode), nesting
# that exhausts the JSON parser's stack.
CRASHERS = [
    ("canonical", b'"\\ud800"'),
    ("canonical", b'{"\\udc00":1}'),
    ("canonical", b"[" * 5000),
    ("manifest", b'{"digest":"sha256","files":[{"path":"a\\ud83d","sha256":"' + b"0" * 64 + b'","size":1}],'
                 b'"version":1}'),
    ("manifest", b'{"digest":"sha256","files":' + b"[" * 5000),
    ("signatures", b"[" * 5000),
    ("signatures", b'[{"key_id":"\\ud800","sig":"00"}]'),
    ("signatures", b'[{"key_id":"ab","sig":"-----BEGIN SSH SIGNATURE-----\\n\\udfff"}]'),
    ("verify_order", b"{}" + SEP + b"[" * 5000),
]


@pytest.mark.parametrize(("name", "data"), CRASHERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CRASHERS)])
def test_known_crashers_are_refused_cleanly(name: str, data: bytes) -> None:
    assert run_one(TARGETS[name], data) is None


@pytest.mark.parametrize("name", list(TARGETS))
def test_short_seeded_run_finds_no_crash(name: str) -> None:
    result = fuzz(TARGETS[name], 1000, seed=9)
    assert result.inputs == 1000 and result.edges > 0
    assert result.crashes == [], "\n".join(f"{c.error} at {c.where}: {c.data[:200].hex()}" for c in result.crashes)


def test_the_harness_reports_an_undocumented_exception_with_its_input() -> None:
    """A planted bug (KeyError on one byte) is found, and named with the input that caused it."""
    def decoder(data: bytes) -> None:
        if b"\x7f" in data:
            raise KeyError("planted")
        TARGETS["canonical"].run(data)

    planted = Target("planted", decoder, TARGETS["canonical"].allowed, TARGETS["canonical"].seeds)
    crashes = fuzz(planted, 2000, seed=1).crashes
    assert [c.error for c in crashes] == ["KeyError: 'planted'"] and b"\x7f" in crashes[0].data


def test_the_command_prints_each_target_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inputs", "300", "--seed", "3", "--engine", "builtin", "--targets", "manifest,chunk_header"]) == 0
    out = capsys.readouterr().out
    assert "engine builtin, seed 3, 300 inputs over 2 targets" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("manifest", "chunk_header", "all"))]
    assert [r[0] for r in rows] == ["manifest", "chunk_header", "all"] and rows[-1][-1] == "0"
