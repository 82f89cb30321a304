package daemon

import (
	"io/fs"
	"strings"
	"testing"
)

// TestWebPageOffline checks the embedded page needs no network (no script, style or font
// from elsewhere) and never parses a value as HTML.
func TestWebPageOffline(t *testing.T) {
	n := 0
	err := fs.WalkDir(webFiles, "web", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := webFiles.ReadFile(p)
		if err != nil {
			return err
		}
		s := string(b)
		n++
		for _, bad := range []string{"http://", "https://", "src=\"/", "href=\"/", "@import", "url("} {
			if strings.Contains(s, bad) {
				t.Errorf("%s contains %q: the page must work offline from the binary", p, bad)
			}
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
			if strings.Contains(s, bad) {
				t.Errorf("%s uses %s: values go in as text only", p, bad)
			}
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("embedded page: %d files, %v; want index.html, app.js, style.css", n, err)
	}
}

func TestValidCellID(t *testing.T) {
	for id, want := range map[string]bool{"qwen1_5.1xH100.4k-1k.bs1.sglang": true, "": false, ".": false, "..": false,
		".daemon": false, "a/b": false, `a\b`: false, "../x": false, "a\x00b": false} {
		if got := validCellID(id); got != want {
			t.Errorf("validCellID(%q) = %v, want %v", id, got, want)
		}
	}
}
