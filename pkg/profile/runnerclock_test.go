package profile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPhaseClock writes a runner's client.log the way the runner does (tqdm redrawing with
// \r, prints arriving in pieces) and checks that the request phase is timed from the
// "Sending" line to the stop-recording line, with the hooks called once each. The pauses
// before and after the phase (300 ms) are twice the tolerance (150 ms, for a watcher
// starved on a busy machine), so timing from the file's start or to the second dataset
// still fails.
func TestPhaseClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var started, ended int
	c := WatchRunnerLog(path, 2*time.Millisecond, func() { started++ }, func() { ended++ })
	write := func(s string) {
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write("Using backend: sglang\nFixed-length mode detected: enabling ignore_eos\n")
	time.Sleep(300 * time.Millisecond)
	write("Started expert distribution recording on server\nSend")
	time.Sleep(10 * time.Millisecond)
	write("ing 16 requests to http://127.0.0.1:30000/v1/completions\n")
	t0 := time.Now()
	time.Sleep(100 * time.Millisecond)
	write("Processing requests:  50%|#####     | 8/16\rProcessing requests: 100%|##########| 16/16\r")
	time.Sleep(100 * time.Millisecond)
	write("\nStopped expert distribution recording on server\n")
	want := time.Since(t0)
	time.Sleep(300 * time.Millisecond)
	write("Sending 3 requests to nowhere\nStopped batch recording on server\n") // a second dataset: not counted
	got := c.Stop()
	if tol := 150 * time.Millisecond; got < want-tol || got > want+tol {
		t.Errorf("request phase %v, want about %v", got, want)
	}
	if started != 1 || ended != 1 {
		t.Errorf("hooks called %d/%d times, want 1/1", started, ended)
	}
}

func TestPhaseClockWithoutMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client.log")
	os.WriteFile(path, []byte("Traceback (most recent call last):\nValueError: no\n"), 0o644)
	c := WatchRunnerLog(path, time.Millisecond, nil, nil)
	time.Sleep(10 * time.Millisecond)
	if got := c.Stop(); got != 0 {
		t.Errorf("request phase %v without markers, want 0", got)
	}
}

// A runner that prints without newlines (garbage, a binary dump) does not make the clock
// hold its whole output: the unfinished line keeps at most its head; markers after it still
// count.
func TestPhaseClockEndlessLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client.log")
	junk := bytes.Repeat([]byte("x"), 4<<20)
	var b bytes.Buffer
	b.WriteString("Sending 4 requests to http://x\n")
	for range 8 {
		b.Write(junk)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &PhaseClock{path: path}
	c.poll()
	if len(c.partial) > maxPartialLine {
		t.Fatalf("partial line of %d bytes kept, want at most %d", len(c.partial), maxPartialLine)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\nStopped batch recording\n")
	f.Close()
	for range 4 { // 16 MiB a poll
		c.poll()
		if len(c.partial) > maxPartialLine {
			t.Fatalf("partial line of %d bytes kept, want at most %d", len(c.partial), maxPartialLine)
		}
	}
	if c.start.IsZero() || c.end.IsZero() || len(c.partial) != 0 {
		t.Errorf("start %v end %v partial %d: the markers around the endless line were not both seen", c.start, c.end, len(c.partial))
	}
}
