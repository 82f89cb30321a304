package launcher

import (
	"net"
	"strconv"
	"testing"
)

// TestPortClosedSelfConnect: a port with a listener is open; once closed it is closed; and a
// dial the kernel joined to itself (source port = the port, nothing listening: what Linux
// does now and then for a port of the ephemeral range) is closed too, not "still accepts
// connections" with nobody holding it.
func TestPortClosedSelfConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if PortClosed("127.0.0.1", port) {
		t.Error("a port with a listener reads closed")
	}
	l.Close()
	if !PortClosed("127.0.0.1", port) {
		t.Error("a port nobody listens on reads open")
	}
	// Force the self-connect: dial the port from the port itself.
	self := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: port}}
	if c, err := self.Dial("tcp", addr); err != nil {
		t.Skipf("this kernel refuses a self-connect (%v): nothing to check", err)
	} else {
		c.Close()
	}
	if !portClosed(addr, &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: port}}) {
		t.Error("a socket joined to itself reads as a listener on the port")
	}
}
