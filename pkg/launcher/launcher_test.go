package launcher

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// The test binary doubles as the child processes of these tests (as os/exec's own tests
// do): LAUNCHER_TEST_CHILD picks the behaviour.
func TestMain(m *testing.M) {
	switch os.Getenv("LAUNCHER_TEST_CHILD") {
	case "":
		// As moecapd does: reparented descendants of a server come to us, not to init.
		if err := BecomeSubreaper(); err != nil {
			fmt.Fprintln(os.Stderr, "subreaper:", err)
		}
		os.Exit(RunTests(m.Run))
	case "sleep":
		fmt.Println("child up")
		time.Sleep(time.Hour)
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		time.Sleep(time.Hour)
	case "fork":
		n, _ := strconv.Atoi(os.Getenv("LAUNCHER_TEST_WORKERS"))
		var pids []string
		for i := 0; i < n; i++ {
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), "LAUNCHER_TEST_CHILD=sleep")
			if os.Getenv("LAUNCHER_TEST_CLEARENV") == "1" {
				// As setproctitle does to /proc/PID/environ: the token is gone.
				c.Env = []string{"LAUNCHER_TEST_CHILD=sleep"}
			}
			if os.Getenv("LAUNCHER_TEST_SETSID") == "1" {
				// A worker that leaves the process group: only the descendant walk finds it.
				c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			}
			if err := c.Start(); err != nil {
				panic(err)
			}
			pids = append(pids, strconv.Itoa(c.Process.Pid))
		}
		os.WriteFile(os.Getenv("LAUNCHER_TEST_PIDFILE"), []byte(strings.Join(pids, " ")), 0o644)
		time.Sleep(time.Hour)
	case "serve":
		serveReady(os.Getenv("LAUNCHER_TEST_PORT"))
	case "daemonize", "mid", "leaf", "marker", "spawner":
		testChild(os.Getenv("LAUNCHER_TEST_CHILD"))
	case "exit3":
		fmt.Fprintln(os.Stderr, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
		os.Exit(3)
	}
	os.Exit(0)
}

func childSpec(t *testing.T, mode string, env ...string) Spec {
	t.Helper()
	return Spec{
		Argv:    []string{os.Args[0], "-test.run=^$"},
		Env:     append(append(os.Environ(), "LAUNCHER_TEST_CHILD="+mode), env...),
		LogPath: filepath.Join(t.TempDir(), "server.log"),
	}
}

func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return string(b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never written", path)
	return ""
}

