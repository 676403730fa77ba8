"""`make demo`: the whole pipeline on this machine (run.py), its sample bank (bank.py,
bank.yaml), its real embedding server (server.py) and its web UI (ui.py)."""
