package main

// End-to-end tests of moecapd serve and its clients: the real binary as the daemon on a
// unix socket and on TCP with tokens, sim cells, the node lock against launch-and-bench
// and matrix run, cancel, refusals, and kill -9 of the daemon at random moments.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

// daemonEnv is a private node: its own run directory (lock, default socket).
type daemonEnv struct {
	t       *testing.T
	runDir  string
	results string
	sock    string
	env     []string
}

func newDaemonEnv(t *testing.T) *daemonEnv {
	// Socket paths are limited to 108 bytes: a short run directory of its own.
	runDir, err := os.MkdirTemp("", "mcd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	e := &daemonEnv{t: t, runDir: runDir, results: t.TempDir(), sock: filepath.Join(runDir, "moecapd.sock")}
	e.env = []string{"MOECAPD_RUN_DIR=" + runDir, "MOECAPD_SERVER="}
	return e
}

// daemonProc is a running moecapd serve; its output goes to a file (a pipe would be held
// open by the servers a killed daemon leaves for the next one to end).
type daemonProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func (p *daemonProc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// start runs moecapd serve and waits until its API answers.
func (e *daemonEnv) start(extra ...string) *daemonProc {
	t := e.t
	t.Helper()
	args := append([]string{"serve", "--results", e.results, "--slots", "2", "--retry-backoff", "50ms",
		"--grace", "2s", "--ready-hard-timeout", "5s", "--log-format", "json", "--drain-timeout", "10s"}, extra...)
	c := exec.Command(bin, args...)
	c.Env = append(os.Environ(), e.env...)
	f, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{cmd: c, done: make(chan struct{}), log: f.Name()}
	go func() { c.Wait(); close(p.done) }()
	t.Cleanup(func() {
		c.Process.Kill()
		<-p.done
		// A daemon killed mid-cell (a failed test) leaves its servers to the next start;
		// there is none, so they are ended here.
		for _, pid := range serverPIDsOf(e.results) {
			if pidAlive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cl, _ := daemon.NewClient("unix:"+e.sock, "")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := cl.Call(context.Background(), "GET", "/healthz", nil, nil); err == nil {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("moecapd serve exited before answering: %s", p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("moecapd serve never answered on %s: %s", e.sock, p.output())
		}
		time.Sleep(30 * time.Millisecond)
	}
}

func (e *daemonEnv) cli(args ...string) run {
	e.t.Helper()
	return moecapd(e.t, e.env, args...)
}

func (e *daemonEnv) client() *daemon.Client {
	cl, err := daemon.NewClient("unix:"+e.sock, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return cl
}

// waitJob waits until a job is done or cancelled and returns its cells.
func (e *daemonEnv) waitJob(id string, within time.Duration) (daemon.JobView, []daemon.Cell) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		j, cs, err := e.client().Job(context.Background(), id)
		if err == nil && (j.State == daemon.JobDone || j.State == daemon.JobCancelled) &&
			j.Counts[daemon.CellRunning]+j.Counts[daemon.CellQueued] == 0 {
			return j, cs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s not finished within %s: %+v %+v (err %v)", id, within, j, cs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func states(cs []daemon.Cell) map[string]string {
	m := map[string]string{}
	for _, c := range cs {
		m[c.ID] = c.State
	}
	return m
}

// tinyTasks is a fresh directory holding the tiny benchmark files of testdata/matrix
// (tiny_qwen1_5.yaml, tiny_dsv2_lite.yaml) that the daemon tests' matrices name.
func tinyTasks(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	for _, m := range []string{"qwen1_5", "dsv2_lite"} {
		b, err := os.ReadFile("../../testdata/matrix/tiny_" + m + ".yaml")
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "tiny_"+m+".yaml"), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// killMatrix writes a sim matrix of n cells per chain, in two chains, next to its tasks.
func killMatrix(t *testing.T, batches string, tpot string) string {
	t.Helper()
	dir := tinyTasks(t)
	body := fmt.Sprintf(`version: 1
tasks:
  32-8: {config: "tiny_{model}.yaml"}
defaults:
  backends: [sim]
  sim: {tpot: %s, ttft: 5ms}
groups:
  g:
    models: [qwen1_5, dsv2_lite]
    hardware: [1xH100]
    tasks: {32-8: [%s]}
`, tpot, batches)
	p := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDaemonSubmitRunCancelRefuse(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()

	// While the daemon runs, one-shot runs on this node refuse, naming it and submit.
	for _, args := range [][]string{
		simArgs(t.TempDir(), tinyConfig(t, qwen, 32, 8, 4), 1),
		matrixRunArgs(t.TempDir(), t.TempDir()),
	} {
		r := e.cli(args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "moecapd serve daemon (PID") || !strings.Contains(r.stderr, "moecapd submit") {
			t.Fatalf("%s under a daemon: exit %d, stderr %s; want 2 naming the daemon and moecapd submit", args[0], r.code, r.stderr)
		}
	}

	// A job with an out-of-memory chain: ok, ok, infeasible, then skipped.
	r := e.cli("submit", "--matrix", faultsMatrix, "--only", `^qwen1_5\.`)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("submit: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	_, cs := e.waitJob(id, 2*time.Minute)
	want := map[string]string{"qwen1_5.1xH100.32-8.bs2.sim": "ok", "qwen1_5.1xH100.32-8.bs32.sim": "ok",
		"qwen1_5.1xH100.32-8.bs64.sim": "infeasible", "qwen1_5.1xH100.32-8.bs128.sim": "skipped"}
	if got := states(cs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("job %s cells %v; want %v", id, got, want)
	}
	for c, st := range want {
		m, err := cell.ReadManifest(filepath.Join(e.results, c))
		if err != nil || (st == "ok") != (m.Status == cell.StatusOK) {
			t.Fatalf("cell %s manifest %v (err %v); daemon says %s", c, m, err, st)
		}
	}
	jobs := e.cli("jobs")
	if jobs.code != 0 || !strings.Contains(jobs.stdout, id) || !strings.Contains(jobs.stdout, "done") {
		t.Fatalf("jobs: exit %d, %s %s", jobs.code, jobs.stdout, jobs.stderr)
	}
	job := e.cli("job", id)
	if job.code != 0 || !strings.Contains(job.stdout, "qwen1_5.1xH100.32-8.bs128.sim  skipped") {
		t.Fatalf("job %s: exit %d, %s %s", id, job.code, job.stdout, job.stderr)
	}

	// Cancel mid-bench: the slow cell is torn down (interrupted), the queued one dropped.
	r = e.cli("submit", "--matrix", faultsMatrix, "--only", `1xA100|1xH200`)
	id2 := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	slow := filepath.Join(e.results, "dsv2_lite.1xA100.32-8.bs4.sim")
	pid := waitCellBench(t, slow)
	if c := e.cli("cancel", id2); c.code != 0 || !strings.Contains(c.stdout, "cancelled") {
		t.Fatalf("cancel: %d %s %s", c.code, c.stdout, c.stderr)
	}
	_, cs = e.waitJob(id2, time.Minute)
	st := states(cs)
	if st["dsv2_lite.1xA100.32-8.bs4.sim"] != daemon.CellInterrupted {
		t.Fatalf("cancelled job's running cell: %v; want interrupted", st)
	}
	deadline := time.Now().Add(30 * time.Second)
	for pidAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if pidAlive(pid) {
		t.Fatalf("cancelled cell's server %d still alive", pid)
	}
	if m, err := cell.ReadManifest(slow); err != nil || m.Status != cell.StatusInterrupted {
		t.Fatalf("cancelled cell's manifest: %v %v", m, err)
	}

	// Bad inputs: 4xx with the reason, the CLI exits 2.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"submit", "--matrix", faultsMatrix, "--only", "("}, "--only"},
		{[]string{"submit", "--matrix", faultsMatrix, "--priority", "5000"}, "--priority"},
		{[]string{"submit", "--matrix", faultsMatrix, "--only", "nothing-matches"}, "no cell"},
		{[]string{"submit", "--matrix", "/nonexistent.yaml"}, "nonexistent"},
		{[]string{"job", "j999"}, "no such job"},
		{[]string{"cancel", "j999"}, "no such job"},
	} {
		r := e.cli(tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %s; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}}
	for _, tc := range []struct {
		body string
		code int
	}{
		{`{"matrix": 5}`, 400},
		{`{"matrix": "` + faultsMatrix + `"}`, 400}, // relative
		{`{"bogus": true}`, 400},
		{`{"matrix": "` + strings.Repeat("x", 2<<20) + `"}`, 413},
	} {
		resp, err := hc.Post("http://d/v1/jobs", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tc.code || e.Error == "" {
			t.Errorf("POST %.40s: %d %q; want %d with a reason", tc.body, resp.StatusCode, e.Error, tc.code)
		}
	}
	// /metrics and the page.
	for path, want := range map[string]string{"/metrics": `moecapd_daemon_cells{state="ok"} 2`, "/": "<title>moecapd</title>"} {
		resp, err := hc.Get("http://d" + path)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if !strings.Contains(b.String(), want) {
			t.Errorf("GET %s: want %q in %.500s", path, want, b.String())
		}
	}
}

func TestDaemonTokensTwoUsers(t *testing.T) {
	e := newDaemonEnv(t)
	toks := filepath.Join(t.TempDir(), "tokens")
	alice, bob := "alice-token-0123456789", "bob-token-0123456789ab"
	os.WriteFile(toks, []byte("# test tokens\n"+alice+" alice\n"+bob+" bob\n"), 0o644)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// A tokens file others can read is refused; a non-loopback listen without tokens too.
	r := e.cli("serve", "--results", e.results, "--listen", addr, "--tokens", toks)
	if r.code != exitUsage || !strings.Contains(r.stderr, "chmod 600") {
		t.Fatalf("world-readable tokens: exit %d %s", r.code, r.stderr)
	}
	r = e.cli("serve", "--results", e.results, "--listen", "0.0.0.0:0")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--tokens") {
		t.Fatalf("open listen without tokens: exit %d %s", r.code, r.stderr)
	}
	os.Chmod(toks, 0o600)
	d := e.start("--listen", "unix:"+e.sock, "--listen", addr, "--tokens", toks)
	url := "http://" + addr
	m := killMatrix(t, "1,2", "20ms")
	// Two users submit at once.
	type res struct {
		who string
		r   run
	}
	ch := make(chan res, 2)
	for who, tok := range map[string]string{"alice": alice, "bob": bob} {
		go func() {
			env := append(append([]string{}, e.env...), "MOECAPD_TOKEN="+tok)
			ch <- res{who, moecapd(t, env, "submit", "--server", url, "--matrix", m, "--only", map[string]string{"alice": "qwen", "bob": "dsv2"}[who])}
		}()
	}
	ids := map[string]string{}
	for range 2 {
		x := <-ch
		if x.r.code != 0 {
			t.Fatalf("%s submit: %d %s", x.who, x.r.code, x.r.stderr)
		}
		ids[x.who] = strings.TrimSpace(x.r.stdout)
	}
	// No token, a wrong token: 401; bob may not cancel alice's job: 403, logged with the peer.
	for _, tok := range []string{"", "wrong-token-0123456789"} {
		r := moecapd(t, append(append([]string{}, e.env...), "MOECAPD_TOKEN="+tok), "jobs", "--server", url)
		if r.code != exitUsage || !strings.Contains(r.stderr, "401") {
			t.Fatalf("token %q: exit %d %s", tok, r.code, r.stderr)
		}
	}
	r = moecapd(t, append(append([]string{}, e.env...), "MOECAPD_TOKEN="+bob), "cancel", ids["alice"], "--server", url)
	if r.code != exitUsage || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "bob may not cancel") {
		t.Fatalf("bob cancels alice's job: exit %d %s", r.code, r.stderr)
	}
	for who, id := range ids {
		j, cs := e.waitJob(id, 2*time.Minute)
		if j.Owner != who || j.Counts[daemon.CellOK] != 2 {
			t.Fatalf("%s's job %s: owner %s, cells %v", who, id, j.Owner, states(cs))
		}
	}
	if out := d.output(); !strings.Contains(out, `"why":"bob may not cancel job `+ids["alice"]) || !strings.Contains(out, `"peer":"127.0.0.1:`) {
		t.Errorf("refusal not logged with the peer: %s", out)
	}
	// The unix socket: mode 0660, the peer's uid names the owner.
	if st, err := os.Stat(e.sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", st, err)
	}
	// SIGHUP reloads the tokens: bob's goes, carol's comes.
	carol := "carol-token-0123456789"
	os.WriteFile(toks, []byte(alice+" alice\n"+carol+" carol\n"), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for {
		rc := moecapd(t, append(append([]string{}, e.env...), "MOECAPD_TOKEN="+carol), "jobs", "--server", url)
		rb := moecapd(t, append(append([]string{}, e.env...), "MOECAPD_TOKEN="+bob), "jobs", "--server", url)
		if rc.code == 0 && rb.code == exitUsage {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP: carol %d %s, bob %d %s", rc.code, rc.stderr, rb.code, rb.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestDaemonKill9 kills the daemon with SIGKILL at random moments (submits, launches,
// benches, teardowns, manifest writes) and restarts it each time: no acknowledged job and
// no completed result may be lost, and every interrupted cell is run again.
func TestDaemonKill9(t *testing.T) {
	const kills = 20
	e := newDaemonEnv(t)
	m := killMatrix(t, "1,2,3,4,5,6", "15ms")
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	acked := map[string]bool{}
	okSeen := map[string]bool{} // job/cell ever seen ok
	t.Cleanup(func() {
		// Servers a killed daemon left are the next daemon's to end; any still here now are ours.
		for _, p := range serverPIDs(t, e.results) {
			if pidAlive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	submits := 0
	for i := range kills {
		d := e.start()
		// Look at what the restarted daemon says: nothing acknowledged or completed is gone.
		js, err := e.client().Jobs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, j := range js {
			have[j.ID] = true
		}
		for id := range acked {
			if !have[id] {
				t.Fatalf("kill %d: acknowledged job %s lost; jobs now %v", i, id, have)
			}
		}
		cs := e.client()
		all := []daemon.Cell{}
		for id := range have {
			_, c, err := cs.Job(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, c...)
		}
		for _, c := range all {
			if okSeen[c.Job+"/"+c.ID] && c.State != daemon.CellOK {
				t.Fatalf("kill %d: cell %s of %s was ok, now %s", i, c.ID, c.Job, c.State)
			}
			if c.State == daemon.CellOK {
				okSeen[c.Job+"/"+c.ID] = true
			}
		}
		// Now and then a submit, which the kill may hit.
		var sub chan run
		if i%4 == 0 && submits < 3 {
			submits++
			sub = make(chan run, 1)
			go func() { sub <- e.cli("submit", "--matrix", m, "--include-done", "--redo-failed") }()
		}
		time.Sleep(time.Duration(rng.IntN(1200)) * time.Millisecond)
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		if sub != nil {
			if r := <-sub; r.code == 0 {
				acked[strings.TrimSpace(r.stdout)] = true
			}
		}
	}
	if len(acked) == 0 {
		t.Fatal("no submit was acknowledged across the kills")
	}
	e.start()
	reruns := 0
	for id := range acked {
		j, cs := e.waitJob(id, 3*time.Minute)
		for _, c := range cs {
			reruns += c.Reruns
			if c.State != daemon.CellOK {
				t.Errorf("job %s cell %s: %s (%s; %s)", j.ID, c.ID, c.State, c.Reason, c.Recovery)
			}
			if okSeen[c.Job+"/"+c.ID] && c.State != daemon.CellOK {
				t.Errorf("cell %s of %s was ok and is now %s", c.ID, c.Job, c.State)
			}
		}
	}
	// Each cell's manifest (the truth of a cell) is ok, and no server outlived its cell.
	ms, _ := filepath.Glob(filepath.Join(e.results, "*", cell.ManifestFile))
	for _, f := range ms {
		if mm, err := cell.ReadManifest(filepath.Dir(f)); err != nil || mm.Status != cell.StatusOK {
			t.Errorf("manifest %s: %v %v", f, mm, err)
		}
	}
	for _, p := range serverPIDs(t, e.results) {
		if pidAlive(p) {
			t.Errorf("server PID %d of a cell is still alive after the last daemon finished", p)
		}
	}
	t.Logf("%d kills, %d jobs acknowledged, %d cell reruns after interruptions", kills, len(acked), reruns)
	if reruns == 0 {
		t.Errorf("no cell was interrupted and rerun across %d kills; the kills missed every cell", kills)
	}
}

// TestDaemonDrainWebhook: SIGTERM drains (a cell still running at --drain-timeout is
// interrupted and kept queued; the daemon exits 0), the next start runs it again, and the
// webhook hears of the job's end in Slack's JSON.
func TestDaemonDrainWebhook(t *testing.T) {
	e := newDaemonEnv(t)
	hook := make(chan string, 16)
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m struct{ Text string }
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(400)
			return
		}
		hook <- m.Text
	}))
	t.Cleanup(ws.Close)
	d := e.start("--drain-timeout", "300ms", "--webhook", ws.URL)
	r := e.cli("submit", "--matrix", faultsMatrix, "--only", `1xA100`, "--include-done")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	slow := filepath.Join(e.results, "dsv2_lite.1xA100.32-8.bs4.sim")
	pid := waitCellBench(t, slow)
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not stop after SIGTERM: %s", d.output())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 || pidAlive(pid) {
		t.Fatalf("after drain: exit %d, server %d alive %v: %s", code, pid, pidAlive(pid), d.output())
	}
	e.start("--webhook", ws.URL)
	_, cs := e.waitJob(id, 2*time.Minute)
	if len(cs) != 1 || cs[0].State != daemon.CellOK || cs[0].Reruns != 1 || cs[0].Attempts != 2 {
		t.Fatalf("after the restart: %+v; want ok, rerun once, attempted twice", cs)
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case text := <-hook:
			if strings.Contains(text, "job "+id) && strings.Contains(text, "done: 1 ok") {
				return
			}
		case <-deadline:
			t.Fatal("no webhook message for the job's end")
		}
	}
}

// TestDaemonSubmitOneCell: submit with launch-and-bench's flags runs that one cell.
func TestDaemonSubmitOneCell(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	r := e.cli("submit", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--num-samples", "6", "--priority", "3", "--", "--sim-tpot", "2ms")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	j, cs := e.waitJob(id, 2*time.Minute)
	if len(cs) != 1 || cs[0].State != daemon.CellOK || j.Priority != 3 {
		t.Fatalf("one-cell job: %+v %+v", j, cs)
	}
	m, err := cell.ReadManifest(filepath.Join(e.results, cs[0].ID))
	if err != nil || m.Status != cell.StatusOK || m.Cell.BatchSize != 2 || m.Cell.NumSamples != 6 {
		t.Fatalf("manifest of %s: %+v %v", cs[0].ID, m, err)
	}
	for _, args := range [][]string{
		{"submit", "--backend", "sim", "--config", cfg},                       // no batch size
		{"submit", "--matrix", faultsMatrix, "--config", cfg},                 // both
		{"submit", "--backend", "vllm", "--config", cfg, "--batch-size", "1"}, // real backend, no hardware
	} {
		if r := e.cli(args...); r.code != exitUsage {
			t.Errorf("%v: exit %d %s; want 2", args, r.code, r.stderr)
		}
	}
}

// TestDaemonSubmitRates: a submitted cell with launch-and-bench's load flags runs the rate
// sweep under the open loop's own id; a bad load is refused at submit, by the CLI and over
// HTTP (400 naming the job's field), before anything is queued.
func TestDaemonSubmitRates(t *testing.T) {
	e := newDaemonEnv(t)
	e.start()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	r := e.cli("submit", "--backend", "sim", "--config", cfg, "--batch-size", "1", "--rates", "50,100", "--slo", "ttft=10s", "--", "--sim-tpot", "2ms")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	_, cs := e.waitJob(id, 2*time.Minute)
	if len(cs) != 1 || cs[0].State != daemon.CellOK || cs[0].ID != "qwen1_5.1xH100.32-8.bs1.sim.rates50-100" {
		t.Fatalf("sweep job's cells: %+v", cs)
	}
	m, err := cell.ReadManifest(filepath.Join(e.results, cs[0].ID))
	if err != nil || m.Status != cell.StatusOK || len(m.Rates) != 2 || m.Rates[1].Rate != 100 || m.Cell.Load != "rates50-100" {
		t.Fatalf("manifest of %s: %+v %v", cs[0].ID, m, err)
	}
	if r := e.cli("submit", "--backend", "sim", "--config", cfg, "--batch-size", "1", "--rates", "2,-1"); r.code != exitUsage || !strings.Contains(r.stderr, `"rates"`) {
		t.Errorf("submit --rates 2,-1: exit %d %s; want 2 naming rates", r.code, r.stderr)
	}
	if r := e.cli("submit", "--matrix", cfg, "--rates", "2"); r.code != exitUsage || !strings.Contains(r.stderr, "--rates is one cell's load") {
		t.Errorf("submit --matrix with --rates: exit %d %s; want 2", r.code, r.stderr)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}}
	for _, tc := range []struct{ load, want string }{
		{`"rates": [2, -1]`, `key "rates": got -1`},
		{`"request_rate": 1e9`, `key "request_rate"`},
		{`"find_max_rate": true`, `find_max_rate needs an SLO to meet: add "slo": "ttft=500ms,tpot=50ms"`},
		{`"rates": [2], "repeats": 3`, `key "rates": repeats with rates`},
	} {
		body := `{"cell": {"backend": "sim", "config": "` + cfg + `", "batch_size": 1, ` + tc.load + `}}`
		resp, err := hc.Post("http://d/v1/jobs", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(out.Error, tc.want) {
			t.Errorf("POST a cell with %s: %d %q; want 400 with %q", tc.load, resp.StatusCode, out.Error, tc.want)
		}
	}
	js, err := e.client().Jobs(context.Background())
	if err != nil || len(js) != 1 {
		t.Errorf("jobs after the refusals: %+v %v; want the one sweep job", js, err)
	}
}
