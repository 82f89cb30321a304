package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// ReadySpec says how to decide that a server is ready.
type ReadySpec struct {
	BaseURL  string // http://host:port
	Model    string // must be listed by /v1/models
	Flavor   string // sglang also answers /get_model_info
	Interval time.Duration
	// Stall is how long the server may stay silent (no log output, not ready) before it is
	// declared stuck; each line it prints pushes the deadline back. Hard caps the total.
	Stall time.Duration
	Hard  time.Duration
	// Port, when set, is the port the server was told to listen on: ready also needs its
	// listening socket to belong to the server's process tree (/proc), so a server that
	// never listened cannot pass for ready on the strength of another process answering
	// there, and a port another process holds is a launch failure naming it.
	Port int
}

// ReadyError says why a server did not become ready.
type ReadyError struct {
	Kind    exitcode.Failure // "" for timeouts
	Timeout bool
	Exited  bool
	Msg     string
}

func (e *ReadyError) Error() string { return e.Msg }

// Activity reports when the server last showed signs of life (its log grew).
type Activity interface {
	LastActivity() time.Time
}

// WaitReady probes until the server is ready: GET /health answers 200, GET /v1/models lists
// the model (sglang: GET /get_model_info answers too), and a 1-token completion succeeds.
// It returns at once when the process exits, and gives up after a stall or the hard deadline.
func WaitReady(ctx context.Context, p *Process, act Activity, s ReadySpec) error {
	if s.Interval <= 0 || s.Interval > 250*time.Millisecond {
		s.Interval = 100 * time.Millisecond
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	start := time.Now()
	hard := time.NewTimer(s.Hard)
	defer hard.Stop()
	tick := time.NewTicker(s.Interval)
	defer tick.Stop()
	probe := make(chan error, 1)
	var lastErr error
	exited := func() error {
		return &ReadyError{Exited: true, Msg: "server exited during start-up: " + p.ExitDescription()}
	}
	for {
		go func() { probe <- probeOnce(ctx, client, s) }()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return exited()
		case <-hard.C:
			return &ReadyError{Timeout: true, Msg: fmt.Sprintf("server not ready after the hard deadline of %s (last probe: %v); raise --ready-hard-timeout if the model is that slow to load", s.Hard, lastErr)}
		case err := <-probe:
			if err == nil && s.Port > 0 {
				err = ownsPort(p, s.Port)
				var re *ReadyError
				if errors.As(err, &re) {
					return re
				}
			}
			if err == nil {
				return nil
			}
			lastErr = err
		}
		if act != nil && s.Stall > 0 {
			last := act.LastActivity()
			if last.Before(start) {
				last = start
			}
			if time.Since(last) > s.Stall {
				return &ReadyError{Timeout: true, Msg: fmt.Sprintf("server printed nothing for %s and is not ready (last probe: %v); it looks stuck — raise --ready-timeout if the model is that slow to load", s.Stall, lastErr)}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return exited()
		case <-tick.C:
		}
	}
}

// ownsPort proves that what listens on port is p's process tree: a *ReadyError naming the
// holders when another process holds it, a plain error (probe again) when no listening
// socket is visible yet.
func ownsPort(p *Process, port int) error {
	members := append(p.Members(), p.PID())
	foreign, listening := foreignListeners(port, members)
	if !listening {
		return fmt.Errorf("something answers on port %d but no listening socket on it is visible in /proc/net/tcp{,6}", port)
	}
	if len(foreign) == 0 {
		return nil
	}
	names := make([]string, len(foreign))
	for i, h := range foreign {
		names[i] = h.String()
		if h.PID == 0 {
			names[i] = h.Comm
		}
	}
	return &ReadyError{Kind: exitcode.FailPortInUse, Msg: fmt.Sprintf(
		"port %d answers, but its listening socket is held by %s, not by the spawned server (PID %d) or its processes: another process holds the port; stop it or pick another --port (--port 0 picks a free one)",
		port, strings.Join(names, ", "), p.PID())}
}

func probeOnce(ctx context.Context, c *http.Client, s ReadySpec) error {
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.BaseURL+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
		}
		return b, nil
	}
	if _, err := get("/health"); err != nil {
		return err
	}
	b, err := get("/v1/models")
	if err != nil {
		return err
	}
	var models struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &models); err != nil {
		return fmt.Errorf("GET /v1/models: %w", err)
	}
	found := false
	for _, m := range models.Data {
		if m.ID == s.Model {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("GET /v1/models does not list %q yet", s.Model)
	}
	if s.Flavor == BackendSGLang {
		if _, err := get("/get_model_info"); err != nil {
			return err
		}
	}
	body, _ := json.Marshal(map[string]any{"model": s.Model, "prompt": "ping", "max_tokens": 1, "temperature": 0})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.BaseURL+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /v1/completions (1 token): HTTP %d", resp.StatusCode)
	}
	return nil
}

// PortFree reports whether host:port can be bound now.
func PortFree(host string, port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

// FreePort asks the kernel for a free port on host.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// PortClosed reports whether nothing accepts connections on host:port. A refused dial is
// closed. A dial that "connects" from the port to itself is closed too: with nothing
// listening on a port of the ephemeral range, Linux may pick that very port as the dial's
// source and join the socket to itself (TCP simultaneous open), which a busy machine with
// many cells on --port 0 meets. A dial that times out is tried again with a longer limit
// (a loaded machine), and only a real peer, or every try timing out, says open.
func PortClosed(host string, port int) bool {
	return portClosed(net.JoinHostPort(host, strconv.Itoa(port)), &net.Dialer{})
}

func portClosed(addr string, d *net.Dialer) bool {
	for _, limit := range []time.Duration{200 * time.Millisecond, time.Second, 3 * time.Second} {
		d.Timeout = limit
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return true
		}
		self := conn.LocalAddr().String() == conn.RemoteAddr().String()
		conn.Close()
		return self
	}
	return false
}
