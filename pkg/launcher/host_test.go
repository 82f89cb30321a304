package launcher

import (
	"os"
	"path/filepath"
	"testing"
)

// A state file written on another node of a shared results root is never judged here: its
// PIDs are that node's, so it is neither ended nor removed as stale.
func TestFindOrphansLeavesOtherHosts(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cell")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Supervisor and server PIDs that do not run here: on this host it would be stale.
	s := State{PID: 1 << 22, PGID: 1 << 22, Supervisor: 1<<22 + 1, Argv: []string{"x"}, Host: "some-other-node"}
	if err := WriteState(dir, s); err != nil {
		t.Fatal(err)
	}
	got, err := FindOrphans(root)
	if err != nil || len(got.Orphans)+len(got.Gone)+len(got.Problems) != 0 {
		t.Fatalf("FindOrphans: %+v, %v; want nothing from another host", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); err != nil {
		t.Errorf("another host's state file was removed: %v", err)
	}
	// The same record from this host is stale and removed.
	s.Host = hostname()
	if err := WriteState(dir, s); err != nil {
		t.Fatal(err)
	}
	sw, err := FindOrphans(root)
	if err != nil || len(sw.Gone) != 1 {
		t.Fatalf("FindOrphans: %+v, %v; want this host's dead server reported gone", sw, err)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); !os.IsNotExist(err) {
		t.Errorf("this host's stale state file kept: %v", err)
	}
}