func TestStopGracefulAndForcedAndWorkers(t *testing.T) {
	cases := []struct {
		name     string
		mode     string
		setsid   bool
		graceful bool
		workers  int
	}{
		{"cooperative", "sleep", false, true, 0},
		{"ignores SIGTERM", "ignore-term", false, false, 0},
		{"forks workers", "fork", false, true, 3},
		{"worker leaves the group", "fork", true, true, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pidfile := filepath.Join(t.TempDir(), "pids")
			spec := childSpec(t, c.mode, "LAUNCHER_TEST_WORKERS="+strconv.Itoa(c.workers), "LAUNCHER_TEST_PIDFILE="+pidfile)
			if c.setsid {
				spec.Env = append(spec.Env, "LAUNCHER_TEST_SETSID=1")
			}
			p, err := Start(spec)
			if err != nil {
				t.Fatal(err)
			}
			var workers []int
			if c.workers > 0 {
				for _, f := range strings.Fields(waitFile(t, pidfile)) {
					pid, _ := strconv.Atoi(f)
					workers = append(workers, pid)
				}
				tree := p.Members()
				for _, w := range workers {
					if !slices.Contains(tree, w) {
						t.Fatalf("Members() of %d = %v, missing worker %d", p.PID(), tree, w)
					}
				}
			} else {
				// Let the child install its signal disposition before we signal it.
				deadline := time.Now().Add(5 * time.Second)
				for time.Now().Before(deadline) {
					if b, _ := os.ReadFile(spec.LogPath); len(b) > 0 {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			r := p.Stop(300 * time.Millisecond)
			if r.Graceful != c.graceful {
				t.Errorf("graceful = %v, want %v (report %+v)", r.Graceful, c.graceful, r)
			}
			if len(r.Left) != 0 {
				t.Errorf("left = %v, want none", r.Left)
			}
			for _, pid := range append(workers, p.PID()) {
				if alive(pid) {
					t.Errorf("pid %d still alive after Stop", pid)
				}
			}
			if !p.Exited() {
				t.Error("leader not reaped")
			}
			// Idempotent.
			if r2 := p.Stop(time.Millisecond); len(r2.Left) != 0 {
				t.Errorf("second Stop left %v", r2.Left)
			}
		})
	}
}

func TestExitCodeAndLogClassification(t *testing.T) {
	spec := childSpec(t, "exit3")
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("child did not exit")
	}
	if got := p.ExitCode(); got != 3 {
		t.Errorf("exit code %d, want 3", got)
	}
	w := WatchLog(spec.LogPath, 10*time.Millisecond)
	w.Close()
	kind, line := w.Diagnosis()
	if kind != exitcode.FailOOM || !strings.Contains(line, "CUDA out of memory") {
		t.Errorf("Diagnosis() = %q, %q; want oom and the error line", kind, line)
	}
}

func TestLogWatchClassifies(t *testing.T) {
	cases := []struct {
		name string
		log  string
		want exitcode.Failure
	}{
		{"oom beats traceback", "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA error: out of memory\n", exitcode.FailOOM},
		{"vllm kv cache", "ValueError: To serve at least one request with the models's max seq len (13000), (1.2 GiB KV cache is needed, which is larger than the available KV cache memory (0.5 GiB). No available memory for the cache blocks.\n", exitcode.FailOOM},
		{"port", "OSError: [Errno 98] Address already in use\n", exitcode.FailPortInUse},
		{"module", "ModuleNotFoundError: No module named 'moe_cap'\n", exitcode.FailEnvMissing},
		{"progress bar then crash", "Loading 10%\rLoading 50%\rLoading 90%\nSegmentation fault (core dumped)\n", exitcode.FailCrash},
		{"nothing recognised", "bye\n", exitcode.FailCrash},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log")
			os.WriteFile(p, []byte(c.log), 0o644)
			w := WatchLog(p, 10*time.Millisecond)
			w.Close()
			if got, line := w.Diagnosis(); got != c.want {
				t.Errorf("Diagnosis() = %q (%q), want %q", got, line, c.want)
			}
		})
	}
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("Loading 10%\rLoading 90%"), 0o644)
	w := WatchLog(p, 10*time.Millisecond)
	w.Close()
	if got := w.Tail(); !strings.HasSuffix(got, "Loading 90%") || !strings.Contains(got, "Loading 10%\n") {
		t.Errorf("Tail() = %q, want the \\r-separated redraws as lines", got)
	}
}

