package cell

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// What the teardown finds is reported also after an earlier failure: a bench that failed
// keeps its failure (and exit code), and the port another process still holds is in the
// manifest's list, named (PID, comm), logged, and in the failure's error.
func TestTeardownProblemsAfterEarlierFailure(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	proc, err := launcher.Start(launcher.Spec{Argv: []string{"sleep", "3600"}, Env: os.Environ(), LogPath: filepath.Join(dir, "server.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Stop(time.Second) })
	core, logs := observer.New(zapcore.InfoLevel)
	c := &Config{Grace: time.Second}
	r := &runner{
		c:   c,
		p:   &Plan{ID: "c", Dir: dir, Spec: launcher.ServerSpec{Host: "127.0.0.1", Port: port}},
		m:   &Manifest{Status: StatusRunning},
		log: zap.New(core), srv: &launchedServer{Process: proc, logw: launcher.WatchLog(filepath.Join(dir, "server.log"), time.Hour)},
		stopRecord: func() {}, sm_: c.seams.withDefaults(c),
	}
	r.fail(PhaseBench, exitcode.FailBadResult, "all 4 requests failed")
	r.teardown()

	f := r.m.Failure
	if f.Phase != PhaseBench || r.m.Outcome() != exitcode.Bench {
		t.Errorf("failure = %s/%s (exit %d), want the bench's (5)", f.Phase, f.Kind, r.m.Outcome())
	}
	holder := fmt.Sprintf("PID %d (", os.Getpid())
	if len(f.Teardown) != 1 || !strings.Contains(f.Teardown[0], "port "+strconv.Itoa(port)+" still accepts") || !strings.Contains(f.Teardown[0], holder) {
		t.Fatalf("teardown problems = %q, want the port named with its holder %q", f.Teardown, holder)
	}
	if e := f.Err().Error(); !strings.Contains(e, "all 4 requests failed") || !strings.Contains(e, "teardown: port") {
		t.Errorf("Err() = %q, want both the bench failure and the teardown problem", e)
	}
	if n := logs.FilterMessage("teardown left something behind").Len(); n != 1 {
		t.Errorf("%d teardown problem log lines, want 1", n)
	}
}

// lastLogLine reads only the log's tail: the last non-empty line of a log far larger than
// the tail, found without reading the whole file.
func TestLastLogLineTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "client.log")
	b := bytes.Repeat([]byte("progress line\n"), 20000)
	b = append(b, "Traceback (most recent call last):\nValueError: no\n\n\r\n"...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := lastLogLine(p); got != "ValueError: no" {
		t.Errorf("lastLogLine = %q, want the traceback's last line", got)
	}
	if got := lastLogLine(filepath.Join(t.TempDir(), "none.log")); got != "no client.log" {
		t.Errorf("missing log: %q", got)
	}
}
