package cell

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A cell directory deleted and recreated under the same path (or deleted) is not the one
// the cell started in; the same directory is.
func TestDirIdentityChanged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cell")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := identityOf(dir)
	if err != nil {
		t.Fatal(err)
	}
	if why := id.changed(dir); why != "" {
		t.Fatalf("same directory: %s", why)
	}
	os.RemoveAll(dir)
	if why := id.changed(dir); !strings.Contains(why, "disappeared") {
		t.Errorf("deleted: %q", why)
	}
	// Hold an inode so the recreated directory cannot reuse the old one.
	keep := filepath.Join(filepath.Dir(dir), "keep")
	os.Mkdir(keep, 0o755)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if now, _ := identityOf(dir); now.ino == id.ino && now.dev == id.dev {
		t.Skip("the file system reused the inode")
	}
	if why := id.changed(dir); !strings.Contains(why, "recreated") {
		t.Errorf("recreated: %q", why)
	}
}