// A conda-shaped root: conda.sh defines a `conda` shell function whose activate sets
// CONDA_PREFIX and PATH and sources the env's activate.d scripts, as the real one does.
func fakeConda(t *testing.T, env string) (root, prefix, recFile string) {
	t.Helper()
	root = t.TempDir()
	prefix = filepath.Join(root, "envs", env)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "etc", "profile.d"), 0o755))
	must(os.MkdirAll(filepath.Join(prefix, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(prefix, "etc", "conda", "activate.d"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc", "profile.d", "conda.sh"), []byte(`
conda() {
  if [ "$1" = activate ]; then
    case "$2" in
      /*) p="$2" ;;
      *) p="`+root+`/envs/$2" ;;
    esac
    [ -d "$p" ] || { echo "EnvironmentNameNotFound: Could not find conda environment: $2" >&2; return 1; }
    export CONDA_PREFIX="$p" CONDA_DEFAULT_ENV="$2" PATH="$p/bin:$PATH"
    for f in "$p"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done
    return 0
  fi
  echo "fake conda: $*" >&2; return 1
}
`), 0o644))
	must(os.WriteFile(filepath.Join(prefix, "etc", "conda", "activate.d", "x.sh"), []byte("export FAKE_ACTIVATE_D=ran\n"), 0o644))
	recFile = filepath.Join(t.TempDir(), "rec")
	must(os.WriteFile(filepath.Join(prefix, "bin", "python"), []byte(`#!/bin/sh
{ printf 'ENV %s|%s|%s\n' "$CONDA_PREFIX" "$FAKE_ACTIVATE_D" "$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"; for a in "$@"; do printf 'ARG %s\n' "$a"; done; } > "$REC_FILE"
exec sleep 3600
`), 0o755))
	return root, prefix, recFile
}

func TestActivationValuesAreData(t *testing.T) {
	// Every hostile character a model id or env name could carry.
	env := "we ird;env $(touch PWNED1) `touch PWNED2` 'q' \"dq\""
	model := "org/mod el;$(touch PWNED3)`touch PWNED4`'\"&|<>"
	root, prefix, rec := fakeConda(t, env)
	work := t.TempDir()
	r, err := ResolveCondaRoot(CondaSearch{Flag: root})
	if err != nil || r != root {
		t.Fatalf("ResolveCondaRoot = %q, %v", r, err)
	}
	if got, err := ResolveEnv(root, env, "sglang"); err != nil || got != prefix {
		t.Fatalf("ResolveEnv = %q, %v", got, err)
	}
	spec := ServerSpec{Backend: BackendSGLang, Model: model, Host: "127.0.0.1", Port: 30001, TP: 1, BatchSize: 8,
		RecordsDir: filepath.Join(work, "rec dir;x"), Extra: []string{"--mem-fraction-static", "0.8"}}
	argv, err := ServerArgv(spec)
	if err != nil {
		t.Fatal(err)
	}
	added := ServerEnv(spec)
	p, err := Start(Spec{Argv: ActivationArgv(root, env, argv), Env: MergeEnv(append(os.Environ(), "REC_FILE="+rec), added),
		Dir: work, LogPath: filepath.Join(work, "server.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	got := strings.Split(strings.TrimSpace(waitFile(t, rec)), "\n")
	want := []string{"ENV " + prefix + "|ran|" + spec.RecordsDir}
	for _, a := range argv[1:] {
		want = append(want, "ARG "+a)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("server saw\n%q\nwant\n%q", got, want)
	}
	// exec kept the PID: the shell became python.
	if cl := Cmdline(p.PID()); len(cl) < 2 || filepath.Base(cl[0]) != "sh" && !strings.HasSuffix(cl[1], "python") {
		t.Logf("cmdline after exec: %q", cl)
	}
	for _, f := range []string{"PWNED1", "PWNED2", "PWNED3", "PWNED4"} {
		for _, d := range []string{work, root, "."} {
			if _, err := os.Stat(filepath.Join(d, f)); err == nil {
				t.Fatalf("%s was created in %s: a value was executed as shell", f, d)
			}
		}
	}
}

func TestCondaErrorsSayTheFix(t *testing.T) {
	_, err := ResolveCondaRoot(CondaSearch{Flag: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "etc/profile.d/conda.sh") {
		t.Errorf("missing root: %v", err)
	}
	_, err = ResolveCondaRoot(CondaSearch{Home: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--conda-root") {
		t.Errorf("nothing found: %v", err)
	}
	root, _, _ := fakeConda(t, "sglang")
	_, err = ResolveEnv(root, "vllm", "vllm")
	if err == nil || !strings.Contains(err.Error(), "conda env create -f envs/vllm.yml") {
		t.Errorf("missing env: %v", err)
	}
	c := CondaSearch{CondaExe: "/x/miniforge3/bin/conda", MambaRootPrefix: "/m", Home: "/h"}
	want := []string{"/x/miniforge3", "/m", "/h/miniforge3", "/h/miniconda3", "/h/anaconda3", "/opt/conda"}
	if got := c.Candidates(); !slices.Equal(got, want) {
		t.Errorf("Candidates() = %q, want %q", got, want)
	}
}

func TestServerArgvMatchesGuide(t *testing.T) {
	sg, _ := ServerArgv(ServerSpec{Backend: BackendSGLang, Model: "Qwen/Qwen1.5-MoE-A2.7B-Chat", Host: "127.0.0.1", Port: 30000, TP: 1, BatchSize: 1})
	want := "python -m moe_cap.systems.sglang --model-path Qwen/Qwen1.5-MoE-A2.7B-Chat --port 30000 --host 127.0.0.1 --expert-distribution-recorder-mode stat --tp-size 1 --max-running-requests 1 --enable-metrics" // the guide's, plus the Prometheus endpoint moecapd scrapes
	if got := strings.Join(sg, " "); got != want {
		t.Errorf("sglang argv\n got %s\nwant %s", got, want)
	}
	vl, _ := ServerArgv(ServerSpec{Backend: BackendVLLM, Model: "deepseek-ai/DeepSeek-V2-Lite-Chat", Host: "0.0.0.0", Port: 8000, TP: 8, BatchSize: 32})
	want = "python -m moe_cap.systems.vllm --model deepseek-ai/DeepSeek-V2-Lite-Chat --port 8000 --host 0.0.0.0 --tensor-parallel-size 8 --enable-expert-distribution-metrics --max-num-batched-tokens 131072 --max-num-seqs 32"
	if got := strings.Join(vl, " "); got != want {
		t.Errorf("vllm argv\n got %s\nwant %s", got, want)
	}
	env := ServerEnv(ServerSpec{Backend: BackendVLLM, ExpertPatching: false, RecordsDir: "/r", CUDAVisibleDevices: "0,1"})
	if _, ok := env["MOE_CAP_ENABLE_EXPERT_PATCHING"]; ok {
		t.Error("expert patching set for a model that turns it off (Mixtral)")
	}
	if env["CUDA_VISIBLE_DEVICES"] != "0,1" || env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] != "/r" {
		t.Errorf("env = %v", env)
	}
	if ServerEnv(ServerSpec{Backend: BackendVLLM, ExpertPatching: true})["MOE_CAP_ENABLE_EXPERT_PATCHING"] != "1" {
		t.Error("expert patching not set for vllm")
	}
}

func TestOrphanRecovery(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cell")
	os.MkdirAll(dir, 0o755)
	pidfile := filepath.Join(t.TempDir(), "pids")
	spec := childSpec(t, "fork", "LAUNCHER_TEST_WORKERS=2", "LAUNCHER_TEST_PIDFILE="+pidfile)
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	waitFile(t, pidfile)
	st := NewState(p, nil, 0)
	// Pretend the supervisor that wrote the state died: a PID that no longer exists.
	dead := exec.Command("true")
	dead.Run()
	st.Supervisor, st.SupStart = dead.Process.Pid, 1
	if err := WriteState(dir, st); err != nil {
		t.Fatal(err)
	}

	// A live supervisor's server is someone else's business.
	live := st
	live.Supervisor = os.Getpid()
	if info, ok := readProc(os.Getpid()); ok {
		live.SupStart = info.StartTicks
	}
	otherDir := filepath.Join(root, "other")
	os.MkdirAll(otherDir, 0o755)
	WriteState(otherDir, live)

	// A record whose PID now names a different process (another start time) is never
	// touched, nor are the members of its old process group: they carry another token.
	reused := st
	reused.StartTicks++
	reused.Token = "someone-else"
	reusedDir := filepath.Join(root, "reused")
	os.MkdirAll(reusedDir, 0o755)
	WriteState(reusedDir, reused)

	sw, err := FindOrphans(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Orphans) != 1 || sw.Orphans[0].Dir != dir || !sw.Orphans[0].LeaderVerified {
		t.Fatalf("FindOrphans = %+v, want exactly the cell whose supervisor died", sw.Orphans)
	}
	if len(sw.Orphans[0].PIDs) != 3 {
		t.Errorf("orphan tree %v, want leader + 2 workers", sw.Orphans[0].PIDs)
	}
	if len(sw.Gone) != 1 || sw.Gone[0].Dir != reusedDir || len(sw.Gone[0].Unverified) != 3 {
		t.Errorf("Gone = %+v, want the reused record, its 3 group members named as unverified", sw.Gone)
	}
	if _, err := EndOrphan(sw.Orphans[0], 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, pid := range sw.Orphans[0].PIDs {
		if alive(pid) {
			t.Errorf("pid %d survived EndOrphan", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); !os.IsNotExist(err) {
		t.Error("state file not removed after the orphan was ended")
	}
}

func TestWaitReadyStallAndExit(t *testing.T) {
	port, _ := FreePort("127.0.0.1")
	spec := ReadySpec{BaseURL: "http://127.0.0.1:" + strconv.Itoa(port), Model: "m", Flavor: BackendSGLang,
		Interval: 20 * time.Millisecond, Stall: 400 * time.Millisecond, Hard: time.Minute}

	// Silent and never listening: the stall deadline ends it, long before the hard one.
	s := childSpec(t, "sleep")
	p, err := Start(s)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	w := WatchLog(s.LogPath, 20*time.Millisecond)
	defer w.Close()
	t0 := time.Now()
	err = WaitReady(t.Context(), p, w, spec)
	var re *ReadyError
	if !errors.As(err, &re) || !re.Timeout || !strings.Contains(re.Msg, "printed nothing") {
		t.Fatalf("err = %v, want a stall timeout", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("stall noticed after %s, want ≈ 400ms", d)
	}

	// Exits during start-up: reported at once, not after a timeout.
	s = childSpec(t, "exit3")
	p, err = Start(s)
	if err != nil {
		t.Fatal(err)
	}
	err = WaitReady(t.Context(), p, nil, spec)
	if !errors.As(err, &re) || !re.Exited {
		t.Fatalf("err = %v, want exited", err)
	}
}

// TestPackageVersion: the probe runs python inside the activated env with the distribution
// name as an argument (data, never code), and an env that cannot tell gives "" (absent).
func TestPackageVersion(t *testing.T) {
	env := "env;$(touch PWNED_V) 'q'"
	root, prefix, _ := fakeConda(t, env)
	work := t.TempDir()
	t.Chdir(work)
	// The fake python answers importlib.metadata's probe only inside the activated env and
	// only for the distribution it was given as its last argument.
	py := `#!/bin/sh
[ "$FAKE_ACTIVATE_D" = ran ] || exit 97
[ "$1" = -c ] || exit 98
case "$2" in *importlib.metadata*sys.argv*) ;; *) exit 99 ;; esac
case "$3" in moe_cap) echo 0.4.2 ;; spaces) echo "not a version" ;; *) echo "PackageNotFoundError: $3" >&2; exit 1 ;; esac
`
	if err := os.WriteFile(filepath.Join(prefix, "bin", "python"), []byte(py), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if got := PackageVersion(ctx, root, env, "moe_cap", 10*time.Second); got != "0.4.2" {
		t.Errorf("PackageVersion(moe_cap) = %q, want 0.4.2", got)
	}
	for _, dist := range []string{"vllm", "spaces", "x; $(touch PWNED_D)"} {
		if got := PackageVersion(ctx, root, env, dist, 10*time.Second); got != "" {
			t.Errorf("PackageVersion(%q) = %q, want absent", dist, got)
		}
	}
	if got := PackageVersion(ctx, root, "no-such-env", "moe_cap", 10*time.Second); got != "" {
		t.Errorf("PackageVersion in a missing env = %q, want absent", got)
	}
	for _, f := range []string{"PWNED_V", "PWNED_D"} {
		if _, err := os.Stat(filepath.Join(work, f)); err == nil {
			t.Errorf("%s created: a value was executed as shell", f)
		}
	}
}
