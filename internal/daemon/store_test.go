package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// OpenStore checks the file before bbolt maps it (storecheck.File): a store cut short is an
// error naming it and the fix, not a SIGBUS at the daemon's start.
func TestOpenStoreCutShort(t *testing.T) {
	root := t.TempDir()
	st, err := OpenStore(root)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		j := &Job{Owner: "alice", State: JobQueued, Created: time.Unix(1e9, 0), Spec: Spec{Matrix: "/m/matrix.yaml"}}
		if err := st.AddJob(j, []*Cell{{ID: "qwen.1xH100.4k-1k.bs1.sglang", Reason: strings.Repeat("r", 100*i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, StoreDir, StoreFile)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, fi.Size()/3); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(root); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "move it aside") {
		t.Errorf("a store cut to a third: %v; want an error naming %s and the fix", err, p)
	}
}
