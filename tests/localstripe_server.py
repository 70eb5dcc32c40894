"""Run localstripe (the stateful fake Stripe server from PyPI) for the tests:
`python -m tests.localstripe_server --port N`.

localstripe writes its whole state to /tmp/localstripe.pickle after every change, a path shared
by every run on the machine; the tests start it from scratch and keep its state in memory only.
"""

from localstripe import resources, server


def _in_memory_only(self) -> None:
    return None


if __name__ == "__main__":
    resources.Store.dump_to_disk = _in_memory_only
    import sys

    sys.argv.append("--from-scratch")
    server.start()
