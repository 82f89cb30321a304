package daemon

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/moecapd/moecapd/pkg/cell"
)

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// Listen is one address the API is served on: "unix:PATH" or "HOST:PORT".
type Listen struct {
	Unix string // socket path, or "" for TCP
	Addr string
}

// ParseListen reads --listen.
func ParseListen(s string) (Listen, error) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		if p == "" {
			return Listen{}, fmt.Errorf("--listen %q: give the socket path, unix:/run/moecapd/moecapd.sock", s)
		}
		return Listen{Unix: p}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Listen{}, fmt.Errorf("--listen %q: want unix:PATH or HOST:PORT (%v)", s, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return Listen{}, fmt.Errorf("--listen %q: port %q is not a number", s, port)
	}
	_ = host
	return Listen{Addr: s}, nil
}

// Loopback says whether a TCP address only listens on this machine.
func (l Listen) Loopback() bool {
	host, _, _ := net.SplitHostPort(l.Addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Tokens maps bearer tokens to users, read from a file only its owner may read: one
// "TOKEN USER" per line, # comments.
type Tokens struct {
	mu   sync.RWMutex
	path string
	toks []token
}

type token struct{ secret, user string }

// LoadTokens reads the tokens file, refusing one that others can read.
func LoadTokens(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	return t, t.Reload()
}

// Reload reads the file again (SIGHUP); on an error the old tokens stay.
func (t *Tokens) Reload() error {
	st, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("tokens file %s has mode %04o: others may read it; chmod 600 %s", t.path, st.Mode().Perm(), t.path)
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	var toks []token
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || len(f[0]) < 16 {
			return fmt.Errorf("tokens file %s line %d: want \"TOKEN USER\" with a token of at least 16 characters", t.path, i+1)
		}
		toks = append(toks, token{f[0], f[1]})
	}
	if len(toks) == 0 {
		return fmt.Errorf("tokens file %s names no token", t.path)
	}
	t.mu.Lock()
	t.toks = toks
	t.mu.Unlock()
	return nil
}

// User is the user a bearer token names, "" for none. Every token is compared in constant
// time.
func (t *Tokens) User(secret string) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	who := ""
	for _, k := range t.toks {
		if subtle.ConstantTimeCompare([]byte(k.secret), []byte(secret)) == 1 {
			who = k.user
		}
	}
	return who
}

type ctxKey int

const (
	keyPeer ctxKey = iota
)

// peer is who is on the other end of a connection.
type peer struct {
	uid    int // -1 on TCP
	remote string
}

// Server is the HTTP API over the daemon.
type Server struct {
	D      *Daemon
	Log    *zap.Logger
	Tokens *Tokens // nil: no tokens (unix socket, loopback TCP)
	Admins map[string]bool
	Start  time.Time

	reportMu sync.Mutex // one cell report rendered at a time
}

// userOf names the user of a request: the peer's uid on a unix socket, the token's user on
// TCP (or "local" on loopback without tokens). "" and a reason when it is refused.
func (s *Server) userOf(r *http.Request) (string, string) {
	p, _ := r.Context().Value(keyPeer).(peer)
	if p.uid >= 0 {
		if u, err := user.LookupId(strconv.Itoa(p.uid)); err == nil {
			return u.Username, ""
		}
		return "uid:" + strconv.Itoa(p.uid), ""
	}
	if s.Tokens == nil {
		return "local", ""
	}
	h := r.Header.Get("Authorization")
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return "", "no bearer token (send Authorization: Bearer TOKEN; tokens come from the daemon's --tokens file)"
	}
	if u := s.Tokens.User(strings.TrimSpace(secret)); u != "" {
		return u, ""
	}
	return "", "unknown bearer token"
}

