package cell

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

func TestExitCodes(t *testing.T) {
	cases := []struct {
		m    Manifest
		want int
	}{
		{Manifest{Status: StatusOK}, 0},
		{Manifest{Status: StatusInfeasible, Failure: &Failure{Phase: PhaseReady, Kind: exitcode.FailOOM}}, 4},
		{Manifest{Status: StatusInterrupted, Failure: &Failure{Phase: PhaseBench, Kind: exitcode.FailInterrupted}}, 130},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhasePreflight, Kind: exitcode.FailEnvMissing}}, 2},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhasePreflight, Kind: exitcode.FailPortInUse}}, 3},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseReady, Kind: exitcode.FailHealthTimeout}}, 3},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseBench, Kind: exitcode.FailBadResult}}, 5},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseTeardown, Kind: exitcode.FailOrphans}}, 6},
		{Manifest{Status: StatusFailed}, 1},
	}
	for _, c := range cases {
		if got := int(c.m.Outcome()); got != c.want {
			t.Errorf("Outcome(%s %+v) = %d, want %d", c.m.Status, c.m.Failure, got, c.want)
		}
	}
}

func TestManifestRoundTripAndID(t *testing.T) {
	if got := ID("qwen1_5", "1xH100", "4k-1k", 32, "sglang"); got != "qwen1_5.1xH100.4k-1k.bs32.sglang" {
		t.Errorf("ID = %q", got)
	}
	dir := t.TempDir()
	m := &Manifest{SchemaVersion: SchemaVersion, Cell: Identity{ID: "x", GPUIndices: []int{0, 1}}, Status: StatusOK}
	if err := WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	got, err := ReadManifest(dir)
	if err != nil || got.Cell.ID != "x" || len(got.Cell.GPUIndices) != 2 || got.Status != StatusOK {
		t.Fatalf("ReadManifest = %+v, %v", got, err)
	}
	// Nothing but the manifest: no temp files left behind by the atomic write.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != ManifestFile {
		t.Errorf("dir holds %v, want only %s", ents, ManifestFile)
	}
	if _, err := ReadManifest(filepath.Join(dir, "missing")); err == nil {
		t.Error("reading a missing manifest succeeded")
	}
}
