package main

// End-to-end tests of the results root's contracts: one runner per cell (the cell lock),
// cells identified by directory and manifest id together, strict settings, bounds and
// cell-id validation. The real binary, real sim servers, real files.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// Two launch-and-bench of one cell on one results root: the second is refused (exit 2,
// naming the first as holder) without touching the cell, and the first's result is intact.
func TestSecondRunnerOfACellRefused(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 100, 12)
	args := simArgs(results, cfg, 2, "--", "--sim-tpot", "10ms")
	first, out := startMoecapd(t, args...)
	dir, _ := waitBench(t, results)

	r := moecapd(t, nil, args...)
	if r.code != exitUsage {
		t.Fatalf("second runner: exit %d, want 2\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"cell " + filepath.Base(dir) + " is in use by PID " + strconv.Itoa(first.Process.Pid), "on host ", "since ", "launch-and-bench"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("second runner's error lacks %q:\n%s", want, r.stderr)
		}
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("first runner: %v\n%s", err, out)
	}
	d, m := onlyCell(t, results)
	if m.Status != cell.StatusOK || m.Metrics == nil || m.Metrics.Completed != 12 {
		t.Fatalf("first runner's cell: %s %+v; want ok with 12 requests", m.Status, m.Failure)
	}
	if m.Server.PID == 0 {
		t.Error("manifest lost the server PID")
	}
	if _, err := os.Stat(filepath.Join(results, cell.AttemptsDir)); !os.IsNotExist(err) {
		t.Errorf("the refused runner archived something: %v", err)
	}
	for _, f := range []string{cell.ServerLogFile, cell.ClientLogFile, cell.BenchFile} {
		if _, err := os.Stat(filepath.Join(d, f)); err != nil {
			t.Errorf("first runner's %s: %v", f, err)
		}
	}
	// The lock went with its holder: a third run takes the cell over, archiving the first.
	r = moecapd(t, nil, simArgs(results, cfg, 2, "--", "--sim-tpot", "1ms")...)
	if r.code != 0 {
		t.Fatalf("third run after the first finished: exit %d\n%s", r.code, r.stderr)
	}
	if old, _ := filepath.Glob(filepath.Join(results, cell.AttemptsDir, filepath.Base(d)+".*")); len(old) != 1 {
		t.Errorf("third run archived %v; want the first's result, once", old)
	}
}

// A launch-and-bench of a cell a matrix run is running is refused as well: the matrix and
// launch-and-bench share the cell lock.
func TestLaunchNextToMatrixRefused(t *testing.T) {
	results, locks := t.TempDir(), t.TempDir()
	c, out := startMoecapd(t, matrixRunArgs(results, locks, "--only", `^dsv2_lite\.1xA100`)...)
	slow := filepath.Join(results, "dsv2_lite.1xA100.32-8.bs4.sim")
	waitCellBench(t, slow)
	r := moecapd(t, nil, "launch-and-bench", "--backend", "sim", "--config", "../../testdata/matrix/tiny_dsv2_lite.yaml",
		"--batch-size", "4", "--hardware", "1xA100", "--sim-hardware", "A100", "--port", "0", "--results", results, "--log-format", "json")
	if r.code != exitUsage || !strings.Contains(r.stderr, "cell dsv2_lite.1xA100.32-8.bs4.sim is in use by PID "+strconv.Itoa(c.Process.Pid)) {
		t.Fatalf("launch-and-bench next to the matrix: exit %d\n%s\nwant 2 naming the matrix (PID %d) as holder", r.code, r.stderr, c.Process.Pid)
	}
	// A plan made meanwhile says who holds the cell.
	pl := moecapd(t, nil, "matrix", "plan", "--matrix", faultsMatrix, "--results", results)
	if pl.code != 0 || !strings.Contains(pl.stdout, "held now by PID "+strconv.Itoa(c.Process.Pid)) {
		t.Errorf("plan during the run: exit %d\n%s\nwant the slow cell shown held by PID %d", pl.code, pl.stdout, c.Process.Pid)
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("matrix run: %v\n%s", err, out)
	}
	if m, err := cell.ReadManifest(slow); err != nil || m.Status != cell.StatusOK {
		t.Fatalf("the matrix's cell: %+v %v; want ok", m, err)
	}
	if _, err := os.Stat(filepath.Join(results, cell.AttemptsDir)); !os.IsNotExist(err) {
		t.Errorf("something was archived: %v", err)
	}
}

