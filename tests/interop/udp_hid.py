"""CTAP-HID over UDP, per Keyward's transport contract: one datagram = one 64-byte report.

python-fido2 2.x talks to a HID device through a ``CtapHidConnection`` (read_packet and
write_packet of whole reports); this one sends and receives them as UDP datagrams, so the
library's own CTAPHID framing, channel allocation and keepalive handling are what get tested.
"""

from __future__ import annotations

import socket

from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

REPORT_SIZE = 64


class UdpCtapHidConnection(CtapHidConnection):
    def __init__(self, address: tuple[str, int], timeout: float = 10.0):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(address)
        # A lost reply must fail the test, not hang it.
        self.sock.settimeout(timeout)

    def write_packet(self, data: bytes) -> None:
        if len(data) != REPORT_SIZE:
            raise ValueError(f"a report is {REPORT_SIZE} bytes, not {len(data)}")
        self.sock.send(data)

    def read_packet(self) -> bytes:
        packet = self.sock.recv(REPORT_SIZE + 1)
        if len(packet) != REPORT_SIZE:
            raise OSError(f"received a {len(packet)}-byte datagram")
        return packet

    def close(self) -> None:
        self.sock.close()


def descriptor(address: tuple[str, int]) -> HidDescriptor:
    return HidDescriptor(
        path=f"udp:{address[0]}:{address[1]}",
        vid=0xFFFF,
        pid=0xFFFF,
        report_size_in=REPORT_SIZE,
        report_size_out=REPORT_SIZE,
        product_name="Keyward softkey",
        serial_number=None,
    )


def open_device(address: tuple[str, int], timeout: float = 10.0) -> CtapHidDevice:
    """Opens the softkey as python-fido2 would open a USB key (CTAPHID_INIT included)."""
    return CtapHidDevice(descriptor(address), UdpCtapHidConnection(address, timeout))
