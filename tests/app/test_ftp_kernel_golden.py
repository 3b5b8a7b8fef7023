"""FTP through the director compared with kernel 6.1 (the ``ftp`` golden).

The recorded run has a passive and an active session through a persistent
FTP service and the same through a non-persistent one, with ip_vs_ftp
loaded.  Replaying the client's and the real server's frames through the
core with the FTP helper registered must give the kernel's frames: the 227
reply rewritten to the VIP (a longer line), every later segment's sequence
and acknowledgement numbers shifted by the same delta, and the data
connections (passive: the client's SYN to the VIP port; active: the
server's SYN from port 20) rewritten as the kernel did.
"""

import ipaddress

import pytest

from ipvs.app import ftp
from ipvs.core import Director
from ipvs.driver import replay
from ipvs_harness.capture import Split, golden_dir, restore_rules

INNER = ipaddress.ip_network("172.16.0.0/24")


@pytest.fixture(scope="module")
def run():
    g = golden_dir("ftp")
    if g is None:
        pytest.skip("ftp golden not recorded")
    d = Director()
    vips = restore_rules(d, g)
    ftp.register(d.ipvs)
    sp = Split(g, vips)
    out = [f for _t, f in replay.replay(d, sp.input)]
    return sp, out


def _payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 15) * 4
    l4 = 14 + ihl
    return frame[l4 + ((frame[l4 + 12] >> 4) * 4) :]


def test_every_frame_equals_the_kernels(run):
    sp, out = run
    to_rs = [f[14:] for f in out if ipaddress.ip_address(f[30:34]) in INNER]
    to_cli = [f[14:] for f in out if ipaddress.ip_address(f[30:34]) not in INNER]
    assert len(to_rs) == len(sp.to_rs) and len(to_cli) == len(sp.to_cli)
    assert to_rs == [r.data[14:] for r in sp.to_rs]
    assert to_cli == [r.data[14:] for r in sp.to_cli]


def test_the_227_replies_were_rewritten_to_the_vips(run):
    sp, out = run
    replies = [_payload(f) for f in out if _payload(f).startswith(b"227 ")]
    assert len(replies) == 2
    assert any(b"(203,0,113,5," in p for p in replies) and any(b"(203,0,113,6," in p for p in replies)
