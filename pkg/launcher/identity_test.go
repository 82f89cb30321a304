package launcher

import (
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
)

// testChild runs the child behaviours of this file's tests (see TestMain).
func testChild(mode string) {
	switch mode {
	case "daemonize":
		// A server whose worker double-forks and calls setsid, as Ray's raylet does.
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "LAUNCHER_TEST_CHILD=mid")
		if err := c.Run(); err != nil {
			panic(err)
		}
		fmt.Println("worker daemonized")
		time.Sleep(time.Hour)
	case "mid":
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "LAUNCHER_TEST_CHILD=leaf")
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := c.Start(); err != nil {
			panic(err)
		}
		waitFor(os.Getenv("LAUNCHER_TEST_PIDFILE"))
		os.Exit(0) // the leaf is orphaned: reparented to the nearest subreaper
	case "leaf":
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
		writeAtomic(os.Getenv("LAUNCHER_TEST_PIDFILE"), strconv.Itoa(os.Getpid()))
		if d, err := time.ParseDuration(os.Getenv("LAUNCHER_TEST_LEAF_LIFE")); err == nil {
			time.Sleep(d)
			os.Exit(0)
		}
		time.Sleep(time.Hour)
	case "marker":
		// The server's first own code: proof that it ran.
		writeAtomic(os.Getenv("LAUNCHER_TEST_MARKER"), strconv.Itoa(os.Getpid()))
		time.Sleep(time.Hour)
	case "spawner":
		// A supervisor that starts a server and records it, as cell.launch does; the test
		// SIGKILLs it at some moment.
		dir := os.Getenv("LAUNCHER_TEST_DIR")
		delay, _ := time.ParseDuration(os.Getenv("LAUNCHER_TEST_STATE_DELAY"))
		_, err := Start(Spec{
			Argv:    []string{os.Args[0], "-test.run=^$"},
			Env:     append(os.Environ(), "LAUNCHER_TEST_CHILD=marker"),
			LogPath: filepath.Join(dir, "server.log"),
			BeforeRun: func(p *Process) error {
				writeAtomic(filepath.Join(dir, "spawned"), strconv.Itoa(p.PID()))
				time.Sleep(delay)
				return WriteState(dir, NewState(p, nil, 0))
			},
		})
		if err != nil {
			panic(err)
		}
		time.Sleep(time.Hour)
	}
	os.Exit(0)
}

func writeAtomic(path, body string) {
	tmp := path + ".tmp"
	os.WriteFile(tmp, []byte(body), 0o644)
	os.Rename(tmp, path)
}

