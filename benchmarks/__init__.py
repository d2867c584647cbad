"""Performance benchmarks (``rlkl bench``): each module prints ratios against a baseline measured in the same run
and exposes ``main(argv) -> int``; speed is never asserted in tests."""
