//! What the worker's test suites (`tests/api`, `tests/faults`) and the
//! benchmark harness share. A missing broker fails loudly; nothing is skipped.
