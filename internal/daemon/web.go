package daemon

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/report"
)

//go:embed web
var webFiles embed.FS

// webHandler serves the page at / from the binary (no CDN: it works offline).
func webHandler() http.Handler {
	sub, _ := fs.Sub(webFiles, "web")
	return http.FileServer(http.FS(sub))
}

// ReportsDir is where the daemon keeps the one-cell reports its page links, under the
// store's directory (never served from anywhere else).
const ReportsDir = "reports"

// validCellID refuses what is not a cell directory's name (a path, a dot name).
func validCellID(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/\\\x00") && !strings.HasPrefix(id, ".")
}

// finishedCell is the job's spec of a cell of that id the daemon finished (the last job
// that ran it), or false.
func (d *Daemon) finishedCell(id string) (Spec, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var best *Job
	for _, c := range d.cells {
		if c.ID == id && c.Final() && c.State != CellCancelled {
			if j := d.jobs[c.Job]; j != nil && (best == nil || j.Seq > best.Seq) {
				best = j
			}
		}
	}
	if best == nil {
		return Spec{}, false
	}
	return best.Spec, true
}

// cellReport serves a finished cell's report page: the report code run for that one cell
// into <results>/.daemon/reports/<cell>/ (again whenever its manifest is newer than the
// page), then that directory read-only. Only cells of the daemon's jobs; the page is the
// report's, every value escaped by its templates.
func (s *Server) cellReport(w http.ResponseWriter, r *http.Request, _ string) {
	id := r.PathValue("id")
	if !validCellID(id) {
		s.refuse(w, r, 400, fmt.Sprintf("cell %q: not a cell id", id))
		return
	}
	spec, ok := s.D.finishedCell(id)
	if !ok {
		writeJSON(w, 404, map[string]string{"error": fmt.Sprintf("cell %q: no finished cell of that id in the daemon's jobs (moecapd jobs lists them)", id)})
		return
	}
	results := s.D.o.ResultsFlag
	out := filepath.Join(results, StoreDir, ReportsDir, id)
	if err := s.renderReport(results, out, id, spec); err != nil {
		code := 500
		if errors.Is(err, report.ErrNoCells) || errors.Is(err, fs.ErrNotExist) {
			code = 404
		}
		s.Log.Warn("cell report not rendered", zap.String("cell", id), zap.Error(err))
		writeJSON(w, code, map[string]string{"error": fmt.Sprintf("the report of cell %s: %v", id, err)})
		return
	}
	http.StripPrefix("/cells/"+id+"/report", http.FileServer(http.Dir(out))).ServeHTTP(w, r)
}

// renderReport writes the cell's one-cell report unless the page is newer than the cell's
// manifest. One at a time: two page views of a fresh cell render it once.
func (s *Server) renderReport(results, out, id string, spec Spec) error {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	man, err := os.Stat(filepath.Join(results, id, cell.ManifestFile))
	if err != nil {
		return err
	}
	if page, err := os.Stat(filepath.Join(out, report.IndexFile)); err == nil && page.ModTime().After(man.ModTime()) {
		return nil
	}
	o := s.D.o
	_, err = app.Report(app.ReportRequest{Results: results, Out: out, ConfigsDir: o.ConfigsDir, Matrix: spec.Matrix,
		Title: "moecapd · " + id, Cell: id, Log: s.Log})
	return err
}
