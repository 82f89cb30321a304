package fsx

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompressThenRead(t *testing.T) {
	dir := t.TempDir()
	body := []byte(strings.Repeat(`{"forward_pass_id":1,"forward_mode":"decode","batch_size":32}`+"\n", 2000))
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"records.jsonl", body},
		{"empty.json", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			if err := os.WriteFile(p, c.body, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := Compress(p); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the original is still there: %v", err)
			}
			st, err := os.Stat(p + ZstdExt)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.body) > 0 && st.Size()*10 > int64(len(c.body)) {
				t.Errorf("compressed %d bytes to %d: want at least 10x on repetitive JSON", len(c.body), st.Size())
			}
			if st.Mode().Perm() != 0o640 {
				t.Errorf("mode %v, want the original's 0640", st.Mode().Perm())
			}
			for _, name := range []string{p, p + ZstdExt} { // by its old name and by its new one
				got, err := ReadFile(name)
				if err != nil {
					t.Fatalf("ReadFile(%s): %v", name, err)
				}
				if !bytes.Equal(got, c.body) {
					t.Fatalf("ReadFile(%s): %d bytes, want the original %d", name, len(got), len(c.body))
				}
			}
			if !Exists(p) {
				t.Error("Exists: false for a compressed file")
			}
			if err := Compress(p); err != nil { // again: already done
				t.Errorf("second Compress: %v", err)
			}
		})
	}
}

func TestReadPrefersPlainAndFailsClearly(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "a.jsonl")
	if err := os.WriteFile(plain, []byte("plain\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A crash between the rename and the removal leaves both: the plain one is read.
	if err := os.WriteFile(plain+ZstdExt, []byte("not zstd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(plain); err != nil || string(b) != "plain\n" {
		t.Errorf("ReadFile with both forms: %q, %v; want the plain file", b, err)
	}
	// A corrupt compressed file is an error naming it, not empty data.
	if _, err := ReadFile(plain + ZstdExt); err == nil || !strings.Contains(err.Error(), "a.jsonl.zst") {
		t.Errorf("corrupt .zst: err %v, want one naming the file", err)
	}
	missing := filepath.Join(dir, "missing.json")
	_, err := ReadFile(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing.json") || strings.Contains(err.Error(), ZstdExt) {
		t.Errorf("missing file: %v, want ErrNotExist naming missing.json", err)
	}
	if Exists(missing) {
		t.Error("Exists: true for a missing file")
	}
	if err := Compress(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Compress of a missing file: %v, want ErrNotExist", err)
	}
	if got := Base("bench_random_20260101_000000.json.zst"); got != "bench_random_20260101_000000.json" {
		t.Errorf("Base: %q", got)
	}
}
