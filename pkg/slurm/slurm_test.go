package slurm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseQueue(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]Task
		err  bool
	}{
		{"pending and running tasks", "12_0|13|12|0|RUNNING|None|n1|0:05|1:00:00\n12_1|12|12|1|PENDING|Resources||0:00|1:00:00\n",
			map[string]Task{
				"12_0": {JobID: "13", ArrayJobID: "12", TaskID: 0, State: "RUNNING", Reason: "None", Node: "n1", Elapsed: "0:05", Limit: "1:00:00", Source: "squeue"},
				"12_1": {JobID: "12", ArrayJobID: "12", TaskID: 1, State: "PENDING", Reason: "Resources", Elapsed: "0:00", Limit: "1:00:00", Source: "squeue"},
			}, false},
		{"a job that is no array task is ignored", "7|7|7|N/A|RUNNING|None|n1|0:01|UNLIMITED\n", map[string]Task{}, false},
		{"empty", "", map[string]Task{}, false},
		{"wrong field count", "12_0|13|12\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]Task{}
			err := parseQueue(tc.in, got)
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want error %v", err, tc.err)
			}
			if !tc.err && !mapsEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func mapsEqual(a, b map[string]Task) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestParseAcct(t *testing.T) {
	in := "12_0|13|COMPLETED|0:0|2026-12-01T10:00:00|2026-12-01T10:05:00|n1\n" +
		"12_1|14|CANCELLED by 0|0:15|2026-12-01T10:00:00|2026-12-01T10:01:00|n2\n" +
		"12_[2-5]|12|PENDING|0:0|Unknown|Unknown|None assigned\n"
	got := map[string]Task{}
	if err := parseAcct(in, got); err != nil {
		t.Fatal(err)
	}
	want := map[string]Task{
		"12_0": {JobID: "13", ArrayJobID: "12", TaskID: 0, State: "COMPLETED", ExitCode: "0:0", Start: "2026-12-01T10:00:00", End: "2026-12-01T10:05:00", Node: "n1", Source: "sacct"},
		"12_1": {JobID: "14", ArrayJobID: "12", TaskID: 1, State: "CANCELLED", ExitCode: "0:15", Start: "2026-12-01T10:00:00", End: "2026-12-01T10:01:00", Node: "n2", Source: "sacct"},
	}
	if !mapsEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestTaskActive(t *testing.T) {
	for state, want := range map[string]bool{"PENDING": true, "RUNNING": true, "COMPLETING": true, "REQUEUED": true,
		"COMPLETED": false, "CANCELLED": false, "TIMEOUT": false, "FAILED": false, "NODE_FAIL": false} {
		if got := (Task{State: state}).Active(); got != want {
			t.Errorf("%s: active %v, want %v", state, got, want)
		}
	}
}

func TestSubmitArgv(t *testing.T) {
	s := SubmitSpec{Name: "moecapd-8gpu", GPUs: 8, Tasks: 3, MaxParallel: 2, Partition: "h200", Account: "proj x",
		Time: "8:00:00", Output: "/r/.slurm/logs/%A_%a.out", Extra: []string{"--exclusive", "--container-image=nvcr.io/a b"},
		Script: "/r/.slurm/task.sh", Args: []string{"/bin/moecapd", "slurm", "task", "--spec", "/r/x y.json"}}
	got := s.Argv()
	want := []string{"--parsable", "--job-name=moecapd-8gpu", "--gpus=8", "--nodes=1", "--ntasks=1", "--array=0-2%2",
		"--partition=h200", "--account=proj x", "--time=8:00:00", "--output=/r/.slurm/logs/%A_%a.out", "--open-mode=append",
		"--requeue", "--exclusive", "--container-image=nvcr.io/a b", "/r/.slurm/task.sh", "/bin/moecapd", "slurm", "task", "--spec", "/r/x y.json"}
	if !slices.Equal(got, want) {
		t.Errorf("argv\n got %q\nwant %q", got, want)
	}
}

// fakeBin puts an executable script named name on a fresh PATH.
func fakeBin(t *testing.T, name, body string) []string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return []string{"PATH=" + dir, "ARGV_FILE=" + filepath.Join(dir, "argv")}
}

// The values reach sbatch as the very argv elements they were, spaces, quotes and ';'
// included: no shell sits in between.
func TestSubmitPassesArgvVerbatim(t *testing.T) {
	env := fakeBin(t, "sbatch", `for a in "$@"; do printf '%s\0' "$a"; done > "$ARGV_FILE"; echo "4242;cluster"`+"\n")
	c := &CLI{Env: env}
	s := SubmitSpec{Name: "n", GPUs: 1, Tasks: 1, Account: `a'b; rm -rf /`, Script: "/s.sh", Args: []string{"x y", `"q"`, "$HOME"}}
	id, err := c.Submit(context.Background(), s)
	if err != nil || id != "4242" {
		t.Fatalf("Submit: %q, %v; want 4242", id, err)
	}
	b, err := os.ReadFile(strings.TrimPrefix(env[1], "ARGV_FILE="))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if !slices.Equal(got, s.Argv()) {
		t.Errorf("sbatch saw\n %q\nwant %q", got, s.Argv())
	}
}

func TestCLIErrors(t *testing.T) {
	t.Run("missing command", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := (&CLI{}).Queue(context.Background(), []string{"1"})
		if !errors.Is(err, ErrNoSlurm) || !strings.Contains(err.Error(), "squeue is not on PATH") {
			t.Errorf("err %v; want ErrNoSlurm naming squeue", err)
		}
	})
	t.Run("controller down", func(t *testing.T) {
		env := fakeBin(t, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1\n")
		_, err := (&CLI{Env: env}).Queue(context.Background(), []string{"1"})
		if !errors.Is(err, ErrController) || !strings.Contains(err.Error(), "SLURM_CONF") {
			t.Errorf("err %v; want ErrController with what to check", err)
		}
	})
	t.Run("aged-out jobs are not an error", func(t *testing.T) {
		env := fakeBin(t, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
		got, err := (&CLI{Env: env}).Queue(context.Background(), []string{"1"})
		if err != nil || len(got) != 0 {
			t.Errorf("got %v, %v; want no tasks and no error", got, err)
		}
	})
	t.Run("no accounting", func(t *testing.T) {
		env := fakeBin(t, "sacct", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1\n")
		_, err := (&CLI{Env: env}).Acct(context.Background(), []string{"1"})
		if !errors.Is(err, ErrNoAccounting) {
			t.Errorf("err %v; want ErrNoAccounting", err)
		}
	})
	t.Run("hung command", func(t *testing.T) {
		env := fakeBin(t, "squeue", "exec /bin/sleep 10\n")
		t0 := time.Now()
		_, err := (&CLI{Env: env, Timeout: 200 * time.Millisecond}).Queue(context.Background(), []string{"1"})
		if !errors.Is(err, ErrController) || time.Since(t0) > 5*time.Second {
			t.Errorf("err %v after %s; want ErrController within the timeout", err, time.Since(t0))
		}
	})
	t.Run("config", func(t *testing.T) {
		env := fakeBin(t, "scontrol", "printf 'JobRequeue              = 1\\nKillWait                = 30 sec\\nMaxArraySize            = 64\\nMinJobAge = 300 sec\\n'\n")
		got, err := (&CLI{Env: env}).ShowConfig(context.Background())
		if err != nil || got.KillWait != 30*time.Second || got.MaxArraySize != 64 {
			t.Errorf("ShowConfig %+v, %v; want KillWait 30s, MaxArraySize 64", got, err)
		}
	})
}

func TestReadTaskEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		ok   bool
		gpus []string
		err  bool
	}{
		{"array task with SLURM_JOB_GPUS", map[string]string{"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_JOB_ID": "12",
			"SLURM_JOB_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_RESTART_COUNT": "1"}, true, []string{"4", "5"}, false},
		{"only CUDA_VISIBLE_DEVICES", map[string]string{"SLURM_ARRAY_TASK_ID": "0", "CUDA_VISIBLE_DEVICES": "2"}, true, []string{"2"}, false},
		{"no GPUs", map[string]string{"SLURM_ARRAY_TASK_ID": "0"}, true, []string{}, false},
		{"outside Slurm", map[string]string{}, false, []string{}, false},
		{"bad index", map[string]string{"SLURM_ARRAY_TASK_ID": "x"}, false, []string{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, ok, err := ReadTaskEnv(func(k string) string { return tc.env[k] })
			if (err != nil) != tc.err || ok != tc.ok || !slices.Equal(e.GPUs, tc.gpus) {
				t.Errorf("got %+v ok %v err %v; want ok %v gpus %v error %v", e, ok, err, tc.ok, tc.gpus, tc.err)
			}
		})
	}
}

func TestRecordLatestAndSpec(t *testing.T) {
	root := t.TempDir()
	r, err := ReadRecord(root)
	if err != nil || len(r.Arrays) != 0 {
		t.Fatalf("fresh root: %+v, %v", r, err)
	}
	r.Arrays = []Array{{JobID: "10", Cells: []string{"a", "b"}}, {JobID: "11", Cells: []string{"b"}}}
	if err := WriteRecord(root, r); err != nil {
		t.Fatal(err)
	}
	r, err = ReadRecord(root)
	if err != nil {
		t.Fatal(err)
	}
	l := r.Latest()
	if l["a"].Key() != "10_0" || l["b"].Key() != "11_0" || !slices.Equal(r.JobIDs(), []string{"10", "11"}) {
		t.Errorf("latest a=%s b=%s ids %v; want 10_0, 11_0 (the resubmission wins), [10 11]", l["a"].Key(), l["b"].Key(), r.JobIDs())
	}
	p := Path(root, ArraysDir, "x.json")
	if err := WriteSpec(p, &Spec{SchemaVersion: SpecVersion, Cells: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	s, err := ReadSpec(p)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := s.CellAt(1); err != nil || id != "b" {
		t.Errorf("CellAt(1) = %q, %v", id, err)
	}
	if _, err := s.CellAt(2); err == nil {
		t.Error("CellAt(2) of 2 cells: no error")
	}
	if err := os.WriteFile(Path(root, JobsFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRecord(root); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Errorf("corrupt jobs.json: %v; want an error saying what to do", err)
	}
}

func TestScript(t *testing.T) {
	root := t.TempDir()
	p, err := WriteScript(root)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Fatalf("script %s: %v mode %v; want executable", p, err, fi.Mode())
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), `exec "$@"`) {
		t.Errorf("script:\n%s", b)
	}
}
