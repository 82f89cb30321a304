package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// browser is headless Chromium driven over the DevTools protocol through
// --remote-debugging-pipe (JSON messages ending in NUL on fds 3 and 4): no library, no
// port.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       *os.File
	mu      sync.Mutex
	next    int
	waiting map[int]chan cdpReply
	session string
	stderr  bytes.Buffer
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func findChromium() string {
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// startBrowser starts Chromium and opens one page of width x height CSS pixels.
func startBrowser(t *testing.T, chrome string, width, height int) *browser {
	t.Helper()
	toChrome, ourEnd, err := os.Pipe() // chrome reads fd 3
	if err != nil {
		t.Fatal(err)
	}
	fromChrome, chromeEnd, err := os.Pipe() // chrome writes fd 4
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, w: ourEnd, waiting: map[int]chan cdpReply{}}
	b.cmd = exec.Command(chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
		"--no-first-run", "--disable-extensions", "--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	b.cmd.ExtraFiles = []*os.File{toChrome, chromeEnd}
	b.cmd.Stderr = &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", chrome, err)
	}
	toChrome.Close()
	chromeEnd.Close()
	t.Cleanup(func() {
		ourEnd.Close()
		b.cmd.Process.Kill()
		b.cmd.Wait()
	})
	go func() {
		r := bufio.NewReader(fromChrome)
		for {
			msg, err := r.ReadBytes(0)
			if err != nil {
				return
			}
			var m struct {
				ID int `json:"id"`
				cdpReply
			}
			if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
				continue // an event
			}
			b.mu.Lock()
			ch := b.waiting[m.ID]
			delete(b.waiting, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m.cdpReply
			}
		}
	}()
	var tgt struct{ TargetID string }
	b.callTo("", "Target.createTarget", map[string]any{"url": "about:blank"}, &tgt)
	var att struct{ SessionID string }
	b.callTo("", "Target.attachToTarget", map[string]any{"targetId": tgt.TargetID, "flatten": true}, &att)
	b.session = att.SessionID
	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil)
	return b
}

func (b *browser) callTo(session, method string, params any, out any) {
	b.t.Helper()
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpReply, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	j, _ := json.Marshal(msg)
	if _, err := b.w.Write(append(j, 0)); err != nil {
		b.t.Fatalf("DevTools %s: %v (chromium: %s)", method, err, b.stderr.String())
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			b.t.Fatalf("DevTools %s: %s", method, r.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(r.Result, out); err != nil {
				b.t.Fatalf("DevTools %s: %v in %s", method, err, r.Result)
			}
		}
	case <-time.After(time.Minute):
		b.t.Fatalf("DevTools %s: no answer in a minute (chromium: %s)", method, b.stderr.String())
	}
}

func (b *browser) call(method string, params any, out any) {
	b.t.Helper()
	b.callTo(b.session, method, params, out)
}

// eval runs a JavaScript expression in the page and decodes its value into out.
func (b *browser) eval(expr string, out any) {
	b.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		b.t.Fatalf("%s: %s", expr, r.ExceptionDetails.Text)
	}
	if out != nil && len(r.Result.Value) > 0 {
		if err := json.Unmarshal(r.Result.Value, out); err != nil {
			b.t.Fatalf("%s: %v in %s", expr, err, r.Result.Value)
		}
	}
}

