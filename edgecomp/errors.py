"""One exception type for every user-facing failure.

The CLI prints it as a single line, ``error: <problem>. Fix: <fix>``, and exits non-zero, so every
message must name both what is wrong and what to do about it.
"""


class EdgecompError(Exception):
    def __init__(self, problem: str, fix: str):
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(f"{self.problem}. Fix: {self.fix}.")