// A copied cell directory is reported as mismatched and never decides a cell's status:
// --redo-failed does not rerun (and archive) an ok cell because a copy of a failed attempt
// sits next to it, and a directory named after a cell but holding another's manifest does
// not make that cell done.
func TestCopiedCellDirNotTrusted(t *testing.T) {
	results, locks := t.TempDir(), t.TempDir()
	const ok = "qwen1_5.1xH100.32-8.bs2.sim"
	only := `^qwen1_5\.1xH100\.32-8\.bs2\.sim$`
	if r := moecapd(t, nil, matrixRunArgs(results, locks, "--only", only)...); r.code != 0 {
		t.Fatalf("first run: exit %d\n%s", r.code, r.stderr)
	}
	okDir := filepath.Join(results, ok)
	m0, err := cell.ReadManifest(okDir)
	if err != nil || m0.Status != cell.StatusOK {
		t.Fatalf("first run's cell: %+v %v", m0, err)
	}
	// A copy of the cell as a failed attempt, next to it, under another name.
	copyDir(t, okDir, filepath.Join(results, ok+".bak"))
	bad := *m0
	bad.Status = cell.StatusFailed
	bad.Failure = &cell.Failure{Phase: cell.PhaseBench, Kind: exitcode.FailCrash, Message: "an old failure"}
	if err := cell.WriteManifest(filepath.Join(results, ok+".bak"), &bad); err != nil {
		t.Fatal(err)
	}
	// And the ok cell copied under the name of a cell that never ran.
	const never = "qwen1_5.1xH100.32-8.bs32.sim"
	copyDir(t, okDir, filepath.Join(results, never))

	r := moecapd(t, nil, matrixRunArgs(results, locks, "--only", only, "--redo-failed")...)
	if r.code != 0 {
		t.Fatalf("--redo-failed run: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "holds another cell's manifest") || !strings.Contains(r.stderr, ok+".bak") {
		t.Errorf("run did not report the copied directory:\n%s", r.stderr)
	}
	if m, _ := cell.ReadManifest(okDir); m == nil || m.Status != cell.StatusOK || !m.StartedAt.Equal(m0.StartedAt) {
		t.Errorf("the ok cell was rerun because of a copy: %+v", m)
	}
	if _, err := os.Stat(filepath.Join(results, cell.AttemptsDir)); !os.IsNotExist(err) {
		t.Errorf("the ok cell was archived: %v", err)
	}

	st := moecapd(t, nil, "matrix", "status", "--matrix", faultsMatrix, "--results", results, "--format", "markdown")
	if st.code != 0 {
		t.Fatalf("status: exit %d\n%s", st.code, st.stderr)
	}
	for _, want := range []string{
		"| Qwen1.5-MoE | 1xH100 | 32-8 | sim | 2 | ✅ Done |",            // from its own directory
		"| Qwen1.5-MoE | 1xH100 | 32-8 | sim | 32, 64, 128 | pending |", // the copy under bs32 is no result
		"mismatched  " + ok + ".bak: directory " + ok + ".bak holds the manifest of cell " + ok,
		"mismatched  " + never + ": directory " + never + " holds the manifest of cell " + ok,
	} {
		if !strings.Contains(st.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, st.stdout)
		}
	}
	if strings.Contains(st.stdout, "failed |") {
		t.Errorf("status counts the copied failure:\n%s", st.stdout)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v %s", from, to, err, out)
	}
}

