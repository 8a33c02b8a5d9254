"""A stand-in for hpcbridge.backend.Backend under poll.Submission, for pure tests of how a task resolves: nothing
runs, no log or result file can be read (an empty stderr tail, no results re-read by name)."""

from __future__ import annotations

import types


class FakeBackend:
    def __init__(self, site, scheduler):
        self.site = site
        self.scheduler = scheduler
        self.transport = types.SimpleNamespace(read_tail=lambda path, n: b"", read_files=lambda paths: {})
        self.poller = types.SimpleNamespace(lock=None)
        self.finals = []  # the jobs resolved, in order (Backend.note_final)

    def note_final(self, job):
        self.finals.append(job)