func waitFor(path string) {
	for range 1000 {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ppid(pid int) int {
	p, _ := readProc(pid)
	return p.PPID
}

// waitOrphaned waits until the leaf's parent (the double-forking worker, a child of
// server) has exited.
func waitOrphaned(t *testing.T, leaf, server int) {
	t.Helper()
	for range 500 {
		if pp := ppid(leaf); pp != server && ppid(pp) != server {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the worker between server and leaf %d never exited", leaf)
}

// A worker that double-forks, calls setsid and ignores SIGTERM is out of the server's
// process group and no longer its descendant; teardown must still end it.
func TestStopEndsDoubleForkedSetsidWorker(t *testing.T) {
	if Tracking() != "subreaper+token" {
		t.Logf("not a subreaper here (%s): the worker is found by its token alone", Tracking())
	}
	pidfile := filepath.Join(t.TempDir(), "leaf")
	spec := childSpec(t, "daemonize", "LAUNCHER_TEST_PIDFILE="+pidfile)
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := strconv.Atoi(waitFile(t, pidfile))
	waitOrphaned(t, leaf, p.PID())
	info, _ := readProc(leaf)
	if info.PGID == p.PID() || info.PPID == p.PID() {
		t.Fatalf("leaf %d is still in the server's group or tree; the test needs a daemonized worker", leaf)
	}
	if Tracking() == "subreaper+token" && ppid(leaf) != os.Getpid() {
		t.Errorf("leaf's parent is %d, want us (%d): the subreaper did not take it", ppid(leaf), os.Getpid())
	}
	r := p.Stop(300 * time.Millisecond)
	if alive(leaf) {
		t.Fatalf("double-forked setsid worker %d survived teardown (report %+v)", leaf, r)
	}
	if !slices.Contains(r.Killed, leaf) || r.Graceful {
		t.Errorf("report %+v, want the leaf among the SIGKILLed (it ignores SIGTERM)", r)
	}
	if len(r.Left) != 0 {
		t.Errorf("left %v", r.Left)
	}
	// Reaped, not left as our zombie.
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", leaf)); err == nil && ppid(leaf) == os.Getpid() {
		t.Errorf("leaf %d left as a zombie child of ours", leaf)
	}
}

// The orphan sweep finds a daemonized worker of a dead server by its token alone, and ends it.
func TestOrphanDaemonizedWorkerFoundByToken(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cell")
	os.MkdirAll(dir, 0o755)
	pidfile := filepath.Join(t.TempDir(), "leaf")
	p, err := Start(childSpec(t, "daemonize", "LAUNCHER_TEST_PIDFILE="+pidfile))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := strconv.Atoi(waitFile(t, pidfile))
	waitOrphaned(t, leaf, p.PID())
	st := NewState(p, nil, 0)
	st.Supervisor, st.SupStart = deadPID(t), 1
	WriteState(dir, st)
	// The leader dies (its worker lives on), as after a crash of the server itself.
	syscall.Kill(p.PID(), syscall.SIGKILL)
	<-p.Done()
	sw, err := FindOrphans(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Orphans) != 1 || sw.Orphans[0].LeaderVerified || !slices.Equal(sw.Orphans[0].PIDs, []int{leaf}) {
		t.Fatalf("sweep %+v, want one orphan: the leaf %d, leader not verified", sw, leaf)
	}
	if _, err := EndOrphan(sw.Orphans[0], 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if alive(leaf) {
		t.Errorf("leaf %d survived", leaf)
	}
}

func deadPID(t *testing.T) int {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	return dead.Process.Pid
}

// A record from another boot: nothing signalled, the state reported gone with the reason.
// A record whose leader PID was reused: the old group's members are not signalled.
func TestSweepNeverSignalsUnverified(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pids")
	p, err := Start(childSpec(t, "fork", "LAUNCHER_TEST_WORKERS=2", "LAUNCHER_TEST_PIDFILE="+pidfile))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	waitFile(t, pidfile)
	group := groupMembers(p.PID())
	if len(group) != 3 {
		t.Fatalf("group %v, want leader + 2 workers", group)
	}
	base := NewState(p, nil, 0)
	base.Supervisor, base.SupStart = deadPID(t), 1
	cases := []struct {
		name   string
		edit   func(*State)
		why    string
		unver  int
		reason string
	}{
		{"rebooted", func(s *State) { s.BootID = "00000000-0000-0000-0000-000000000000" }, "rebooted", 0, "boot id"},
		{"pid reused", func(s *State) { s.StartTicks++; s.Token = "another-servers-token" }, "no longer running", 3, ""},
		{"pid reused, old record without token", func(s *State) { s.StartTicks++; s.Token = "" }, "no longer running", 3, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "runs[1]")
			dir := filepath.Join(root, "cell")
			os.MkdirAll(dir, 0o755)
			s := base
			c.edit(&s)
			WriteState(dir, s)
			sw, err := FindOrphans(root)
			if err != nil {
				t.Fatal(err)
			}
			if len(sw.Orphans) != 0 || len(sw.Gone) != 1 || !strings.Contains(sw.Gone[0].Why, c.why) || len(sw.Gone[0].Unverified) != c.unver {
				t.Fatalf("sweep %+v, want one gone record (%q) with %d unverified PIDs", sw, c.why, c.unver)
			}
			for _, pid := range group {
				if !alive(pid) {
					t.Fatalf("pid %d was killed by the sweep of a record that is not its own", pid)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, StateFile)); !os.IsNotExist(err) {
				t.Errorf("stale state file kept")
			}
		})
	}

	// A verified orphan whose members changed identity between the scan and the signal
	// (PID reuse at the worst moment) gets no signal.
	o := Orphan{Dir: t.TempDir(), State: State{PID: p.PID(), StartTicks: p.StartTicks() + 1}, members: map[int]uint64{}}
	for _, pid := range group {
		o.members[pid] = 12345 // not their start time
	}
	EndOrphan(o, 50*time.Millisecond)
	for _, pid := range group {
		if !alive(pid) {
			t.Errorf("pid %d signalled although its start time did not match", pid)
		}
	}
}

// A results root with glob characters in its name hides no orphan; a corrupt state file is
// reported, not skipped.
func TestSweepGlobRootAndCorruptState(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runs[1]")
	dir := filepath.Join(root, "cell")
	os.MkdirAll(dir, 0o755)
	p, err := Start(childSpec(t, "sleep"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	st := NewState(p, nil, 0)
	st.Supervisor, st.SupStart = deadPID(t), 1
	WriteState(dir, st)
	bad := filepath.Join(root, "broken")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, StateFile), []byte(`{"pid": 12, "pg`), 0o644)

	sw, err := FindOrphans(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Orphans) != 1 || sw.Orphans[0].Dir != dir {
		t.Errorf("orphans %+v under %s, want the cell's server", sw.Orphans, root)
	}
	if len(sw.Problems) != 1 || !strings.Contains(sw.Problems[0].Error(), filepath.Join(bad, StateFile)) ||
		!strings.Contains(sw.Problems[0].Error(), "corrupt") {
		t.Errorf("problems %v, want the corrupt state file named", sw.Problems)
	}
	if _, err := os.Stat(filepath.Join(bad, StateFile)); err != nil {
		t.Errorf("corrupt state file removed (%v); it must stay for the user to look at", err)
	}
}

// The state file exists before the server runs any code of its own: a supervisor killed
// with SIGKILL at any moment around the spawn leaves either a state file naming the running
// server, or no running server at all.
func TestSIGKILLAfterSpawnLeavesStateOrNothing(t *testing.T) {
	run := func(t *testing.T, delay time.Duration, killAfter func(dir string)) (ran bool) {
		dir := t.TempDir()
		marker := filepath.Join(dir, "marker")
		sp := exec.Command(os.Args[0], "-test.run=^$")
		sp.Env = append(os.Environ(), "LAUNCHER_TEST_CHILD=spawner", "LAUNCHER_TEST_DIR="+dir,
			"LAUNCHER_TEST_MARKER="+marker, "LAUNCHER_TEST_STATE_DELAY="+delay.String())
		if err := sp.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter(dir)
		sp.Process.Kill()
		sp.Wait()
		time.Sleep(100 * time.Millisecond)
		b, _ := os.ReadFile(filepath.Join(dir, "spawned"))
		server, _ := strconv.Atoi(string(b))
		_, stateErr := os.Stat(filepath.Join(dir, StateFile))
		_, markErr := os.Stat(marker)
		ran = markErr == nil
		if ran && stateErr != nil {
			t.Errorf("the server ran its own code (pid %d) but no state file exists: a rerun could not find it", server)
		}
		if stateErr == nil {
			sw, err := FindOrphans(filepath.Dir(dir))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range sw.Orphans {
				if o.Dir == dir {
					EndOrphan(o, 200*time.Millisecond)
				}
			}
		}
		// Without a state file the gate saw EOF and exits 125 (give a loaded machine a moment).
		for i := 0; server > 0 && alive(server) && i < 500; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if server > 0 && alive(server) {
			t.Errorf("server %d alive after the sweep (state file: %v, ran: %v)", server, stateErr == nil, ran)
			syscall.Kill(server, syscall.SIGKILL)
		}
		return ran
	}
	// Killed while writing the state (the child exists, waits in the gate): it never runs.
	t.Run("killed before the state is written", func(t *testing.T) {
		if run(t, 2*time.Second, func(dir string) { waitFor(filepath.Join(dir, "spawned")) }) {
			t.Error("the server ran before its state file was written")
		}
	})
	// Killed at assorted moments from 0 to 30 ms after the supervisor started.
	ranCount := 0
	for i := range 30 {
		d := time.Duration(i) * time.Millisecond
		t.Run(fmt.Sprintf("killed %s after start", d), func(t *testing.T) {
			if run(t, 0, func(string) { time.Sleep(d) }) {
				ranCount++
			}
		})
	}
	t.Logf("%d of 30 servers got to run before the kill; each had its state file", ranCount)
}

// Workers that lost the token (setproctitle overwrites /proc/PID/environ) and whose server
// died are still ended by a later sweep: the state file kept their PIDs and start times.
func TestRecordedMembersOutliveTheirToken(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cell")
	os.MkdirAll(dir, 0o755)
	pidfile := filepath.Join(t.TempDir(), "pids")
	p, err := Start(childSpec(t, "fork", "LAUNCHER_TEST_WORKERS=2", "LAUNCHER_TEST_PIDFILE="+pidfile, "LAUNCHER_TEST_CLEARENV=1"))
	if err != nil {
		t.Fatal(err)
	}
	var workers []int
	for _, f := range strings.Fields(waitFile(t, pidfile)) {
		pid, _ := strconv.Atoi(f)
		workers = append(workers, pid)
	}
	st := NewState(p, nil, 0)
	st.Supervisor, st.SupStart = deadPID(t), 1
	WriteState(dir, st)
	stop := p.Record(dir, st, 20*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, StateFile))
		if strings.Count(string(b), `"start_ticks"`) >= 4 { // the server's own + 3 members
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file never listed the members:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	syscall.Kill(p.PID(), syscall.SIGKILL) // the server dies; its workers live on, tokenless
	<-p.Done()
	sw, err := FindOrphans(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Orphans) != 1 {
		t.Fatalf("sweep %+v, want the workers as one orphan", sw)
	}
	got := sw.Orphans[0].PIDs
	slices.Sort(workers)
	if !slices.Equal(got, workers) {
		t.Fatalf("orphan PIDs %v, want the workers %v", got, workers)
	}
	if _, err := EndOrphan(sw.Orphans[0], 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, w := range workers {
		if alive(w) {
			t.Errorf("worker %d survived", w)
		}
	}
}

// A daemonized worker reparented to us is seen by Members (the sampler's view), and when it
// exits on its own it is reaped, not left as our zombie.
func TestStrayWorkerSeenAndReaped(t *testing.T) {
	if Tracking() != "subreaper+token" {
		t.Skip("needs the subreaper")
	}
	pidfile := filepath.Join(t.TempDir(), "leaf")
	p, err := Start(childSpec(t, "daemonize", "LAUNCHER_TEST_PIDFILE="+pidfile, "LAUNCHER_TEST_LEAF_LIFE=400ms"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	leaf, _ := strconv.Atoi(waitFile(t, pidfile))
	waitOrphaned(t, leaf, p.PID())
	if !slices.Contains(p.Members(), leaf) {
		t.Fatalf("Members() = %v, want the reparented leaf %d", p.Members(), leaf)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.Members()
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", leaf)); os.IsNotExist(err) {
			return // exited and reaped
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", leaf))
			t.Fatalf("leaf %d not reaped after it exited: %s", leaf, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
