package main

// The daemon as a node service: moecapd logs (and -f until the cell ends), TLS on its TCP
// listener, systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1), and refusals logged
// with the peer on both the unix socket and TCP.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

// TestDaemonLogs: `moecapd logs CELL -f` started while the cell is queued prints the server
// log as it grows and exits 0 by itself once the cell ended, with every byte of the final
// log; `logs CELL` and `logs CELL --client` print the finished cell's logs; an unknown cell
// is exit 2 and a bad id is refused, logged with the peer's uid.
func TestDaemonLogs(t *testing.T) {
	e := newDaemonEnv(t)
	d := e.start()
	r := e.cli("submit", "--matrix", faultsMatrix, "--only", `1xA100`, "--include-done")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	const cid = "dsv2_lite.1xA100.32-8.bs4.sim"
	f := exec.Command(bin, "logs", cid, "-f")
	f.Env = append(os.Environ(), e.env...)
	var out, errb strings.Builder
	f.Stdout, f.Stderr = &out, &errb
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Wait() }()
	_, cs := e.waitJob(id, 2*time.Minute)
	if len(cs) != 1 || cs[0].State != daemon.CellOK {
		t.Fatalf("job: %+v", cs)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("logs -f: %v: %s", err, errb.String())
		}
	case <-time.After(60 * time.Second):
		f.Process.Kill()
		t.Fatalf("logs -f still running 60 s after its cell ended; printed %d bytes", out.Len())
	}
	dir := cell.DirOf(filepath.Join(e.results, cid))
	want, err := os.ReadFile(dir.ServerLog())
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) || !strings.Contains(out.String(), "sim: ready") {
		t.Errorf("logs -f printed %d bytes, the server log has %d (want all of it, with the ready line)", out.Len(), len(want))
	}
	if r := e.cli("logs", cid); r.code != 0 || r.stdout != string(want) {
		t.Errorf("logs: exit %d, %d bytes of %d: %s", r.code, len(r.stdout), len(want), r.stderr)
	}
	client, err := os.ReadFile(dir.ClientLog())
	if err != nil {
		t.Fatal(err)
	}
	if r := e.cli("logs", cid, "--client"); r.code != 0 || r.stdout != string(client) || len(client) == 0 {
		t.Errorf("logs --client: exit %d, %d bytes of %d: %s", r.code, len(r.stdout), len(client), r.stderr)
	}
	if r := e.cli("logs", "no.such.cell"); r.code != exitUsage || !strings.Contains(r.stderr, "no.such.cell") {
		t.Errorf("logs of an unknown cell: exit %d %s; want 2 naming it", r.code, r.stderr)
	}
	if r := e.cli("logs", ".daemon"); r.code != exitUsage || !strings.Contains(r.stderr, "400") {
		t.Errorf("logs .daemon: exit %d %s; want a 400 refusal", r.code, r.stderr)
	}
	if !refusalLogged(d.output(), 400, "", fmt.Sprint(os.Getuid())) {
		t.Errorf("the unix-socket refusal is not logged with the peer's uid %d: %s", os.Getuid(), d.output())
	}
}

// refusalLogged finds a "request refused" log line with that status and peer (TCP address
// prefix) or peer uid.
func refusalLogged(log string, status int, peerPrefix, uid string) bool {
	for _, line := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "request refused" || m["status"] != float64(status) {
			continue
		}
		p, _ := m["peer"].(string)
		if peerPrefix != "" && strings.HasPrefix(p, peerPrefix) && m["why"] != "" {
			return true
		}
		if uid != "" && fmt.Sprint(m["peer_uid"]) == uid && m["why"] != "" {
			return true
		}
	}
	return false
}

// selfSigned writes a CA and a server certificate for 127.0.0.1 signed by it; it returns
// the CA, cert and key files.
func selfSigned(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "moecapd test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "EC PRIVATE KEY", kb)
}

