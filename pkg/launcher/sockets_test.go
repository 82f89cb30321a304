package launcher

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// readyHandler answers what WaitReady probes, for model "m".
func readyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("/get_model_info", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"data":[{"id":"m"}]}`)
	})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"choices":[{"text":"x"}]}`)
	})
	return mux
}

// serveReady is the "serve" child: a ready server on 127.0.0.1:port.
func serveReady(port string) {
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("listening")
	http.Serve(l, readyHandler())
}

// Readiness proves the server answering is the spawned one: a spawned server that never
// listened, while another process (this test) answers on its port, is a launch failure
// naming that process; the spawned server listening itself is ready.
func TestWaitReadyOwnsPort(t *testing.T) {
	port, _ := FreePort("127.0.0.1")
	spec := ReadySpec{BaseURL: "http://127.0.0.1:" + strconv.Itoa(port), Model: "m", Flavor: BackendSGLang,
		Interval: 20 * time.Millisecond, Stall: time.Minute, Hard: time.Minute, Port: port}

	t.Run("another process answers", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: readyHandler()}
		go srv.Serve(l)
		defer srv.Close()
		p, err := Start(childSpec(t, "sleep"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop(time.Second) })
		err = WaitReady(t.Context(), p, nil, spec)
		var re *ReadyError
		if !errors.As(err, &re) || re.Kind != exitcode.FailPortInUse {
			t.Fatalf("err = %v, want a port_in_use ReadyError", err)
		}
		want := fmt.Sprintf("PID %d (%s)", os.Getpid(), comm(os.Getpid()))
		if !strings.Contains(re.Msg, want) || !strings.Contains(re.Msg, strconv.Itoa(p.PID())) {
			t.Errorf("message %q does not name the holder %q and the server PID %d", re.Msg, want, p.PID())
		}
		if d := DescribeHolders(port); !strings.Contains(d, want) {
			t.Errorf("DescribeHolders = %q, want %q in it", d, want)
		}
	})

	t.Run("the spawned server answers", func(t *testing.T) {
		p, err := Start(childSpec(t, "serve", "LAUNCHER_TEST_PORT="+strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop(time.Second) })
		if err := WaitReady(t.Context(), p, nil, spec); err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
		hs, listening := PortListeners(port)
		if !listening || len(hs) != 1 || hs[0].PID != p.PID() {
			t.Errorf("PortListeners = %v %v, want the server PID %d", hs, listening, p.PID())
		}
	})
}

// The /proc/net/tcp parser takes LISTEN rows of the port only, IPv4 and IPv6, and skips
// what it cannot read.
func TestParseListen(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:7530 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:7530 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 00000000000000000000000000000000:7530 00000000000000000000000000000000:0000 0A 0 0 0 0 0 333 1
   3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1
   4: garbage
   5: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 555 1
`
	got := map[uint64]bool{}
	parseListen(strings.NewReader(table), 30000, got)
	if len(got) != 2 || !got[111] || !got[333] {
		t.Errorf("inodes = %v, want 111 and 333", got)
	}
}
