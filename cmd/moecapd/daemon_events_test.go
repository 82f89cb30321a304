package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
)

// sseEvent is one event of /v1/events as it came over the wire.
type sseEvent struct {
	id, typ string
	e       daemon.Event
}

// subscribe opens /v1/events on the daemon's unix socket; events arrive on the channel
// (closed when the stream ends) until ctx ends.
func (e *daemonEnv) subscribe(ctx context.Context) <-chan sseEvent {
	e.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://d/v1/events", nil)
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatalf("GET /v1/events: %v", err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		e.t.Fatalf("GET /v1/events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 1024)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var cur sseEvent
		var data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if data != "" {
					if err := json.Unmarshal([]byte(data), &cur.e); err == nil {
						ch <- cur
					}
				}
				cur, data = sseEvent{}, ""
			case strings.HasPrefix(line, "id: "):
				cur.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				cur.typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return ch
}

// TestDaemonEventsStream subscribes to /v1/events of a real daemon on its unix socket,
// submits a one-cell job through the CLI and checks the events arrive in order: the job
// queued, the cell running through its phases with the bench's request progress, the
// cell ok, the job done. Only generous deadlines, no timing claims.
func TestDaemonEventsStream(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	events := e.subscribe(ctx)

	m := killMatrix(t, "1", "2ms")
	r := e.cli("submit", "--matrix", m, "--only", `^qwen1_5\.`)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("submit: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	const cellID = "qwen1_5.1xH100.32-8.bs1.sim"
	var got []sseEvent
	var lastSeq uint64
	for done := false; !done; {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the events stream ended early; got %+v", got)
			}
			if ev.e.Seq <= lastSeq || ev.id == "" || ev.typ != ev.e.Type {
				t.Fatalf("event %+v after seq %d: want increasing seq, the id line and the type as the event name", ev, lastSeq)
			}
			lastSeq = ev.e.Seq
			got = append(got, ev)
			done = ev.e.Type == "job" && ev.e.Job == id && ev.e.State == daemon.JobDone
		case <-ctx.Done():
			t.Fatalf("no job-done event within the deadline; got %+v", got)
		}
	}
	// The order: job queued, cell running (preflight first), ..., a progress report of the
	// bench, cell ok, job done.
	step := 0
	var progress *daemon.Progress
	var phases []string
	for _, ev := range got {
		x := ev.e
		if x.Job != id {
			continue
		}
		switch {
		case step == 0 && x.Type == "job" && x.State == daemon.JobQueued:
			step = 1
		case step == 1 && x.Type == "cell" && x.Cell == cellID && x.State == daemon.CellRunning && x.Phase == "preflight":
			step = 2
		case step == 2 && x.Type == "cell" && x.State == daemon.CellRunning:
			phases = append(phases, x.Phase)
			if x.Progress != nil {
				progress = x.Progress
			}
		case step == 2 && x.Type == "cell" && x.State == daemon.CellOK:
			step = 3
		case step == 3 && x.Type == "job" && x.State == daemon.JobDone:
			step = 4
		case x.Type == "job" && x.State == daemon.JobRunning:
		default:
			t.Fatalf("event out of order at step %d: %+v (all: %+v)", step, x, got)
		}
	}
	if step != 4 {
		t.Fatalf("events reached step %d of 4: %+v", step, got)
	}
	if !strings.Contains(strings.Join(phases, ","), "bench") {
		t.Errorf("no bench phase among the running cell's events: %v", phases)
	}
	// The bench's last report: every request of the tiny task done.
	if progress == nil || progress.Total != 4 || progress.Done != 4 || progress.Failed != 0 {
		t.Errorf("bench progress %+v; want 4 of 4 requests done", progress)
	}
	// The cell's state keeps the last report.
	_, cs, err := e.client().Job(ctx, id)
	if err != nil || len(cs) != 1 || cs[0].Progress == nil || cs[0].Progress.Done != 4 {
		t.Errorf("job %s cells %+v (err %v); want the cell's progress kept", id, cs, err)
	}

	// The finished cell's report page, rendered for that cell and served from the store's
	// directory; nothing else is.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}}
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/cells/" + cellID + "/report/", 200, "<title>moecapd · " + cellID + "</title>"},
		{"/cells/" + cellID + "/report/cells.csv", 200, cellID},
		{"/cells/" + cellID + "/report/..%2f..%2fstate.db", 404, ""},
		{"/cells/..%2f.daemon/report/", 400, "not a cell id"},
		{"/cells/.daemon/report/", 400, "not a cell id"},
		{"/cells/dsv2_lite.1xH100.32-8.bs1.sim/report/", 404, "no finished cell"},
	} {
		resp, err := hc.Get("http://d" + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(b.String(), tc.want) {
			t.Errorf("GET %s: %d %.300s; want %d with %q", tc.path, resp.StatusCode, b.String(), tc.code, tc.want)
		}
	}
}