// TestDaemonTLS: with --tls-cert/--tls-key the TCP listener speaks TLS: a client that
// trusts the CA gets through (the API and the CLI, which trusts it through SSL_CERT_FILE),
// a client without the CA is refused by the handshake, plain HTTP gets no API answer. A
// request without a token is refused with 401 and logged with the peer's address.
func TestDaemonTLS(t *testing.T) {
	e := newDaemonEnv(t)
	caFile, certFile, keyFile := selfSigned(t)
	toks := filepath.Join(t.TempDir(), "tokens")
	const tok = "alice-token-0123456789"
	if err := os.WriteFile(toks, []byte(tok+" alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if r := e.cli("serve", "--results", e.results, "--listen", addr, "--tls-cert", certFile); r.code != exitUsage || !strings.Contains(r.stderr, "--tls-key") {
		t.Fatalf("--tls-cert alone: exit %d %s; want 2", r.code, r.stderr)
	}
	d := e.start("--listen", "unix:"+e.sock, "--listen", addr, "--tokens", toks, "--tls-cert", certFile, "--tls-key", keyFile)

	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	get := func(c *http.Client, url, token string) (*http.Response, string, error) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp, string(b), nil
	}
	trusted := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, body, err := get(trusted, "https://"+addr+"/v1/jobs", tok)
	if err != nil || resp.StatusCode != 200 || resp.TLS == nil || !strings.Contains(body, `"jobs"`) {
		t.Fatalf("https with the CA: %v %v %s", resp, err, body)
	}
	if _, _, err := get(&http.Client{Timeout: 30 * time.Second}, "https://"+addr+"/v1/jobs", tok); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("https without the CA: err %v; want a certificate error", err)
	}
	if resp, body, err := get(&http.Client{Timeout: 30 * time.Second}, "http://"+addr+"/v1/jobs", tok); err == nil && (resp.StatusCode == 200 || strings.Contains(body, `"jobs"`)) {
		t.Errorf("plain HTTP to the TLS listener answered: %d %s", resp.StatusCode, body)
	}
	// The CLI over https, trusting the CA through SSL_CERT_FILE.
	env := append(append([]string{}, e.env...), "SSL_CERT_FILE="+caFile, "MOECAPD_TOKEN="+tok)
	if r := moecapd(t, env, "jobs", "--server", "https://"+addr); r.code != 0 {
		t.Errorf("moecapd jobs over https with the CA: exit %d %s", r.code, r.stderr)
	}
	if r := moecapd(t, append(append([]string{}, e.env...), "MOECAPD_TOKEN="+tok), "jobs", "--server", "https://"+addr); r.code == 0 {
		t.Errorf("moecapd jobs over https without the CA succeeded: %s", r.stdout)
	}
	// No token: 401, logged with the TCP peer.
	if resp, body, err := get(trusted, "https://"+addr+"/v1/jobs", ""); err != nil || resp.StatusCode != 401 || !strings.Contains(body, "bearer token") {
		t.Fatalf("no token: %v %v %s", resp, err, body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !refusalLogged(d.output(), 401, "127.0.0.1:", "") {
		if time.Now().After(deadline) {
			t.Fatalf("the 401 is not logged with the peer: %s", d.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemonSdNotify: under systemd (NOTIFY_SOCKET, WATCHDOG_USEC) the daemon tells READY=1
// once it serves, WATCHDOG=1 while it runs, and STOPPING=1 on SIGTERM, on the unixgram
// socket systemd listens on (here the test's).
func TestDaemonSdNotify(t *testing.T) {
	e := newDaemonEnv(t)
	sock := filepath.Join(e.runDir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// A 2 s watchdog: the daemon pings every second.
	e.env = append(e.env, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=2000000")
	d := e.start()
	want := func(what string, n int) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for n > 0 {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %s", what)
				}
				if strings.Contains(m, what) {
					n--
				}
			case <-deadline:
				t.Fatalf("no %s from the daemon (NOTIFY_SOCKET=%s): %s", what, sock, d.output())
			}
		}
	}
	want("READY=1", 1)
	want("WATCHDOG=1", 2)
	d.cmd.Process.Signal(syscall.SIGTERM)
	want("STOPPING=1", 1)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not stop after SIGTERM: %s", d.output())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGTERM; want 0", code)
	}
}
