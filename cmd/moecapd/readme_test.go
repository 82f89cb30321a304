package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// readmeCommands are the `bin/moecapd …` lines of README.md's code blocks, with the exit
// code a trailing "# exit N" comment promises (0 without one).
func readmeCommands(t *testing.T) []struct {
	line string
	exit int
} {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	exitRe := regexp.MustCompile(`#\s*exit (\d+)`)
	var out []struct {
		line string
		exit int
	}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "    ") {
			continue // code blocks are indented
		}
		l = strings.TrimSpace(l)
		l = strings.TrimPrefix(l, "make build && ")
		if !strings.HasPrefix(l, "bin/moecapd ") {
			continue
		}
		code := 0
		if m := exitRe.FindStringSubmatch(l); m != nil {
			code, _ = strconv.Atoi(m[1])
		}
		out = append(out, struct {
			line string
			exit int
		}{l, code})
	}
	return out
}

// needsGPU says whether a README command needs a GPU node, conda or a Slurm cluster: a
// real backend that is not a dry run, doctor (it checks conda envs), or `slurm` (it talks to
// the cluster the README's block starts; the Slurm e2e tests run those commands against a
// private cluster of their own).
func needsGPU(l string) bool {
	if strings.Contains(l, " doctor") || strings.HasPrefix(l, "bin/moecapd slurm ") {
		return true
	}
	real := strings.Contains(l, "--backend sglang") || strings.Contains(l, "--backend vllm")
	return real && !strings.Contains(l, "--dry-run")
}

// readmeQuickOnly narrows the README's sim-matrix commands to two cells outside
// `make test-e2e`: the whole matrix (130 cells) takes minutes; `make test` runs the same
// commands, plan, run, status and report, with plan and run on the cells this selects.
const readmeQuickOnly = `^qwen1_5\.1xH100\.4k-1k\.`

// TestReadmeCommands runs every GPU-free command README.md shows, as shown (bash, from a
// directory laid out like the repository root), in order, and checks the exit code the
// README promises. A README change that breaks a command breaks this test. Outside
// `make test-e2e` (MOECAPD_E2E=1) the sim matrix's plan and run get --only readmeQuickOnly.
func TestReadmeCommands(t *testing.T) {
	cmds := readmeCommands(t)
	full := launcher.E2E()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(root, "bin", "moecapd")); err != nil {
		t.Fatal(err)
	}
	configs, _ := filepath.Abs("../../configs")
	if err := os.Symlink(configs, filepath.Join(root, "configs")); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, c := range cmds {
		if needsGPU(c.line) {
			continue
		}
		ran++
		line := c.line
		if !full && (strings.HasPrefix(line, "bin/moecapd matrix plan --matrix configs/matrix-sim.yaml") ||
			strings.HasPrefix(line, "bin/moecapd matrix run --matrix configs/matrix-sim.yaml")) {
			line += " --only '" + readmeQuickOnly + "'"
		}
		t.Run(c.line, func(t *testing.T) {
			// A hang guard, not a speed claim: the whole sim matrix took 7 to 10 minutes on a
			// 2-core machine, more under load (README "A fresh machine" has the numbers).
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-c", line)
			cmd.Dir = root
			// At the deadline the whole command (bash, moecapd, its servers) gets SIGTERM, as
			// a user's ^C would, so moecapd tears its cells down; SIGKILL 30 s later.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
			cmd.WaitDelay = 30 * time.Second
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.exit {
				tail := out.String()
				if len(tail) > 3000 {
					tail = tail[len(tail)-3000:]
				}
				t.Errorf("exit %d, README promises %d\n%s", code, c.exit, tail)
			}
		})
	}
	// The sim matrix, its status and report, and the dry run at least.
	if ran < 5 {
		t.Errorf("ran %d README commands; the README lost its GPU-free examples?", ran)
	}
	if _, err := os.Stat(filepath.Join(root, "results-sim", "report", "index.html")); err != nil {
		t.Errorf("the README's report command wrote no report: %v", err)
	}
}

