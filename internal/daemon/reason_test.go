package daemon

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/matrix"
)

// TestReasonRecordsContaminatedRetry: a cell the runner ran once more because its first run
// was contaminated (matrix.Runner.RunCell, the daemon's one path) says so in the daemon's
// cell record, as its manifest does; a cell that ran once has no reason.
func TestReasonRecordsContaminatedRetry(t *testing.T) {
	note, err := json.Marshal(matrix.Note{Attempts: 2, ContaminatedRetry: "attempt 1 was contaminated (xid_errors 1, bound 0); run once more"})
	if err != nil {
		t.Fatal(err)
	}
	m := &cell.Manifest{Status: cell.StatusOK, Extra: map[string]json.RawMessage{matrix.ExtraKey: note}}
	if got := reasonOf(m); !strings.Contains(got, "attempt 1 was contaminated (xid_errors 1") {
		t.Errorf("reason %q; want the contaminated attempt named", got)
	}
	if got := reasonOf(&cell.Manifest{Status: cell.StatusOK}); got != "" {
		t.Errorf("a cell that ran once: reason %q", got)
	}
}
