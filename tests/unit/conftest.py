"""Engine tests run on one CPU thread."""
from tests.support.one_thread import single_thread  # noqa: F401  (autouse fixture)
