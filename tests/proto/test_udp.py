"""ipvs/proto/udp.py: one state named UDP with a 300 s timeout."""

from ipvs.conn import Connection, ConnTable
from ipvs.ip_vs import IP_VS_CTPL_S_ASSURED, IP_VS_CTPL_S_NONE, IP_VS_DIR_INPUT, IP_VS_DIR_OUTPUT
from ipvs.proto import make_proto_data, state_name
from ipvs.proto import udp as U

HZ = 250


def test_single_state_and_timeout():
    pd = U.init_netns(HZ)
    assert pd.state_names == ("UDP",)
    assert pd.timeout_table == [300 * HZ]
    cp = Connection(2, 17, b"\1\2\3\4", 53, b"\5\6\7\x08", 53, b"\x09\x0a\x0b\x0c", 53, timeout=3 * HZ)
    U.state_transition(cp, pd, IP_VS_DIR_INPUT)
    assert cp.timeout == 300 * HZ
    assert state_name(cp, pd) == "UDP"


def test_a_reply_assures_the_template_a_request_does_not():
    """udp_state_transition calls ip_vs_control_assure_ct for IP_VS_DIR_OUTPUT only."""
    pd = U.init_netns(HZ)
    ct = Connection(2, 17, b"\1\2\3\0", 0, b"\5\6\7\x08", 53, b"\x09\x0a\x0b\x0c", 53, flags=0x1000)
    cp = Connection(2, 17, b"\1\2\3\4", 53, b"\5\6\7\x08", 53, b"\x09\x0a\x0b\x0c", 53)
    ConnTable.control_add(cp, ct)
    U.state_transition(cp, pd, IP_VS_DIR_INPUT)
    assert ct.state == IP_VS_CTPL_S_NONE
    U.state_transition(cp, pd, IP_VS_DIR_OUTPUT)
    assert ct.state == IP_VS_CTPL_S_ASSURED


def test_timeout_table_is_per_instance():
    a, b = make_proto_data(HZ), make_proto_data(HZ)
    a[17].set_timeout("UDP", 10)
    assert a[17].timeout_seconds("UDP") == 10
    assert b[17].timeout_seconds("UDP") == 300
