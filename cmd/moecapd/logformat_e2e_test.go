package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// One log format per stream (make demo's pair: launch-and-bench, then report, on one
// stderr): with --log-format auto every log line is JSON when stderr is not a terminal, and
// none is JSON on a terminal.
func TestLogFormatOnePerStream(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	cell := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--port", "0"}
	t.Run("not a terminal", func(t *testing.T) {
		results := t.TempDir()
		var stderr string
		for _, args := range [][]string{append(cell, "--results", results), {"report", "--results", results, "--out", t.TempDir()}} {
			r := moecapd(t, nil, args...)
			if r.code != 0 {
				t.Fatalf("%v: exit %d\n%s", args[0], r.code, r.stderr)
			}
			stderr += r.stderr
		}
		for l := range strings.SplitSeq(strings.TrimSpace(stderr), "\n") {
			if !json.Valid([]byte(l)) {
				t.Errorf("a line that is not JSON on a piped stderr: %q", l)
			}
		}
	})
	t.Run("terminal", func(t *testing.T) {
		master, slave := openPTY(t)
		defer master.Close()
		var seen bytes.Buffer
		drained := make(chan struct{})
		go func() { io.Copy(&seen, master); close(drained) }() // EIO once every writer is gone
		c := exec.Command(bin, append(cell, "--results", t.TempDir())...)
		c.Stdin, c.Stderr = slave, slave
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		if err := c.Wait(); err != nil {
			t.Fatalf("launch-and-bench: %v\n%s", err, seen.String())
		}
		select {
		case <-drained:
		case <-time.After(30 * time.Second): // something still holds the terminal: read what came
			master.Close()
			<-drained
		}
		n := 0
		sc := bufio.NewScanner(&seen)
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(l, "{") {
				t.Errorf("a JSON line on the terminal: %q", l)
			}
			if strings.Contains(l, "INFO") {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no console log line on the terminal:\n%s", seen.String())
		}
	})
}