// Duplicate keys are errors in every YAML moecapd reads: benchmark, matrix and settings.
func TestDuplicateYAMLKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bench := write("dup.yaml", "model_id: "+qwen+"\ntarget_input_tokens: 32\ntarget_output_tokens: 8\nnum_samples: 4\ndataset_names: [gsm8k]\nnum_samples: 400\n")
	mx := write("dup-matrix.yaml", "version: 1\ntasks:\n  32-8: {config: \""+filepath.Join(cwd(t), "../../testdata/matrix/tiny_{model}.yaml")+"\"}\ndefaults: {backends: [sim]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}}\n  g: {models: [dsv2_lite], hardware: [1xH100], tasks: {32-8: [2]}}\n")
	set := write("dup-settings.yaml", "grace: 5s\nbatch-size: 2\ngrace: 9s\n")
	good := tinyConfig(t, qwen, 32, 8, 4)
	results := filepath.Join(dir, "r")
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"benchmark", []string{"launch-and-bench", "--backend", "sim", "--config", bench, "--batch-size", "1", "--results", results},
			[]string{"dup.yaml:6", `"num_samples"`, "duplicate key (first at line 4)"}},
		{"matrix", []string{"matrix", "plan", "--matrix", mx, "--results", results},
			[]string{"dup-matrix.yaml:7", `"groups.g"`, "duplicate key (first at line 6)"}},
		{"settings", []string{"launch-and-bench", "--backend", "sim", "--config", good, "--results", results, "--settings", set, "--dry-run"},
			[]string{"dup-settings.yaml:3", `"grace"`, "duplicate key (first at line 1)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := moecapd(t, nil, c.args...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
	if _, err := os.Stat(results); !os.IsNotExist(err) {
		t.Errorf("a refused command created the results root")
	}
}

func cwd(t *testing.T) string {
	d, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// moecapd.yaml and MOECAP_* are typed by their flags: a duration needs a unit, a number must
// be one; the error names the key and where it came from. Precedence: flag > env > file.
func TestSettingsStrictTypes(t *testing.T) {
	dir := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	settingsFile := func(body string) string {
		p := filepath.Join(t.TempDir(), "moecapd.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--results", filepath.Join(dir, "r"), "--dry-run"}
	cases := []struct {
		name string
		file string
		env  []string
		want []string
	}{
		{"file duration without unit", "grace: 600\n", nil, []string{`key "grace"`, `got "600"`, "a duration with a unit"}},
		{"file duration not a duration", "grace: abc\n", nil, []string{`key "grace"`, `got "abc"`, "a duration with a unit"}},
		{"file integer in words", "num-samples: eight\n", nil, []string{`key "num-samples"`, `got "eight"`, "an integer"}},
		{"file bool", "offline: maybe\n", nil, []string{`key "offline"`, "true or false"}},
		{"file nested mapping", "grace: {s: 1}\n", nil, []string{`key "grace"`, "got a YAML mapping"}},
		{"file empty value", "grace:\n", nil, []string{`key "grace"`, "no value"}},
		{"file unknown key", "gracee: 5s\n", nil, []string{`key "gracee"`, "unknown key"}},
		{"env duration without unit", "", []string{"MOECAP_GRACE=600"}, []string{`MOECAP_GRACE="600"`, "a duration with a unit"}},
		{"env integer in words", "", []string{"MOECAP_NUM_SAMPLES=eight"}, []string{`MOECAP_NUM_SAMPLES="eight"`, "an integer"}},
		{"env port", "", []string{"MOECAP_PORT=80x"}, []string{`MOECAP_PORT="80x"`, "an integer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := base
			if c.file != "" {
				args = append(append([]string{}, base...), "--settings", settingsFile(c.file))
			}
			r := moecapd(t, c.env, args...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want 2\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}

	// Well-typed values are taken, in the documented order: flag > MOECAP_* > file.
	file := settingsFile("grace: 600s\nnum-samples: 8\nresults: " + filepath.Join(dir, "from-file") + "\n")
	dry := func(env []string, extra ...string) string {
		t.Helper()
		args := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--dry-run", "--settings", file}
		r := moecapd(t, env, append(args, extra...)...)
		if r.code != 0 {
			t.Fatalf("dry run: exit %d\n%s", r.code, r.stderr)
		}
		return r.stdout
	}
	if out := dry(nil); !strings.Contains(out, "results: "+filepath.Join(dir, "from-file")) {
		t.Errorf("file's results not used:\n%s", out)
	}
	if out := dry([]string{"MOECAP_RESULTS=" + filepath.Join(dir, "from-env")}); !strings.Contains(out, "results: "+filepath.Join(dir, "from-env")) {
		t.Errorf("env did not win over the file:\n%s", out)
	}
	if out := dry([]string{"MOECAP_RESULTS=" + filepath.Join(dir, "from-env")}, "--results", filepath.Join(dir, "from-flag")); !strings.Contains(out, "results: "+filepath.Join(dir, "from-flag")) {
		t.Errorf("flag did not win over env:\n%s", out)
	}
	// A bad env value behind a flag that overrides it is not read at all.
	if out := dry([]string{"MOECAP_GRACE=600"}, "--grace", "5s"); !strings.Contains(out, "cell:") {
		t.Errorf("dry run output:\n%s", out)
	}
}

// Every number a user gives is bounded: exit 2 with the limit in the message, before any
// server starts or any directory is written.
func TestBoundsRefusedBeforeServer(t *testing.T) {
	dir := t.TempDir()
	results := filepath.Join(dir, "r")
	good := tinyConfig(t, qwen, 32, 8, 4)
	bench := func(in, out, samples string) string {
		p := filepath.Join(t.TempDir(), "b.yaml")
		body := "dataset_names: [gsm8k]\nmodel_id: " + qwen + "\ntarget_input_tokens: " + in + "\ntarget_output_tokens: " + out + "\nnum_samples: " + samples + "\n"
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	la := func(cfg string, extra ...string) []string {
		return append([]string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--port", "0", "--results", results}, extra...)
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"num_samples 1e9", la(bench("32", "8", "1000000000")), []string{`"num_samples"`, "got 1000000000", "1 to 1000000"}},
		{"target_input_tokens max int64", la(bench("9223372036854775807", "8", "4")), []string{`"target_input_tokens"`, "got 9223372036854775807", "1 to 1048576"}},
		{"target_output_tokens", la(bench("32", "2000000", "4")), []string{`"target_output_tokens"`, "1 to 1048576"}},
		{"workload product", la(bench("1000000", "1000", "1000")), []string{"1000 requests", "more than the limit of 67108864"}},
		{"--num-samples", la(good, "--num-samples", "5000000"), []string{`"--num-samples"`, "0 to 1000000"}},
		{"--num-samples product", la(bench("100000", "8", "4"), "--num-samples", "1000"), []string{"--num-samples with", "more than the limit"}},
		{"--batch-size", la(good, "--batch-size", "100000"), []string{`"--batch-size"`, "1 to 4096"}},
		{"--tp", la(good, "--tp", "128"), []string{`"--tp"`, "1 to 64"}},
		{"--port", la(good, "--port", "70000"), []string{`"--port"`, "0 to 65535"}},
		{"--grace", la(good, "--grace", "2h"), []string{`"--grace"`, "0s to 1h0m0s"}},
		{"--grace negative", la(good, "--grace", "-1s"), []string{`"--grace"`, "got -1s"}},
		{"--ready-timeout", la(good, "--ready-timeout", "1ms"), []string{`"--ready-timeout"`, "100ms to 24h0m0s"}},
		{"--gpu-interval", la(good, "--gpu-interval", "1h"), []string{`"--gpu-interval"`, "10ms to 1m0s"}},
		{"--warmup", la(good, "--warmup", "20000"), []string{`"--warmup"`, "0 to 10000"}},
		{"--gpu-hour-usd NaN", la(good, "--gpu-hour-usd", "NaN"), []string{`"--gpu-hour-usd"`, "got NaN"}},
		{"matrix --retries", []string{"matrix", "run", "--matrix", faultsMatrix, "--results", results, "--retries", "1000"}, []string{`"--retries"`, "0 to 10"}},
		{"matrix --cell-timeout", []string{"matrix", "run", "--matrix", faultsMatrix, "--results", results, "--cell-timeout", "1000h"}, []string{`"--cell-timeout"`, "0s to 168h0m0s"}},
		{"sim-server --sim-workers", []string{"sim-server", "--flavor", "sglang", "--model-path", qwen, "--port", "0", "--sim-workers", "100000"}, []string{"--sim-workers 100000: expected at most 64"}},
		{"sim-server --sim-time-scale NaN", []string{"sim-server", "--flavor", "sglang", "--model-path", qwen, "--port", "0", "--sim-time-scale", "NaN"}, []string{"--sim-time-scale at most 1000"}},
		{"bench --num-samples", []string{"bench", "--api-url", "http://127.0.0.1:1/v1/completions", "--model_name", qwen, "--datasets", "random",
			"--target-input-tokens", "32", "--target-output-tokens", "8", "--num-samples", "1000000000"}, []string{`"num_samples"`, "1 to 1000000"}},
		{"matrix --port + --slots", []string{"matrix", "run", "--matrix", faultsMatrix, "--results", results, "--port", "65530", "--slots", "10"}, []string{"slot ports run past 65535"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t0 := time.Now()
			r := moecapd(t, nil, c.args...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want 2\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "panic") || time.Since(t0) > 20*time.Second {
				t.Errorf("took %s or panicked:\n%s", time.Since(t0), r.stderr)
			}
		})
	}
	if _, err := os.Stat(results); !os.IsNotExist(err) {
		t.Errorf("a refused command created the results root (a server may have started)")
	}
}

// Cell-id parts are validated: nothing a hardware label says can write outside the results
// root.
func TestCellIDPartsValidated(t *testing.T) {
	dir := t.TempDir()
	results := filepath.Join(dir, "r")
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	for _, hw := range []string{"../x", "a/b", "1xH100\nevil", "..", "1x H100", "1xH100.bs1"} {
		t.Run(strconv.Quote(hw), func(t *testing.T) {
			r := moecapd(t, nil, "launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--port", "0",
				"--results", results, "--hardware", hw)
			if r.code != exitUsage || !strings.Contains(r.stderr, "--hardware") || !strings.Contains(r.stderr, "cannot be part of a cell id") {
				t.Fatalf("exit %d, want 2 naming --hardware\n%s", r.code, r.stderr)
			}
		})
	}
	// The config lives in another temp dir: dir must still be empty (nothing at ../x).
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("something was written next to the results root: %v", ents)
	}
	if _, err := os.Stat(results); !os.IsNotExist(err) {
		t.Errorf("results root created for a refused cell id")
	}
}

// --results naming a file is a usage error (exit 2), in every command that reads a root.
func TestResultsIsAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "results")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	for _, args := range [][]string{
		{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--port", "0", "--results", f},
		{"matrix", "run", "--matrix", faultsMatrix, "--results", f},
		{"matrix", "plan", "--matrix", faultsMatrix, "--results", f},
		{"matrix", "status", "--matrix", faultsMatrix, "--results", f},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			r := moecapd(t, nil, args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, "is a file, not a directory") {
				t.Fatalf("exit %d, want 2 saying the results root is a file\n%s", r.code, r.stderr)
			}
		})
	}
}

// A metrics endpoint on all interfaces works but is warned about: it is unauthenticated.
func TestMetricsAddrAllInterfacesWarns(t *testing.T) {
	results, locks := t.TempDir(), t.TempDir()
	r := moecapd(t, nil, matrixRunArgs(results, locks, "--only", `^qwen1_5\.1xH100\.32-8\.bs2\.sim$`, "--metrics-addr", "0.0.0.0:0")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "metrics endpoint (--metrics-addr) binds all network interfaces and has no authentication") {
		t.Errorf("no warning for metrics on all interfaces:\n%s", r.stderr)
	}
	r = moecapd(t, nil, matrixRunArgs(results, locks, "--only", `^qwen1_5\.1xH100\.32-8\.bs2\.sim$`, "--metrics-addr", "127.0.0.1:0")...)
	if r.code != 0 || strings.Contains(r.stderr, "binds all network interfaces") {
		t.Errorf("loopback metrics: exit %d, warned anyway:\n%s", r.code, r.stderr)
	}
}
