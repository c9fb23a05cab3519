"""Loaded by a child `python -m maml_en_llm ...` whose PYTHONPATH starts here (tests/test_faults.py), so a real
kill -9 can land at a known point of a real run. Does nothing unless the variables below are set.

MAML_TEST_COUNT="module:function,..."   log each call of these functions, one line each, to MAML_TEST_LOG
MAML_TEST_PAUSE="module:function:N"     at the N-th call, touch MAML_TEST_MARKER and sleep until killed
"""

import importlib
import os
import time


def _wrap(spec: str, pause_at: int | None) -> None:
    module_name, function_name = spec.split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, function_name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if os.environ.get("MAML_TEST_LOG"):
            with open(os.environ["MAML_TEST_LOG"], "a") as log:
                log.write(f"{spec}\n")
        if calls[0] == pause_at:
            open(os.environ["MAML_TEST_MARKER"], "w").close()
            time.sleep(3600)  # the test kills us here
        return real(*args, **kwargs)

    setattr(module, function_name, wrapper)


_pause = os.environ.get("MAML_TEST_PAUSE", "")
_pause_spec, _, _pause_at = _pause.rpartition(":")
_specs = [s for s in os.environ.get("MAML_TEST_COUNT", "").split(",") if s]
for _spec in dict.fromkeys(_specs + ([_pause_spec] if _pause_spec else [])):
    _wrap(_spec, int(_pause_at) if _spec == _pause_spec else None)
