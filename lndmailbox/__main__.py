"""``python -m lndmailbox``: the daemon, same as the ``lndmailbox`` command."""

from lndmailbox.daemon import main

if __name__ == "__main__":
    raise SystemExit(main())
