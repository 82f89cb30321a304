package launcher

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// The server writes straight into its log file (not through a pipe of ours), so a
// supervisor killed with SIGKILL leaves a server that keeps running and logging instead of
// dying on EPIPE half-way through; LogWatch follows that file for the supervisor.

type pattern struct {
	kind exitcode.Failure
	re   *regexp.Regexp
	what string
}

// Most specific first: an OOM traceback often also mentions a RuntimeError.
var patterns = []pattern{
	{exitcode.FailOOM, regexp.MustCompile(`(?i)CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|No available memory for the cache blocks|larger than the maximum number of tokens that can be stored in KV cache|Not enough memory|insufficient (GPU )?memory|cudaErrorMemoryAllocation`), "the GPU ran out of memory"},
	{exitcode.FailPortInUse, regexp.MustCompile(`(?i)address already in use|Errno 98`), "the port is already in use"},
	{exitcode.FailEnvMissing, regexp.MustCompile(`(?i)ModuleNotFoundError|No module named|EnvironmentNameNotFound|Could not find conda environment|conda: command not found|python: command not found|No such file or directory: 'python'|command not found`), "the environment lacks something the server needs"},
	{exitcode.FailCrash, regexp.MustCompile(`(?i)Traceback \(most recent call last\)|CUDA error|illegal memory access|Segmentation fault|core dumped|panic:|RuntimeError|Error:`), "the server crashed"},
}

const (
	tailLines     = 40
	maxLineBytes  = 2048
	maxErrorLines = 8
)

// LogWatch follows a log file: the last lines, the last recognised error lines, and when
// the file last grew (a loading server that keeps printing is alive).
type LogWatch struct {
	path string
	mu   sync.Mutex
	tail []string
	errs []classified
	last time.Time
	part []byte
	off  int64

	stop chan struct{}
	done chan struct{}
}

type classified struct {
	kind exitcode.Failure
	line string
}

// WatchLog starts following path every interval.
func WatchLog(path string, interval time.Duration) *LogWatch {
	w := &LogWatch{path: path, last: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go w.loop(interval)
	return w
}

func (w *LogWatch) loop(interval time.Duration) {
	defer close(w.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.Poll()
		select {
		case <-w.stop:
			w.Poll()
			return
		case <-t.C:
		}
	}
}

// Poll reads what was appended since the last poll.
func (w *LogWatch) Poll() {
	f, err := os.Open(w.path)
	if err != nil {
		return
	}
	defer f.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := f.Seek(w.off, io.SeekStart); err != nil {
		return
	}
	buf, _ := io.ReadAll(io.LimitReader(f, 4<<20))
	if len(buf) == 0 {
		return
	}
	w.off += int64(len(buf))
	w.last = time.Now()
	data := append(w.part, buf...)
	// Progress bars redraw with \r: each redraw is a line of its own.
	data = bytes.ReplaceAll(data, []byte("\r"), []byte("\n"))
	lines := bytes.Split(data, []byte("\n"))
	w.part = append([]byte(nil), lines[len(lines)-1]...)
	if len(w.part) > maxLineBytes {
		w.part = w.part[len(w.part)-maxLineBytes:]
	}
	for _, l := range lines[:len(lines)-1] {
		w.addLine(string(l))
	}
}

func (w *LogWatch) addLine(l string) {
	l = strings.TrimRight(l, " \t")
	if l == "" {
		return
	}
	if len(l) > maxLineBytes {
		l = l[:maxLineBytes] + "…"
	}
	w.tail = append(w.tail, l)
	if len(w.tail) > tailLines {
		w.tail = w.tail[len(w.tail)-tailLines:]
	}
	for _, p := range patterns {
		if p.re.MatchString(l) {
			w.errs = append(w.errs, classified{p.kind, l})
			if len(w.errs) > maxErrorLines {
				w.errs = w.errs[len(w.errs)-maxErrorLines:]
			}
			break
		}
	}
}

// Close stops following after a last read.
func (w *LogWatch) Close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// LastActivity is when the file last grew.
func (w *LogWatch) LastActivity() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Tail returns the last lines, newline-joined.
func (w *LogWatch) Tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := append([]string(nil), w.tail...)
	if len(w.part) > 0 {
		lines = append(lines, string(w.part))
	}
	return strings.Join(lines, "\n")
}

// Diagnosis classifies the recognised error lines: the most severe kind seen (OOM beats a
// generic crash) and the line that says so. With nothing recognised it is a crash.
func (w *LogWatch) Diagnosis() (exitcode.Failure, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range patterns {
		for i := len(w.errs) - 1; i >= 0; i-- {
			if w.errs[i].kind == p.kind {
				return p.kind, w.errs[i].line
			}
		}
	}
	return exitcode.FailCrash, ""
}

// Explain turns a kind and the line behind it into one sentence a person can act on.
func Explain(kind exitcode.Failure, line string) string {
	var what, fix string
	switch kind {
	case exitcode.FailOOM:
		what, fix = "the GPU ran out of memory", "use a smaller batch size, more GPUs (--tp), or a shorter task"
	case exitcode.FailPortInUse:
		what, fix = "the port is already in use", "stop what holds it (ss -ltnp) or pass --port 0 to pick a free one"
	case exitcode.FailEnvMissing:
		what, fix = "the environment lacks something the server needs", "check the conda env with `moecapd doctor`"
	default:
		what, fix = "the server crashed", "read server.log in the cell directory"
	}
	if line != "" {
		return what + ": " + strings.TrimSpace(line) + " (" + fix + ")"
	}
	return what + " (" + fix + ")"
}
