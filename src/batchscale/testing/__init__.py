"""Helpers for the test suite only (a noisy quadratic whose critical batch is known); no production module imports this package."""
