"""After the whole protocol (kills, a network cut, a rotation): no token of the fleet in any
journal or process list of the nine hosts. Reported with step 6 (security)."""

from __future__ import annotations

import lab
import pytest
from s2_bridge.contract.tokens import TOKEN_RE


@pytest.mark.step(6, "security")
def test_6f_no_token_in_any_journal_or_process_list_after_the_protocol(report, workers):
    tokens = set(TOKEN_RE.findall(lab.read_file(lab.ORCHESTRATOR, lab.ADMIN_TOKEN)))
    for worker in workers:
        tokens |= set(TOKEN_RE.findall(lab.read_file(lab.ORCHESTRATOR, worker.orchestrator_copy)))
    tokens |= set(TOKEN_RE.findall(lab.read_file(lab.ORCHESTRATOR, lab.LEAD_CREDENTIALS)))
    # the admin's, the lead's, and each worker's pair
    assert len(tokens) == 2 + 2 * len(workers), f"{len(tokens)} distinct live tokens on the orchestrator"
    scanned = 0
    for host in [lab.ORCHESTRATOR, *(w.host for w in workers)]:
        texts = [
            lab.check_in(host, "ps", "-eo", "args", "--no-headers"),
            lab.check_in(host, "journalctl", "--no-pager", "-o", "cat"),
        ]
        scanned += sum(len(t) for t in texts)
        for text in texts:
            leaked = [t[:8] for t in tokens if t in text]
            assert not leaked, f"{host}: tokens starting {leaked} in a journal or process list"
            assert not TOKEN_RE.search(text), f"{host}: a token-shaped string in a journal or process list"
    report.figure(
        "6",
        f"after the protocol: none of the {len(tokens)} live tokens, nor any token-shaped string, in the "
        f"journals and process lists of {len(workers) + 1} hosts ({scanned / 1e6:.1f} MB scanned)",
    )
