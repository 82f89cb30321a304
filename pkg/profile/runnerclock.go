package profile

import (
	"bytes"
	"io"
	"os"
	"sync"
	"time"
)

// The runner prints one line right before it sends its first request ("Sending N requests
// to URL") and, after the last reply, the outcome of its stop-recording call. moecapd times
// the request phase between the two as they appear in client.log (the runner is started
// with PYTHONUNBUFFERED=1 so its prints reach the file at once).
var (
	runnerStartMarker = []byte("Sending ")
	runnerEndMarkers  = [][]byte{[]byte("Stopped expert distribution recording"), []byte("Stopped batch recording"), []byte("Warning: Could not stop recording")}
)

// maxPartialLine bounds the unfinished last line PhaseClock keeps between polls: the
// markers are short lines.
const maxPartialLine = 64 << 10

// PhaseClock watches a runner's log file and timestamps its request-phase markers.
type PhaseClock struct {
	path     string
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	onStart, onEnd func()

	mu         sync.Mutex
	start, end time.Time
	off        int64
	partial    []byte
}

// WatchRunnerLog starts watching path (which may not exist yet) every interval. onStart
// and onEnd (either may be nil) are called when the markers appear.
func WatchRunnerLog(path string, interval time.Duration, onStart, onEnd func()) *PhaseClock {
	c := &PhaseClock{path: path, interval: interval, stop: make(chan struct{}), done: make(chan struct{}), onStart: onStart, onEnd: onEnd}
	go c.loop()
	return c
}

func (c *PhaseClock) loop() {
	defer close(c.done)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.poll()
		select {
		case <-c.stop:
			c.poll()
			return
		case <-t.C:
		}
	}
}

func (c *PhaseClock) poll() {
	f, err := os.Open(c.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(c.off, io.SeekStart); err != nil {
		return
	}
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil || len(b) == 0 {
		return
	}
	now := time.Now()
	c.off += int64(len(b))
	data := append(c.partial, b...)
	// tqdm redraws with \r: split on both line ends.
	last := bytes.LastIndexAny(data, "\r\n")
	if last < 0 {
		c.partial = append(c.partial[:0], data[:min(len(data), maxPartialLine)]...)
		return
	}
	lines, rest := data[:last+1], data[last+1:]
	// A line without end (a runner printing garbage, a binary dump) keeps only its head,
	// where a marker would be: the partial line must not grow by 16 MiB each poll.
	c.partial = append([]byte(nil), rest[:min(len(rest), maxPartialLine)]...)
	var started, ended bool
	c.mu.Lock()
	for _, l := range bytes.FieldsFunc(lines, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if c.start.IsZero() && bytes.HasPrefix(bytes.TrimSpace(l), runnerStartMarker) {
			c.start, started = now, true
			continue
		}
		if !c.start.IsZero() && c.end.IsZero() {
			for _, m := range runnerEndMarkers {
				if bytes.Contains(l, m) {
					c.end, ended = now, true
				}
			}
		}
	}
	c.mu.Unlock()
	if started && c.onStart != nil {
		c.onStart()
	}
	if ended && c.onEnd != nil {
		c.onEnd()
	}
}

// Stop ends the watch and returns the request phase; 0 when a marker was not seen.
func (c *PhaseClock) Stop() time.Duration {
	close(c.stop)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start.IsZero() || c.end.IsZero() {
		return 0
	}
	return c.end.Sub(c.start)
}
