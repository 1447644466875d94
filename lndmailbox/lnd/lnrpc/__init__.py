"""Python stubs generated from protos/ by scripts/gen_protos.py (``make protos``).

Do not edit: change protos/*.proto and regenerate. Only lndmailbox.lnd imports these.
"""