func (s *Server) admin(u string) bool {
	if s.Admins[u] || u == "root" {
		return true
	}
	if me, err := user.Current(); err == nil && me.Username == u {
		return true
	}
	return false
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, why string) {
	p, _ := r.Context().Value(keyPeer).(peer)
	s.Log.Warn("request refused", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Int("status", code),
		zap.String("peer", p.remote), zap.Int("peer_uid", p.uid), zap.String("why", why))
	writeJSON(w, code, map[string]string{"error": why})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Handler is the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	auth := func(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			u, why := s.userOf(r)
			if u == "" {
				s.refuse(w, r, http.StatusUnauthorized, why)
				return
			}
			h(w, r, u)
		}
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"ok": true, "pid": os.Getpid(), "results": s.D.o.ResultsFlag, "since": s.Start})
	})
	mux.HandleFunc("POST /v1/jobs", auth(s.postJob))
	mux.HandleFunc("GET /v1/jobs", auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, 200, map[string]any{"jobs": nonNil(s.D.Jobs())})
	}))
	mux.HandleFunc("GET /v1/jobs/{id}", auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		j, cs, err := s.D.JobCells(r.PathValue("id"))
		if err != nil {
			writeJSON(w, 404, map[string]string{"error": fmt.Sprintf("job %q: %v (moecapd jobs lists them)", r.PathValue("id"), err)})
			return
		}
		writeJSON(w, 200, map[string]any{"job": j, "cells": cs})
	}))
	mux.HandleFunc("DELETE /v1/jobs/{id}", auth(func(w http.ResponseWriter, r *http.Request, u string) {
		j, err := s.D.Cancel(r.PathValue("id"), u, s.admin(u))
		switch {
		case errors.Is(err, ErrNotFound):
			writeJSON(w, 404, map[string]string{"error": fmt.Sprintf("job %q: %v (moecapd jobs lists them)", r.PathValue("id"), err)})
		case errors.Is(err, ErrForbidden):
			s.refuse(w, r, http.StatusForbidden, fmt.Sprintf("%s may not cancel job %s: %v", u, r.PathValue("id"), err))
		case err != nil:
			writeJSON(w, 500, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, 200, map[string]any{"job": j})
		}
	}))
	mux.HandleFunc("GET /v1/cells", auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, 200, map[string]any{"cells": nonNil(s.D.Cells(r.URL.Query().Get("job"), r.URL.Query().Get("state"))),
			"leases": nonNil(s.D.Leases()), "gpus": nonNil(s.D.pool), "slots": s.D.slots,
			"executor": s.D.Executor()})
	}))
	mux.HandleFunc("GET /v1/cells/{id}/log", auth(s.cellLog))
	mux.HandleFunc("GET /v1/events", auth(s.eventsSSE))
	mux.HandleFunc("GET /cells/{id}/report/{file...}", auth(s.cellReport))
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{d: s.D})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /", webHandler())
	return mux
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// SubmitRequest is POST /v1/jobs's body.
type SubmitRequest = Spec

func (s *Server) postJob(w http.ResponseWriter, r *http.Request, u string) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var spec Spec
	if err := dec.Decode(&spec); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.refuse(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", MaxBody))
			return
		}
		s.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("request body: %v (want a JSON object: matrix, only, include_done, no_skip, redo_failed, server_args, priority)", err))
		return
	}
	j, err := s.D.Submit(u, spec)
	if err != nil {
		code := 500
		var se *SubmitError
		if errors.As(err, &se) {
			code = se.Code
		}
		s.refuse(w, r, code, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"job": j})
}

