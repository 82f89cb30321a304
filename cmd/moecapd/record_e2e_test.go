package main

// End-to-end tests of the record step: a cell is ok only with every file its manifest
// names, and a manifest that cannot be written (a path taken, a full or read-only disk)
// fails the cell and the command with the table's setup code (2), the summary printed.

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// oneMatrixCell is the faults matrix's healthy batch-2 cell.
const oneMatrixCell = `^qwen1_5\.1xH100\.32-8\.bs2\.`

// A file the manifest names (server.log) deleted during the bench: the cell is not ok
// (record/missing_file, exit 5), and the message names the file.
func TestMissingFileFailsCell(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	c, out := startMoecapd(t, simArgs(results, cfg, 2, "--", "--sim-tpot", "100ms")...)
	dir, _ := waitBench(t, results)
	if err := os.Remove(filepath.Join(dir, cell.ServerLogFile)); err != nil {
		t.Fatal(err)
	}
	err := c.Wait()
	if code := exitCode(err); code != int(exitcode.Bench) {
		t.Fatalf("exit %d, want 5\n%s", code, out)
	}
	_, m := onlyCell(t, results)
	if m.Status != cell.StatusFailed || m.Failure == nil || m.Failure.Phase != cell.PhaseRecord || m.Failure.Kind != exitcode.FailMissingFile ||
		!strings.Contains(m.Failure.Message, cell.ServerLogFile) {
		t.Fatalf("status %s failure %+v, want failed record/missing_file naming server.log", m.Status, m.Failure)
	}
	for _, f := range []string{cell.BenchFile, cell.ServerLogFile, cell.ClientLogFile} {
		if !slices.Contains(m.Files, f) {
			t.Errorf("manifest files %q do not name %s", m.Files, f)
		}
	}
	if !strings.Contains(out.String(), "missing_file") {
		t.Errorf("the summary does not say the file is missing:\n%s", out)
	}
}

// A manifest path taken by a directory during the bench (its temp file cannot be renamed
// there): matrix run counts the cell failed (record/manifest_write, not "1 ok"), prints the
// summary, and exits 2.
func TestMatrixManifestUnwritable(t *testing.T) {
	results, locks := t.TempDir(), t.TempDir()
	c, out := startMoecapd(t, matrixRunArgs(results, locks, "--only", oneMatrixCell, "--", "--sim-tpot", "100ms")...)
	dir := filepath.Join(results, "qwen1_5.1xH100.32-8.bs2.sim")
	waitCellBench(t, dir)
	mf := filepath.Join(dir, cell.ManifestFile)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A phase write may put the file back between the two calls: try again.
		os.Remove(mf)
		if err := os.Mkdir(mf, 0o755); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("cannot put a directory at %s: %v", mf, err)
		}
	}
	if err := os.WriteFile(filepath.Join(mf, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	checkUnrecorded(t, c.Wait(), out.String(), "final manifest could not be written")
}

// The results disk full when the cell's final manifest must be written (a 4 MiB tmpfs
// filled during teardown): exit 2 with the disk-full message, the summary printed. Root only
// (it mounts the tmpfs).
func TestMatrixResultsDiskFull(t *testing.T) {
	results := tmpfs(t, "size=4m")
	locks := t.TempDir()
	// The server ignores SIGTERM: teardown lasts the grace (3 s), time to fill the disk.
	c, out := startMoecapd(t, matrixRunArgs(results, locks, "--only", oneMatrixCell, "--grace", "3s",
		"--", "--sim-fault", "ignore-sigterm")...)
	dir := filepath.Join(results, "qwen1_5.1xH100.32-8.bs2.sim")
	waitManifest(t, results, "teardown", func(d string, m *cell.Manifest) bool { return d == dir && m.Phase == cell.PhaseTeardown })
	fill(t, filepath.Join(results, "filler"))
	checkUnrecorded(t, c.Wait(), out.String(), "the disk of the results directory is full")
}

// A results root on a read-only file system: matrix run and launch-and-bench exit 2 with
// the read-only message, nothing started. Root only (it mounts the tmpfs).
func TestResultsReadOnly(t *testing.T) {
	results := tmpfs(t, "size=1m")
	if err := syscall.Mount("", results, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", results, err)
	}
	for name, args := range map[string][]string{
		"matrix run":       matrixRunArgs(results, t.TempDir(), "--only", oneMatrixCell),
		"launch-and-bench": simArgs(results, tinyConfig(t, qwen, 32, 8, 4), 2),
	} {
		t.Run(name, func(t *testing.T) {
			r := moecapd(t, nil, args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, "read-only file system: pass --results on a writable disk") {
				t.Fatalf("exit %d, want 2 with the read-only message\n%s", r.code, r.stderr)
			}
		})
	}
}

// checkUnrecorded checks a matrix run whose one cell's final manifest could not be written.
func checkUnrecorded(t *testing.T, err error, out, why string) {
	t.Helper()
	if code := exitCode(err); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, out)
	}
	if !strings.Contains(out, "matrix: 0 ok, 1 failed") || !strings.Contains(out, why) {
		t.Errorf("output does not count the cell failed or say %q:\n%s", why, out)
	}
	var row string
	for l := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(l, "qwen1_5.1xH100.32-8.bs2.sim ") {
			row = l
		}
	}
	if !strings.Contains(row, " failed ") || !strings.Contains(row, "manifest_write in record") {
		t.Errorf("summary row %q, want the cell failed with manifest_write in record\n%s", row, out)
	}
}

// tmpfs mounts a tmpfs with the given options on a fresh directory, unmounted at the end;
// it skips the test where this process may not mount (not root, no CAP_SYS_ADMIN).
func tmpfs(t *testing.T, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): needs root", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes path until its disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v, want ENOSPC in the end", path, err)
			}
			return
		}
	}
}
