"""Root conftest: puts the repository root on sys.path so that benches can
import the pure-Python reference of the core from `tests.core.reference`."""
