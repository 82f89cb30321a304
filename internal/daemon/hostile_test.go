package daemon

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
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

// --server naming something that is not a moecapd daemon (a web server answering 200 with
// a page) is a usage error saying so, not a decode error of exit 1.
func TestClientAnswerNotADaemon(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<!DOCTYPE html><html><body>It works!</body></html>")
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	err = c.Call(t.Context(), "GET", "/v1/jobs", nil, &out)
	if exitcode.Of(err) != int(exitcode.Usage) || !strings.Contains(err.Error(), "a moecapd daemon?") {
		t.Errorf("err %v (exit %d), want a usage error asking whether %s is a daemon", err, exitcode.Of(err), srv.URL)
	}
}
