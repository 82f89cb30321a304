package sim

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// These tests run the real binary: faults are about processes, exit codes and signals.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := launcher.RunTests(m.Run)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func moecapdBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds cmd/moecapd; skipped with -short")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "moecapd-sim-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "moecapd")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/moecapd/moecapd/cmd/moecapd")
		cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/moecapd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a running sim-server with its output collected line by line.
type proc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{}
	done  chan struct{}
	err   error
}

func startSim(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(moecapdBinary(t), append([]string{"sim-server"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A real pipe handed to the child, not an io.Writer: with a writer, Wait would also
	// wait for the workers, which hold the pipe open after the leader dies.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	p := &proc{cmd: cmd, more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitLine returns the first output line matching re, failing after timeout.
func (p *proc) waitLine(t *testing.T, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if m := rx.FindStringSubmatch(l); m != nil {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no output line matching %q within %v; output:\n%s", re, timeout, p.output())
		}
	}
}

func (p *proc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process still running after %v; output:\n%s", timeout, p.output())
	}
	time.Sleep(50 * time.Millisecond) // let the reader drain the last lines
	return p.cmd.ProcessState.ExitCode()
}

var simArgs = []string{"--flavor", "sglang", "--model-path", qwenPath, "--port", "0", "--sim-time-scale", "0.01"}

func TestProcessStartFaults(t *testing.T) {
	for _, tc := range []struct {
		fault string
		want  string
	}{
		{FaultOOMOnStart, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free."},
		{FaultExitOnStart, "Traceback (most recent call last):"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			p := startSim(t, nil, append(simArgs, "--sim-fault", tc.fault)...)
			if code := p.exitCode(t, 20*time.Second); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if out := p.output(); !strings.Contains(out, tc.want) || strings.Contains(out, "sim: ready") {
				t.Errorf("output does not hold %q (or says ready):\n%s", tc.want, out)
			}
		})
	}
}

func TestProcessPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	p := startSim(t, nil, "--flavor", "vllm", "--model", qwenPath, "--port", port)
	if code := p.exitCode(t, 20*time.Second); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if out := p.output(); !strings.Contains(out, "OSError: [Errno 98] Address already in use") {
		t.Errorf("no address-in-use line:\n%s", out)
	}
}

func TestProcessStartedLineReadyAndSIGTERM(t *testing.T) {
	argvFile := filepath.Join(t.TempDir(), "argv.json")
	recDir := t.TempDir()
	p := startSim(t, []string{"CUDA_VISIBLE_DEVICES=3,5", "MOECAPD_SIM_ARGV_FILE=" + argvFile, "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=" + recDir, "MOE_CAP_ENABLE_EXPERT_PATCHING="},
		"--flavor", "vllm", "--model", qwenPath, "--port", "0", "--trust-remote-code", "--mem-fraction-static", "0.8", "--sim-startup", "300ms")
	started := p.waitLine(t, `^sim: started (.*)$`, 20*time.Second)[1]
	for _, want := range []string{`"CUDA_VISIBLE_DEVICES":"3,5"`, `"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR":"` + recDir + `"`, `"MOE_CAP_ENABLE_EXPERT_PATCHING":""`, `"--mem-fraction-static","0.8"`} {
		if !strings.Contains(started, want) {
			t.Errorf("started line %s lacks %s", started, want)
		}
	}
	addr := p.waitLine(t, `^sim: listening addr=(\S+)`, 20*time.Second)[1]
	p.waitLine(t, `Application startup complete\.`, 5*time.Second)
	p.waitLine(t, `^sim: ready unix_ns=\d+$`, 5*time.Second)
	out := p.output()
	if n := strings.Count(out, "Loading safetensors checkpoint shards:"); n != 10 {
		t.Errorf("%d loading progress lines, want 10", n)
	}
	if strings.Index(out, "100% Completed") > strings.Index(out, "sim: listening") {
		t.Errorf("listened before loading finished:\n%s", out)
	}
	if !strings.Contains(out, `ignoring server flag "--mem-fraction-static 0.8"`) {
		t.Errorf("ignored flag not logged:\n%s", out)
	}
	if b, err := os.ReadFile(argvFile); err != nil || strings.TrimSpace(string(b)) != started {
		t.Errorf("MOECAPD_SIM_ARGV_FILE holds %q (%v), want the started JSON %q", b, err, started)
	}
	resp, err := http.Get("http://" + addr + "/get_model_info")
	if err != nil || resp.StatusCode != 404 {
		t.Errorf("vllm /get_model_info: %v %v, want 404", resp, err)
	}
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	if code := p.exitCode(t, 10*time.Second); code != 0 {
		t.Errorf("exit code after SIGTERM %d, want 0", code)
	}
}

func alive(pid int) bool {
	// kill(pid, 0) succeeds on zombies, and an orphan's zombie may never be reaped in a
	// container, so look at the state too.
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func TestProcessWorkersOutliveLeader(t *testing.T) {
	p := startSim(t, nil, append(simArgs, "--sim-workers", "2")...)
	p.waitLine(t, `^sim: ready`, 20*time.Second)
	leader := p.cmd.Process.Pid
	var workers []int
	for rank := range 2 {
		m := p.waitLine(t, fmt.Sprintf(`^sim: worker process rank=%d pid=(\d+) pgid=(-?\d+)`, rank), 10*time.Second)
		pid, _ := strconv.Atoi(m[1])
		if m[2] != strconv.Itoa(leader) {
			t.Errorf("worker %d in process group %s, want the leader's %d", pid, m[2], leader)
		}
		workers = append(workers, pid)
	}
	syscall.Kill(leader, syscall.SIGKILL)
	p.exitCode(t, 5*time.Second)
	time.Sleep(300 * time.Millisecond)
	for _, w := range workers {
		if !alive(w) {
			t.Errorf("worker %d died with the leader; it must wait for the group kill", w)
		}
	}
	syscall.Kill(-leader, syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for _, w := range workers {
		for alive(w) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(w) {
			t.Errorf("worker %d survived SIGKILL to its group", w)
		}
	}
}

func TestProcessIgnoreSIGTERMAndNeverReady(t *testing.T) {
	p := startSim(t, nil, append(simArgs, "--sim-fault", FaultIgnoreSIGTERM)...)
	p.waitLine(t, `^sim: ready`, 20*time.Second)
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		t.Fatalf("ignore-sigterm server exited on SIGTERM:\n%s", p.output())
	case <-time.After(500 * time.Millisecond):
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.exitCode(t, 5*time.Second)

	q := startSim(t, nil, append(simArgs, "--sim-fault", FaultNeverReady)...)
	addr := q.waitLine(t, `^sim: listening addr=(\S+)`, 20*time.Second)[1]
	q.waitLine(t, `still at batch`, 5*time.Second)
	resp, err := http.Get("http://" + addr + "/health")
	if err != nil || resp.StatusCode != 503 {
		t.Errorf("never-ready /health: %v %v, want 503", resp, err)
	}
	if strings.Contains(q.output(), "sim: ready") {
		t.Errorf("never-ready server said ready")
	}
}

func TestProcessCrashMidRun(t *testing.T) {
	p := startSim(t, nil, append(simArgs, "--sim-fault", FaultCrashMidRun)...)
	addr := p.waitLine(t, `^sim: listening addr=(\S+)`, 20*time.Second)[1]
	p.waitLine(t, `^sim: ready`, 5*time.Second)
	resp, err := http.Post("http://"+addr+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"`+qwenPath+`","prompt":"hi","max_tokens":1000,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body) // ends when the process dies
	resp.Body.Close()
	if n := strings.Count(string(b), `"text":`); n < 3 || n >= 1000 || strings.Contains(string(b), "[DONE]") {
		t.Errorf("streamed %d tokens before the crash, want a few and no [DONE]", n)
	}
	if code := p.exitCode(t, 10*time.Second); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(p.output(), "CUDA error: an illegal memory access was encountered") {
		t.Errorf("no CUDA error in output:\n%s", p.output())
	}
}