// TestUserProblemsExit2: problems of the user's setup or input are exit 2 (usage/config),
// never 1 (internal), and say what to do.
func TestUserProblemsExit2(t *testing.T) {
	empty := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"report on a directory without cells", []string{"report", "--results", empty}, "no cell"},
		{"doctor finds problems", []string{"doctor", "--conda-root", filepath.Join(empty, "no-conda")}, "problem(s) found"},
		{"launch-and-bench with a bad --progress", []string{"launch-and-bench", "--backend", "sim", "--config", "../../configs/fixed_4k_1k_qwen1_5.yaml",
			"--batch-size", "1", "--results", empty, "--progress", "sometimes"}, "--progress"},
		// A flag's problem names the flag, not the benchmark file.
		{"misspelt --backend", []string{"launch-and-bench", "--backend", "sglnag", "--config", "../../configs/fixed_4k_1k_qwen1_5.yaml",
			"--batch-size", "1", "--results", empty, "--dry-run"}, `--backend: got "sglnag", expected sglang, vllm or sim (did you mean "sglang"?)`},
		{"missing --batch-size", []string{"launch-and-bench", "--backend", "sim", "--config", "../../configs/fixed_4k_1k_qwen1_5.yaml",
			"--results", empty, "--dry-run"}, "--batch-size: required"},
		{"--only that matches no cell", []string{"matrix", "run", "--matrix", "../../configs/matrix-sim.yaml", "--results", empty,
			"--only", "nomatch"}, `--only "nomatch" matches none`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := moecapd(t, nil, c.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr+r.stdout, c.want) {
				t.Errorf("exit %d, want 2 with %q\nstdout: %s\nstderr: %s", r.code, c.want, r.stdout, r.stderr)
			}
		})
	}
}

// TestSimServerHelpIsOnlyHelp: --help prints the help and starts nothing.
func TestSimServerHelpIsOnlyHelp(t *testing.T) {
	r := moecapd(t, nil, "sim-server", "--help")
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "sim: started") || !strings.Contains(r.stdout, "sim-server behaves like") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s\nwant exit 0 and the help only", r.code, r.stdout, r.stderr)
	}
}

// TestReadmeDryRunMatches: the server and client command lines README.md shows for the
// `--dry-run` example are, word for word from `python` on, the argv the dry run prints
// (with <cell> the cell directory it names), so the example cannot drift from what runs.
func TestReadmeDryRunMatches(t *testing.T) {
	const cmdLine = "bin/moecapd launch-and-bench --backend sglang --config configs/fixed_4k_1k_qwen1_5.yaml --batch-size 1 --dry-run"
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	at := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == cmdLine {
			at = i
		}
	}
	if at < 0 {
		t.Fatalf("README.md no longer shows %q", cmdLine)
	}
	// The code block after it: logical lines (backslash continuations joined), comments out.
	var logical []string
	cur := ""
	for _, l := range lines[at+1:] {
		if strings.TrimSpace(l) == "" {
			if len(logical) > 0 || cur != "" {
				break
			}
			continue
		}
		if !strings.HasPrefix(l, "    ") {
			break
		}
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") {
			continue
		}
		cur += " " + strings.TrimSuffix(l, "\\")
		if !strings.HasSuffix(l, "\\") {
			logical, cur = append(logical, strings.TrimSpace(cur)), ""
		}
	}
	if len(logical) != 2 {
		t.Fatalf("want the server line and the client line after the dry-run command, got %q", logical)
	}
	results := filepath.Join(t.TempDir(), "results")
	r := moecapd(t, nil, "launch-and-bench", "--backend", "sglang", "--config", "configs/fixed_4k_1k_qwen1_5.yaml",
		"--batch-size", "1", "--dry-run", "--results", results)
	if r.code != 0 {
		t.Fatalf("dry run: exit %d\n%s", r.code, r.stderr)
	}
	var cellDir string
	argvs := map[string][]string{}
	section := ""
	for _, l := range strings.Split(r.stdout, "\n") {
		switch {
		case strings.HasPrefix(l, "results:"):
			cellDir = strings.TrimSpace(strings.TrimPrefix(l, "results:"))
		case strings.HasPrefix(l, "server argv:"):
			section = "server"
		case strings.HasPrefix(l, "client argv"):
			section = "client"
		case strings.HasPrefix(l, "  \"") && section != "":
			s, err := strconv.Unquote(strings.TrimSpace(l))
			if err != nil {
				t.Fatalf("argv line %q: %v", l, err)
			}
			argvs[section] = append(argvs[section], s)
		default:
			section = ""
		}
	}
	fromPython := func(words []string) []string {
		for i, w := range words {
			if w == "python" {
				return words[i:]
			}
		}
		return nil
	}
	for i, side := range []string{"server", "client"} {
		want := fromPython(strings.Fields(strings.ReplaceAll(logical[i], "<cell>", cellDir)))
		got := fromPython(argvs[side])
		if want == nil || strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("README's %s line, from python on:\n  %s\nthe dry run's:\n  %s", side, strings.Join(want, " "), strings.Join(got, " "))
		}
	}
}