// cellLog streams a cell's server.log or client.log; follow keeps it open while the cell
// runs.
func (s *Server) cellLog(w http.ResponseWriter, r *http.Request, _ string) {
	id := r.PathValue("id")
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\\") || strings.HasPrefix(id, ".") {
		s.refuse(w, r, 400, fmt.Sprintf("cell %q: not a cell id", id))
		return
	}
	name := cell.ServerLogFile
	switch r.URL.Query().Get("file") {
	case "", "server":
	case "client":
		name = cell.ClientLogFile
	default:
		s.refuse(w, r, 400, "file: want server or client")
		return
	}
	p := filepath.Join(s.D.o.ResultsFlag, id, name)
	f, err := os.Open(p)
	follow := r.URL.Query().Get("follow") == "1"
	if err != nil && !follow {
		writeJSON(w, 404, map[string]string{"error": fmt.Sprintf("cell %s has no %s yet (%v)", id, name, err)})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fl, _ := w.(http.Flusher)
	var off int64
	buf := make([]byte, 64<<10)
	for {
		if f == nil {
			f, _ = os.Open(p)
		}
		if f != nil {
			for {
				n, rerr := f.ReadAt(buf, off)
				if n > 0 {
					off += int64(n)
					if _, err := w.Write(buf[:n]); err != nil {
						f.Close()
						return
					}
				}
				if rerr != nil {
					break
				}
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if !follow || !s.D.cellLive(id) {
			// One more read after the cell ended catches its last lines.
			if f != nil {
				if n, _ := f.ReadAt(buf, off); n > 0 {
					_, _ = w.Write(buf[:n])
				}
				f.Close()
			}
			return
		}
		select {
		case <-r.Context().Done():
			if f != nil {
				f.Close()
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cellLive says whether a cell of that id is queued or running in some job.
func (d *Daemon) cellLive(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.cells {
		if c.ID == id && !c.Final() {
			return true
		}
	}
	return false
}

func (s *Server) eventsSSE(w http.ResponseWriter, r *http.Request, _ string) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, 500, map[string]string{"error": "streaming unsupported"})
		return
	}
	ch, cancel := s.D.events.subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	fmt.Fprint(w, ": moecapd events\n\n")
	fl.Flush()
	bw := bufio.NewWriter(w)
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-ch:
			b, _ := json.Marshal(e)
			fmt.Fprintf(bw, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, b)
			bw.Flush()
			fl.Flush()
		case <-tick.C:
			fmt.Fprint(bw, ": keepalive\n\n")
			bw.Flush()
			fl.Flush()
		}
	}
}

// collector is the daemon's /metrics.
type collector struct{ d *Daemon }

var (
	descCells  = prometheus.NewDesc("moecapd_daemon_cells", "Cells of the daemon's jobs by state.", []string{"state"}, nil)
	descJobs   = prometheus.NewDesc("moecapd_daemon_jobs", "Jobs by state.", []string{"state"}, nil)
	descLeased = prometheus.NewDesc("moecapd_daemon_gpu_leased", "1 while a cell holds the GPU's lease.", []string{"gpu", "uuid"}, nil)
	descUp     = prometheus.NewDesc("moecapd_daemon_start_time_seconds", "When the daemon started (Unix seconds).", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCells
	ch <- descJobs
	ch <- descLeased
	ch <- descUp
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	cells := map[string]int{}
	for _, s := range []string{CellQueued, CellRunning, CellOK, CellFailed, CellInfeasible, CellSkipped, CellInterrupted, CellCancelled} {
		cells[s] = 0
	}
	for _, x := range d.cells {
		cells[x.State]++
	}
	for s, n := range cells {
		ch <- prometheus.MustNewConstMetric(descCells, prometheus.GaugeValue, float64(n), s)
	}
	jobs := map[string]int{JobQueued: 0, JobRunning: 0, JobDone: 0, JobCancelled: 0}
	for _, j := range d.jobs {
		jobs[j.State]++
	}
	for s, n := range jobs {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(n), s)
	}
	for _, g := range d.pool {
		v := 0.0
		if !d.freeGPU[g] {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descLeased, prometheus.GaugeValue, v, g, d.uuid[g])
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, float64(d.started.Unix()))
}

// Serve serves the API on the listeners until ctx ends. A unix socket gets mode 0660 and
// its peers' uids; TCP with tls serves HTTPS.
func (s *Server) Serve(ctx context.Context, ls []Listen, tlsCfg *tls.Config) error {
	h := s.Handler()
	errc := make(chan error, len(ls))
	var srvs []*http.Server
	for _, l := range ls {
		var ln net.Listener
		var err error
		if l.Unix != "" {
			if st, serr := os.Lstat(l.Unix); serr == nil && st.Mode()&os.ModeSocket != 0 {
				_ = os.Remove(l.Unix) // a stale socket of a killed daemon (the node lock is ours)
			}
			if err = os.MkdirAll(filepath.Dir(l.Unix), 0o755); err == nil {
				ln, err = net.Listen("unix", l.Unix)
			}
			if err == nil {
				err = os.Chmod(l.Unix, 0o660)
			}
		} else {
			ln, err = net.Listen("tcp", l.Addr)
			if err == nil && tlsCfg != nil {
				ln = tls.NewListener(ln, tlsCfg)
			}
		}
		if err != nil {
			for _, srv := range srvs {
				srv.Close()
			}
			return fmt.Errorf("listen on %s%s: %w", l.Unix, l.Addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
			ConnContext: func(c context.Context, conn net.Conn) context.Context {
				return context.WithValue(c, keyPeer, peerOf(conn))
			}}
		srvs = append(srvs, srv)
		s.Log.Info("API listening", zap.String("addr", l.Unix+l.Addr), zap.Bool("tls", tlsCfg != nil && l.Unix == ""))
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range srvs {
		_ = srv.Shutdown(sctx)
	}
	for _, l := range ls {
		if l.Unix != "" {
			_ = os.Remove(l.Unix)
		}
	}
	return nil
}

func peerOf(conn net.Conn) peer {
	p := peer{uid: -1, remote: conn.RemoteAddr().String()}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return p
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return p
	}
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			p.uid = int(cred.Uid)
			p.remote = fmt.Sprintf("unix pid %d uid %d", cred.Pid, cred.Uid)
		}
	})
	return p
}

var _ io.Writer = (*bufio.Writer)(nil)
