"""Test machinery, kept out of the library's import path (as ``numpy.testing`` is): fault
injection for the crash-safety tests and benchmarks (:mod:`pdeaccel.testing.faults`). Nothing in
``pdeaccel`` imports it."""
