"""Ansible callback for the tests: every task's result, by task name, as JSON in $MOUNTPLAN_TEST_RESULTS.

Enabled only by tests/ansible/_ansible.py (ANSIBLE_CALLBACKS_ENABLED); it runs in
ansible-playbook's own process, so reading results costs no extra task.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible ships no type information
    """Collects each task's result (the last one wins for a repeated name) and writes them when the play ends."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: dict[str, Any] = {}

    def _record(self, result: Any, *, failed: bool) -> None:
        # ansible-core 2.19 names them result/task; older versions only _result/_task.
        data = getattr(result, "result", None)
        task = getattr(result, "task", None)
        recorded = dict(data if data is not None else result._result)
        recorded["failed"] = failed  # callbacks get results without it: the hook says
        self.results[(task or result._task).get_name()] = recorded

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result, failed=False)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, failed=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        with open(os.environ["MOUNTPLAN_TEST_RESULTS"], "w", encoding="utf-8") as f:
            json.dump(self.results, f, default=str)
