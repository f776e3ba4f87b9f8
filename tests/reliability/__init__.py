"""The fault battery: sockserve under load, faults and hostile clients, in every mode.

Each case (one ``test_*.py`` module) states its figure and asserts that nothing was
lost; a failure names what was lost and where (mode, client, request). ``pytest
tests/reliability`` runs the CI-sized form (every case in every mode, small counts; the
soak in one mode, briefly); ``--soak`` runs the full sizes and the RSS soak in every
mode (``python3 tools/test.py --soak`` passes it on too). ``python
tools/reliability_report.py`` runs the battery and prints one table, case x mode, with
each figure (``docs/reliability.md`` keeps the last one).

Where things live: ``battery.py`` holds the modes, the checksummed protocol, the loss
ledger and the resource counts every case shares; ``serve_process.py`` is the server a
case runs in its own process (lowered descriptor limit, signal storms, SIGKILL, RSS);
``figures.py`` records each case's figure for the report; ``bad_network.py`` makes two
network namespaces and a delaying, lossy, reordering wire between them.
"""