// waitFor polls a boolean expression until it holds.
func (b *browser) waitFor(what, expr string, within time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var ok bool
		b.eval("!!("+expr+")", &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var body string
			b.eval("document.body.innerText", &body)
			b.t.Fatalf("the page never showed %s within %s; it shows:\n%s", what, within, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// screenshot saves the whole page as PNG and checks it decodes with content.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	var h float64
	b.eval("document.documentElement.scrollHeight", &h)
	var w float64
	b.eval("document.documentElement.clientWidth", &w)
	var shot struct{ Data string }
	b.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true,
		"clip": map[string]any{"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}, &shot)
	raw, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil || img.Bounds().Dx() < 800 || img.Bounds().Dy() < 300 {
		b.t.Fatalf("screenshot %s: %v %v", path, img, err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s (%dx%d)", path, img.Bounds().Dx(), img.Bounds().Dy())
}

// webMatrix is a sim matrix with what the page shows: two ok cells, an out-of-memory
// chain (infeasible, then skipped), a server that crashes mid-bench (failed) and a slow
// chain whose bench runs long enough to be seen in progress.
func webMatrix(t *testing.T) string {
	t.Helper()
	dir := tinyTasks(t)
	body := `version: 1
model_names: {qwen1_5: Qwen1.5-MoE, dsv2_lite: DeepSeek-V2-Lite}
tasks:
  32-8: {config: "tiny_{model}.yaml"}
defaults:
  backends: [sim]
  sim: {tpot: 2ms, ttft: 5ms}
groups:
  healthy:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [1, 2]}
  oom:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [64, 128]}
    sim: {fault: oom-on-start}
  crashes:
    models: [dsv2_lite]
    hardware: [1xH100]
    tasks: {32-8: [2]}
    sim: {fault: crash-mid-run, tpot: 5ms}
  slow:
    models: [dsv2_lite]
    hardware: [1xA100]
    tasks: {32-8: [4]}
    num_samples: 40
    sim: {tpot: 60ms, ttft: 5ms, workers: 2}
`
	p := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDaemonWebPage drives the daemon's page in headless Chromium: the page is open before
// the job is submitted (through the CLI) and shows it arrive, a cell benching with its
// request progress, cells turning ok with links to their report pages (which load), and
// the failures with their reasons, all through the events stream. Screenshots go to
// $MOECAPD_WEB_SHOTS (default: a directory the test logs).
func TestDaemonWebPage(t *testing.T) {
	if !launcher.E2E() {
		t.Skip("the headless-browser check is end to end: make test-e2e (" + launcher.E2EEnv + "=1)")
	}
	chrome := findChromium()
	if chrome == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not installed in CI (.ci/run installs it)")
		}
		t.Skip("chromium not installed (apt-get install -y chromium)")
	}
	shots := os.Getenv("MOECAPD_WEB_SHOTS")
	if shots == "" {
		var err error
		if shots, err = os.MkdirTemp("", "moecapd-web-shots-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots go to %s", shots)

	e := newDaemonEnv(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.start("--listen", "unix:"+e.sock, "--listen", addr)
	b := startBrowser(t, chrome, 1400, 1000)
	b.call("Page.navigate", map[string]any{"url": "http://" + addr + "/"}, nil)
	b.waitFor("the events stream connected", `document.getElementById("conn") && document.getElementById("conn").textContent === "live"`, time.Minute)
	b.waitFor("no jobs", `document.getElementById("jobs-empty").style.display === ""`, 30*time.Second)

	r := e.cli("submit", "--matrix", webMatrix(t))
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("submit: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	jq := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	jobRow := `document.querySelector('#jobs tr[data-job=` + jq(id) + `]')`
	b.waitFor("the submitted job", jobRow, time.Minute)

	// The slow cell benches: its row shows the phase and the requests done of 40.
	const slow = "dsv2_lite.1xA100.32-8.bs4.sim"
	slowRow := `document.querySelector('#running tr[data-cell=` + jq(slow) + `][data-phase="bench"] td[data-total="40"]')`
	b.waitFor("the slow cell's bench progress", slowRow, 2*time.Minute)
	var lanes int
	b.eval(`document.querySelectorAll('#lanes .bar').length`, &lanes)
	if lanes == 0 {
		t.Errorf("no bar in the lanes while cells run")
	}
	b.screenshot(filepath.Join(shots, "running.png"))

	// Live to the end: the job done, cells ok with report links, failures with reasons.
	b.waitFor("the job done", jobRow+`.dataset.state === "done"`, 3*time.Minute)
	const ok = "qwen1_5.1xH100.32-8.bs1.sim"
	var href string
	b.eval(`(document.querySelector('#finished tr[data-cell=`+jq(ok)+`][data-state="ok"] a.report') || {}).href || ""`, &href)
	if want := "/cells/" + ok + "/report/"; !strings.HasSuffix(href, want) {
		t.Fatalf("cell %s: report link %q; want one ending in %s", ok, href, want)
	}
	for cell, want := range map[string]string{
		"dsv2_lite.1xH100.32-8.bs2.sim": "crash",
		"qwen1_5.1xH100.32-8.bs64.sim":  "out of memory",
	} {
		var reason string
		b.eval(`(document.querySelector('#failures tr[data-cell=`+jq(cell)+`] td.reason') || {}).textContent || ""`, &reason)
		if !strings.Contains(strings.ToLower(reason), want) {
			t.Errorf("failure of %s shows %q; want its reason (%q)", cell, reason, want)
		}
	}
	var bars int
	b.eval(`document.querySelectorAll('#lanes .bar').length`, &bars)
	if bars < 5 { // every cell that ran: 2 ok, the OOM, the crash, the slow one
		t.Errorf("%d bars in the lanes; want one per cell that ran (5)", bars)
	}
	b.screenshot(filepath.Join(shots, "done.png"))

	// The report link loads the cell's report page.
	b.call("Page.navigate", map[string]any{"url": href}, nil)
	b.waitFor("the cell's report page", `document.title.includes(`+jq(ok)+`) && document.body.innerText.includes(`+jq(ok)+`)`, time.Minute)
	b.screenshot(filepath.Join(shots, "report.png"))
}
