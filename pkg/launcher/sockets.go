package launcher

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Which process listens on a port, from /proc: /proc/net/tcp and tcp6 give the inode of each
// listening socket, /proc/<pid>/fd links name the socket ("socket:[inode]") in every process
// that holds it. Readiness uses it to prove that the server answering on the port is the
// one it spawned, and preflight and teardown to name what else holds a port.

// tcpListen is the TCP state LISTEN in /proc/net/tcp.
const tcpListen = "0A"

// maxNetLines bounds how much of a /proc/net table is read (a node with millions of
// sockets is not one to benchmark on; the scan must not run away either).
const maxNetLines = 1 << 20

// listenInodes returns the inodes of the sockets listening on port (any address, IPv4 and
// IPv6).
func listenInodes(port int) map[uint64]bool {
	out := map[uint64]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		parseListen(fh, port, out)
		fh.Close()
	}
	return out
}

// parseListen adds to out the inodes of the LISTEN rows of one /proc/net/tcp{,6} table
// whose local port is port. Rows it cannot read are skipped.
func parseListen(r io.Reader, port int, out map[uint64]bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), 4096)
	for n := 0; sc.Scan() && n < maxNetLines; n++ {
		f := strings.Fields(sc.Text())
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
		if len(f) < 10 || f[3] != tcpListen {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err != nil || int(p) != port {
			continue
		}
		ino, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil || ino == 0 {
			continue
		}
		out[ino] = true
	}
}

// Holder is a process that holds a listening socket.
type Holder struct {
	PID  int
	Comm string
}

func (h Holder) String() string { return fmt.Sprintf("PID %d (%s)", h.PID, h.Comm) }

// PortListeners reports who listens on port: the processes that hold one of its listening
// sockets (sorted by PID), and whether a listening socket exists at all. A listening socket
// with no holder found belongs to a process whose fds this user cannot read (another
// user's, or in another PID namespace).
func PortListeners(port int) (holders []Holder, listening bool) {
	inodes := listenInodes(port)
	if len(inodes) == 0 {
		return nil, false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, true
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if holdsSocket(pid, inodes) {
			holders = append(holders, Holder{PID: pid, Comm: comm(pid)})
		}
	}
	sort.Slice(holders, func(i, j int) bool { return holders[i].PID < holders[j].PID })
	return holders, true
}

// holdsSocket reports whether one of pid's fds is a socket whose inode is in inodes.
func holdsSocket(pid int, inodes map[uint64]bool) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") || !strings.HasSuffix(l, "]") {
			continue
		}
		ino, err := strconv.ParseUint(l[len("socket:["):len(l)-1], 10, 64)
		if err == nil && inodes[ino] {
			return true
		}
	}
	return false
}

// comm is a process's command name (/proc/<pid>/comm), "?" when unreadable.
func comm(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// DescribeHolders names the processes holding port for a message: "PID 123 (python3),
// PID 456 (nginx)", or what is known when they cannot be named.
func DescribeHolders(port int) string {
	hs, listening := PortListeners(port)
	switch {
	case !listening:
		return "no process listens on it"
	case len(hs) == 0:
		return "a process this user cannot see (another user's) listens on it"
	}
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.String()
	}
	return "held by " + strings.Join(parts, ", ")
}

// foreignListeners returns the holders of port that are not among members, and whether
// anything listens on it. A listening socket with no visible holder counts as foreign
// (Holder PID 0).
func foreignListeners(port int, members []int) ([]Holder, bool) {
	hs, listening := PortListeners(port)
	if !listening {
		return nil, false
	}
	own := map[int]bool{}
	for _, m := range members {
		own[m] = true
	}
	var foreign []Holder
	for _, h := range hs {
		if !own[h.PID] {
			foreign = append(foreign, h)
		}
	}
	if len(hs) == 0 {
		foreign = []Holder{{PID: 0, Comm: "a process of another user"}}
	}
	return foreign, true
}
