package main

import (
	"encoding/json"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

// TestDaemonLedgerReconcile: kill -9 of the daemon while a cell's server runs leaves the
// server (and its workers) running; the restarted daemon reconciles its lease with /proc
// (no NVML here), ends exactly that server, records it, runs the cell again, and the rerun's
// manifest carries the reconciliation proof: the ledger entry with the ended PIDs and the
// server's recorded identity, and NVML unavailable with no GPU number (absent, not 0).
func TestDaemonLedgerReconcile(t *testing.T) {
	e := newDaemonEnv(t)
	d := e.start()
	// One sim cell with two workers and about 8 s of bench (imposed TPOT), so the kill lands
	// in the bench even when this machine is slow to get there.
	cfg := tinyConfig(t, qwen, 32, 8, 40)
	r := e.cli("submit", "--backend", "sim", "--config", cfg, "--batch-size", "4", "--num-samples", "40", "--", "--sim-tpot", "100ms", "--sim-workers", "2")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	_, cs0, jerr := e.client().Job(t.Context(), id)
	if jerr != nil || len(cs0) != 1 {
		t.Fatalf("job %s: %+v %v", id, cs0, jerr)
	}
	cid := cs0[0].ID
	slow := filepath.Join(e.results, cid)
	pid := waitCellBench(t, slow)
	tree := descendants(pid)
	if len(tree) < 3 {
		t.Fatalf("server tree %v; want the server and its 2 workers", tree)
	}
	// The lease records the server's identity once the bench has begun.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ls := leasesOf(t, e)
		if len(ls) == 1 && ls[0].Server != nil && ls[0].Server.PID == pid && ls[0].Server.StartTicks > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease never recorded server PID %d: %+v", pid, ls)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	for _, p := range tree {
		if !pidAlive(p) {
			t.Fatalf("server process %d died with the daemon; the test needs an orphan (tree %v)", p, tree)
		}
	}

	d2 := e.start()
	_, cs := e.waitJob(id, 2*time.Minute)
	if len(cs) != 1 || cs[0].State != daemon.CellOK || cs[0].Reruns != 1 {
		t.Fatalf("after the restart: %+v; want the cell ok, rerun once", cs)
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("orphan process %d of the killed daemon's cell still runs", p)
		}
	}
	if rec := cs[0].Recovery; !strings.Contains(rec, "server ended") {
		t.Errorf("cell recovery %q does not say its server was ended", rec)
	}
	if out := d2.output(); !strings.Contains(out, "ledger reconciled") {
		t.Errorf("the restarted daemon logged no ledger reconciliation: %s", out)
	}
	// The killed attempt is archived, interrupted; the rerun carries the proof.
	att, _ := filepath.Glob(filepath.Join(e.results, ".attempts", cid+"*", cell.ManifestFile))
	if len(att) != 1 {
		t.Fatalf("archived attempts %v; want the killed one", att)
	}
	if m, err := cell.ReadManifest(filepath.Dir(att[0])); err != nil || m.Status != cell.StatusInterrupted {
		t.Errorf("killed attempt: %+v %v; want interrupted", m, err)
	}
	m, err := cell.ReadManifest(slow)
	if err != nil || m.Status != cell.StatusOK {
		t.Fatalf("rerun manifest: %v %v", m, err)
	}
	if !slices.Contains(m.Server.Argv, "--sim-tpot") || !slices.Contains(m.Server.Argv, "100ms") {
		t.Errorf("the submit's server flags after -- are not on the server's command line: %v", m.Server.Argv)
	}
	raw, ok := m.Extra[daemon.ExtraLeaseProof]
	if !ok {
		t.Fatalf("rerun manifest has no %q: extra keys %v", daemon.ExtraLeaseProof, slices.Collect(maps.Keys(m.Extra)))
	}
	t.Logf("the rerun: bench %.2fs, server %v; its %s: %s", m.Timings.Bench, m.Server.Argv, daemon.ExtraLeaseProof, raw)
	var rec daemon.Reconciliation
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.NVML || rec.NVMLUnavailable == "" || rec.DaemonPID != d2.cmd.Process.Pid {
		t.Errorf("proof: nvml %v (%q), daemon %d (want %d): want NVML unavailable, said why", rec.NVML, rec.NVMLUnavailable, rec.DaemonPID, d2.cmd.Process.Pid)
	}
	if len(rec.Ledger) != 1 {
		t.Fatalf("proof ledger %+v; want the one lease", rec.Ledger)
	}
	lc := rec.Ledger[0]
	if lc.Outcome != "ended" || lc.Server == nil || lc.Server.PID != pid || lc.Server.StartTicks == 0 || !slices.Contains(lc.EndedPIDs, pid) {
		t.Errorf("proof ledger entry %+v; want server %d ended", lc, pid)
	}
	for _, p := range tree {
		if !slices.Contains(lc.EndedPIDs, p) {
			t.Errorf("process %d of the server tree %v not among the ended PIDs %v", p, tree, lc.EndedPIDs)
		}
	}
	if lc.GPUProcesses != nil || rec.GPUs != nil {
		t.Errorf("without NVML the proof must hold no GPU reading: %+v %+v", lc.GPUProcesses, rec.GPUs)
	}
	if strings.Contains(string(raw), "baseline_mib") || strings.Contains(string(raw), "observed_mib") {
		t.Errorf("without NVML no memory number may be recorded: %s", raw)
	}
	// The ledger is empty once the cell is over.
	if ls := leasesOf(t, e); len(ls) != 0 {
		t.Errorf("leases left after the job: %+v", ls)
	}
}

// leasesOf reads the daemon's ledger through the API.
func leasesOf(t *testing.T, e *daemonEnv) []daemon.Lease {
	t.Helper()
	var out struct {
		Leases []daemon.Lease `json:"leases"`
	}
	if err := e.client().Call(t.Context(), "GET", "/v1/cells", nil, &out); err != nil {
		t.Fatalf("GET /v1/cells: %v", err)
	}
	return out.Leases
}
